package ipam

import (
	"net/netip"
	"slices"
	"time"
)

// AddrKind says why an address is held, for error messages and diagnostics.
type AddrKind string

const (
	KindGateway AddrKind = "gateway"
	// KindStatic is an address asked for by value: `--ip` or `--aux-address`
	// (the protocol does not tell them apart).
	KindStatic  AddrKind = "static"
	KindDynamic AddrKind = "dynamic"
)

// Allocation is one held address.
type Allocation struct {
	Addr netip.Addr `json:"addr"`
	Kind AddrKind   `json:"kind"`
	// Orphaned is when (Unix milliseconds) the ournet endpoint that used
	// this address was deleted; zero while one may use it (orphan.go).
	Orphaned int64 `json:"orphaned,omitempty"`
	// Call is the plugin's call that handed the address out, for a
	// replay of it (RequestAddressIn), and CallAt when (Unix
	// milliseconds): kept for callMemory.
	Call   string `json:"call,omitempty"`
	CallAt int64  `json:"callAt,omitempty"`
}

// callMemory is how long an allocation remembers its call: longer than
// dockerd retries a call cut short.
const callMemory = 2 * time.Minute

// remembersCall says whether the allocation still knows its call.
func (al Allocation) remembersCall() bool {
	return al.Call != "" && time.Since(time.UnixMilli(al.CallAt)) <= callMemory
}

// madeIn is the index of the allocation call made, or -1.
func (p *pool) madeIn(call string) int {
	if call == "" {
		return -1
	}
	for i, al := range p.Addrs {
		if al.Call == call && al.remembersCall() {
			return i
		}
	}
	return -1
}

// recordCall marks addr as handed out in call, and forgets the calls of
// the others once callMemory has passed.
func (p *pool) recordCall(addr netip.Addr, call string) {
	for i := range p.Addrs {
		al := &p.Addrs[i]
		switch {
		case call != "" && al.Addr == addr:
			al.Call, al.CallAt = call, time.Now().UnixMilli()
		case al.Call != "" && !al.remembersCall():
			al.Call, al.CallAt = "", 0
		}
	}
}

// pool is one RequestPool answer with its addresses; it is also the JSON
// record saved under its ID, so what is in memory is exactly what is saved.
type pool struct {
	ID           string            `json:"id"`
	AddressSpace string            `json:"addressSpace"`
	Prefix       netip.Prefix      `json:"pool"`
	Sub          netip.Prefix      `json:"subPool"` // zero: no --ip-range
	Options      map[string]string `json:"options,omitempty"`
	// Next is where a serial (round-robin) search starts: just past the last
	// dynamic allocation, as in Docker's bitmap.
	Next  netip.Addr   `json:"next"`
	Addrs []Allocation `json:"addresses"` // sorted by Addr, no duplicates
	// Pending is true from RequestPool until the first RequestAddress for
	// the pool, or its network's CreateNetwork (NetworkMade: a network
	// that asks for no gateway). dockerd asks for the gateway, if any,
	// right after it gets a pool, then creates the network, so a pool
	// still pending when the plugin starts was answered by a plugin that
	// crashed before dockerd could use it: dockerd never learnt its ID and
	// would never release it. New drops such pools.
	Pending bool `json:"pending,omitempty"`
	// Orphaned is when (Unix seconds) the ournet network that used this
	// pool was deleted; zero while one may use it (orphan.go).
	Orphaned int64 `json:"orphaned,omitempty"`
	// Picked: ournet chose the subnet (no --subnet was given).
	Picked bool `json:"picked,omitempty"`
	// Cluster names the cluster network whose addresses this pool hands
	// out on this host (cluster.go): then dynamic addresses and --ip come
	// only from Blocks, the blocks of the subnet this host holds in the
	// cluster store.
	Cluster string         `json:"cluster,omitempty"`
	Blocks  []netip.Prefix `json:"blocks,omitempty"`
}

func (p *pool) v6() bool { return p.Prefix.Addr().Is6() }

// clone lets a change be built on a copy and installed only once saved, so a
// failed write leaves memory untouched.
func (p *pool) clone() *pool {
	c := *p
	c.Addrs = slices.Clone(p.Addrs)
	c.Blocks = slices.Clone(p.Blocks)
	return &c
}

// dynRange is where dynamic addresses come from: the --ip-range if any.
func (p *pool) dynRange() netip.Prefix {
	if p.Sub.IsValid() {
		return p.Sub
	}
	return p.Prefix
}

// reserved names the role of an address that may never be assigned, as
// Docker's default IPAM reserves them: the IPv4 network and broadcast
// addresses (except in /31 and /32, RFC 3021) and the IPv6 subnet-router
// anycast address (RFC 4291 2.6.1). Only the pool's, not the ip-range's:
// inside a /16, x.y.5.0 is an ordinary host address.
func (p *pool) reserved(a netip.Addr) string {
	hb := hostBits(p.Prefix)
	switch {
	case p.v6() && hb > 1 && a == p.Prefix.Addr():
		return "the subnet-router anycast address"
	case !p.v6() && hb > 1 && a == p.Prefix.Addr():
		return "the network address"
	case !p.v6() && hb > 1 && a == lastAddr(p.Prefix):
		return "the broadcast address"
	}
	return ""
}

func cmpAlloc(x Allocation, a netip.Addr) int { return x.Addr.Compare(a) }

func (p *pool) find(a netip.Addr) (int, bool) {
	return slices.BinarySearchFunc(p.Addrs, a, cmpAlloc)
}

// add reports false when a is already held.
func (p *pool) add(a netip.Addr, k AddrKind) bool {
	i, found := p.find(a)
	if found {
		return false
	}
	p.Addrs = slices.Insert(p.Addrs, i, Allocation{Addr: a, Kind: k})
	return true
}

func (p *pool) remove(a netip.Addr) bool {
	i, found := p.find(a)
	if found {
		p.Addrs = slices.Delete(p.Addrs, i, i+1)
	}
	return found
}

// firstFree finds the lowest assignable address in [lo, hi]. It walks the
// sorted held addresses alongside, so its cost grows with the number of
// held addresses, never with the size of the range: a /64 is no burden.
func (p *pool) firstFree(lo, hi netip.Addr) (netip.Addr, bool) {
	if hi.Less(lo) {
		return netip.Addr{}, false
	}
	i, _ := p.find(lo)
	for x := lo; ; x = x.Next() {
		held := i < len(p.Addrs) && p.Addrs[i].Addr == x
		if held {
			i++
		} else if p.reserved(x) == "" {
			return x, true
		}
		if x == hi {
			return netip.Addr{}, false
		}
	}
}

// pick chooses a free address in the dynamic range. Without serial it is the
// lowest free one, which is what Docker's default IPAM does for local
// networks (it passes no serial option from `docker run`); with serial the
// search starts after the previous pick and wraps, as Docker does when the
// caller sets com.docker.network.ipam.serial (swarmkit does).
func (p *pool) pick(serial bool) (netip.Addr, bool) {
	r := p.dynRange()
	lo, hi := r.Masked().Addr(), lastAddr(r)
	if serial && p.Next.IsValid() && r.Contains(p.Next) && p.Next != lo {
		if a, ok := p.firstFree(p.Next, hi); ok {
			return a, true
		}
		return p.firstFree(lo, p.Next.Prev())
	}
	return p.firstFree(lo, hi)
}
