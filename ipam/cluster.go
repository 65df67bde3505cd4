package ipam

import (
	"net/netip"
	"slices"
)

// Blocks is the second backend of a pool, beside the local store: the
// cluster store, which splits a cluster network's subnet into blocks and
// gives each block to one host by compare-and-swap (internal/cluster). A
// host hands out only addresses of the blocks it holds, so two hosts never
// hand out the same address, not even while they cannot reach each other.
// The allocation inside a block stays here, pure and local.
type Blocks interface {
	// Claim gives this host one more block of subnet: one it holds but
	// have does not list (a claim whose answer was lost), else a free one.
	Claim(cluster string, subnet netip.Prefix, have []netip.Prefix) (netip.Prefix, error)
	// ClaimFor gives this host the block holding addr (a container's
	// --ip), or refuses, naming the host that holds it.
	ClaimFor(cluster string, subnet netip.Prefix, addr netip.Addr) (netip.Prefix, error)
}

// SetBlocks sets the cluster backend; without one, Attach refuses.
func (a *Allocator) SetBlocks(b Blocks) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.blocks = b
}

// Attach makes the pool of subnet a pool of cluster network name: from now
// on its addresses come from blocks this host holds in the cluster store.
// The driver calls it from CreateNetwork (IPAM never sees `-o` options).
// The gateway, asked for before, is the same address on every host and
// stays as it is. Attaching again to the same name is a no-op.
func (a *Allocator) Attach(subnet netip.Prefix, name string) error {
	return a.attach(subnet, name, true)
}

// CheckAttach says whether Attach would refuse, and why, changing
// nothing: the driver asks before it writes to the cluster store.
func (a *Allocator) CheckAttach(subnet netip.Prefix, name string) error {
	return a.attach(subnet, name, false)
}

func (a *Allocator) attach(subnet netip.Prefix, name string, do bool) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	cur := a.poolOf(subnet.Masked())
	switch {
	case a.blocks == nil:
		return newErr(ErrInvalid, "cluster network %s needs the cluster store: set ETCD_ENDPOINTS (docker plugin set)", name)
	case cur == nil:
		return newErr(ErrInvalid, "cluster network %s: subnet %s is not one of ournet's address pools; create the network with --ipam-driver ournet", name, subnet)
	case cur.Picked:
		return newErr(ErrInvalid, "cluster network %s needs a --subnet, the same on every host (ournet's IPAM chose %s on this host alone)", name, subnet)
	case cur.Sub.IsValid():
		return newErr(ErrInvalid, "cluster network %s: --ip-range is not supported on cluster networks (hosts take blocks of the whole subnet); remove it", name)
	case cur.Cluster == name || !do:
		return nil
	case cur.Cluster != "":
		return newErr(ErrInvalid, "subnet %s already belongs to cluster network %s on this host", subnet, cur.Cluster)
	}
	p := cur.clone()
	p.Cluster = name
	if err := a.save(p); err != nil {
		return err
	}
	a.pools[p.ID] = p
	return nil
}

// clusterAddress picks (want invalid) or claims want in a cluster pool,
// taking a new block from the cluster store when this host's are full or
// want lies outside them. Called with a.mu held, on a copy of the pool.
func (a *Allocator) clusterAddress(p *pool, want netip.Addr) (netip.Addr, error) {
	if a.blocks == nil {
		return netip.Addr{}, newErr(ErrInvalid, "cluster network %s needs the cluster store: set ETCD_ENDPOINTS (docker plugin set)", p.Cluster)
	}
	if want.IsValid() {
		if !p.Prefix.Contains(want) {
			return netip.Addr{}, newErr(ErrOutOfRange, "address %s is not in this network's subnet %s; choose an address inside %s", want, p.Prefix, p.Prefix)
		}
		if role := p.reserved(want); role != "" {
			return netip.Addr{}, newErr(ErrReserved, "address %s is %s of %s and cannot be assigned; choose another address", want, role, p.Prefix)
		}
		if _, held := p.find(want); held {
			return netip.Addr{}, p.claim(want, KindStatic) // its refusal names the holder
		}
		if !p.inBlocks(want) {
			b, err := a.blocks.ClaimFor(p.Cluster, p.Prefix, want)
			if err != nil {
				return netip.Addr{}, err
			}
			p.addBlock(b)
		}
		return want, p.claim(want, KindStatic)
	}
	for try := 0; ; try++ {
		for _, b := range p.Blocks {
			if addr, ok := p.firstFree(b.Masked().Addr(), lastAddr(b)); ok {
				p.add(addr, KindDynamic)
				return addr, nil
			}
		}
		if try == 4 {
			return netip.Addr{}, newErr(ErrPoolFull, "no free address is left in this host's blocks of cluster network %s", p.Cluster)
		}
		b, err := a.blocks.Claim(p.Cluster, p.Prefix, p.Blocks)
		if err != nil {
			return netip.Addr{}, err
		}
		p.addBlock(b)
	}
}

func (p *pool) inBlocks(addr netip.Addr) bool {
	for _, b := range p.Blocks {
		if b.Contains(addr) {
			return true
		}
	}
	return false
}

func (p *pool) addBlock(b netip.Prefix) {
	if !slices.Contains(p.Blocks, b) {
		p.Blocks = append(p.Blocks, b)
		slices.SortFunc(p.Blocks, func(x, y netip.Prefix) int { return x.Addr().Compare(y.Addr()) })
	}
}
