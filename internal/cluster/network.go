package cluster

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// VNI range ournet hands out (swarm's overlay starts at 4096 too).
const (
	firstVNI = 4096
	lastVNI  = 1<<24 - 1
)

// Spec is what every host's `docker network create` must agree on.
type Spec struct {
	Subnets []string          // sorted
	Options map[string]string // the options that shape the network, normalised
	// MTU is the network's MTU on every host: the defining host's proposal
	// (its underlay's MTU less the encapsulation, or the user's); joining
	// hosts take the cluster's. Not compared.
	MTU int `json:",omitempty"`
}

// Network is a cluster network as the store holds it.
type Network struct {
	Name string `json:"-"`
	Spec
	VNI int
}

func netKey(name string) string { return prefix + "networks/" + name + "/" }

// Define creates cluster network name with spec, or, if another host did
// already, checks that spec is the same and returns it with its VNI; in
// both cases this host becomes a member. A different spec is refused with
// what differs.
func (s *Store) Define(ctx context.Context, name string, spec Spec) (Network, error) {
	if name == "" || strings.ContainsAny(name, "/ ") {
		return Network{}, userErr("ournet: cluster network name %q is not valid; use letters, digits, '-', '_' or '.'", name)
	}
	spec.Subnets = slices.Sorted(slices.Values(spec.Subnets))
	n := Network{Name: name, Spec: spec}
	err := s.call(ctx, "defining cluster network "+name, func(ctx context.Context) error {
		for try := 0; try < 16; try++ {
			r, err := s.cli.Get(ctx, netKey(name)+"spec")
			if err != nil {
				return err
			}
			if len(r.Kvs) == 1 {
				var have Network
				if err := json.Unmarshal(r.Kvs[0].Value, &have); err != nil {
					return fmt.Errorf("decoding %s: %w", r.Kvs[0].Key, err)
				}
				if d := differs(have.Spec, spec); d != "" {
					return userErr("ournet: cluster network %s exists with other settings: %s; run the same `docker network create` as on the host that created it", name, d)
				}
				n.VNI, n.MTU = have.VNI, have.MTU
				// Only if the definition read is still there: a last member
				// leaving meanwhile removes it, and then this host defines
				// it anew.
				t, err := s.cli.Txn(ctx).
					If(clientv3.Compare(clientv3.ModRevision(netKey(name)+"spec"), "=", r.Kvs[0].ModRevision)).
					Then(clientv3.OpPut(netKey(name)+"members/"+s.cfg.Host, "")).
					Commit()
				if err != nil || t.Succeeded {
					return err
				}
				continue
			}
			vni, err := s.freeVNI(ctx)
			if err != nil {
				return err
			}
			n.VNI = vni
			raw, _ := json.Marshal(n)
			vkey := prefix + "vni/" + strconv.Itoa(vni)
			t, err := s.cli.Txn(ctx).
				If(clientv3.Compare(clientv3.Version(netKey(name)+"spec"), "=", 0), clientv3.Compare(clientv3.Version(vkey), "=", 0)).
				Then(clientv3.OpPut(netKey(name)+"spec", string(raw)), clientv3.OpPut(vkey, name), clientv3.OpPut(netKey(name)+"members/"+s.cfg.Host, "")).
				Commit()
			if err != nil {
				return err
			}
			if t.Succeeded {
				return nil
			}
			// Another host defined it, or took that VNI, meanwhile: again.
		}
		return fmt.Errorf("defining %s kept conflicting with other hosts", name)
	})
	return n, err
}

// differs says, for a person, how two specs differ ("" if they do not).
func differs(have, want Spec) string {
	var d []string
	if !slices.Equal(have.Subnets, want.Subnets) {
		d = append(d, fmt.Sprintf("subnet %s here, %s in the cluster", strings.Join(want.Subnets, ","), strings.Join(have.Subnets, ",")))
	}
	keys := slices.Sorted(maps.Keys(have.Options))
	for k := range want.Options {
		if _, ok := have.Options[k]; !ok {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range slices.Compact(keys) {
		h, hok := have.Options[k]
		w, wok := want.Options[k]
		switch {
		case hok && wok && h != w:
			d = append(d, fmt.Sprintf("%s=%s here, %s in the cluster", k, w, h))
		case hok && !wok:
			d = append(d, fmt.Sprintf("%s=%s in the cluster, not given here", k, h))
		case !hok && wok:
			d = append(d, fmt.Sprintf("%s=%s here, not in the cluster", k, w))
		}
	}
	return strings.Join(d, "; ")
}

// freeVNI returns the lowest VNI no cluster network has.
func (s *Store) freeVNI(ctx context.Context) (int, error) {
	r, err := s.cli.Get(ctx, prefix+"vni/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return 0, err
	}
	used := map[int]bool{}
	for _, kv := range r.Kvs {
		if v, err := strconv.Atoi(strings.TrimPrefix(string(kv.Key), prefix+"vni/")); err == nil {
			used[v] = true
		}
	}
	for v := firstVNI; v <= lastVNI; v++ {
		if !used[v] {
			return v, nil
		}
	}
	return 0, userErr("ournet: every VXLAN network identifier is taken")
}

// Leave makes this host no longer a member of name. The last member to
// leave removes every key of the network: nothing of it stays in etcd.
// This host's blocks go first, while it is still a member: a Leave cut
// short then stays among its Memberships, and the sync does it again.
func (s *Store) Leave(ctx context.Context, name string) error {
	return s.call(ctx, "leaving cluster network "+name, func(ctx context.Context) error {
		if _, err := s.releaseBlocks(ctx, name, s.cfg.Host); err != nil {
			return err
		}
		_, err := s.dropMember(ctx, name, s.cfg.Host)
		return err
	})
}

// dropMember removes host's membership of network name; when it is the
// last member, in the same transaction, every key of the network and its
// VNI (only if the VNI is still the network's): never a member gone with
// the network's keys left behind it. With guard, only while guard holds
// (done says whether it did).
func (s *Store) dropMember(ctx context.Context, name, host string, guard ...clientv3.Cmp) (done bool, err error) {
	mkey := netKey(name) + "members/" + host
	for try := 0; try < 10; try++ {
		r, err := s.cli.Txn(ctx).Then(
			clientv3.OpGet(netKey(name)+"spec"),
			clientv3.OpGet(netKey(name)+"members/", clientv3.WithPrefix(), clientv3.WithKeysOnly()),
		).Commit()
		if err != nil {
			return false, err
		}
		spec, members := r.Responses[0].GetResponseRange(), r.Responses[1].GetResponseRange()
		others := 0
		for _, kv := range members.Kvs {
			if string(kv.Key) != mkey {
				others++
			}
		}
		if others > 0 || len(spec.Kvs) == 0 {
			done, _, err := s.guarded(ctx, guard, nil, clientv3.OpDelete(mkey))
			return done, err
		}
		var n Network
		_ = json.Unmarshal(spec.Kvs[0].Value, &n)
		vkey := prefix + "vni/" + strconv.Itoa(n.VNI)
		// No member joined since the listing (a join writes its key anew).
		alone := clientv3.Compare(clientv3.ModRevision(netKey(name)+"members/").WithPrefix(), "<", r.Header.Revision+1)
		done, held, err := s.guarded(ctx, guard, []clientv3.Cmp{alone},
			clientv3.OpDelete(netKey(name), clientv3.WithPrefix()),
			clientv3.OpTxn([]clientv3.Cmp{clientv3.Compare(clientv3.Value(vkey), "=", name)}, []clientv3.Op{clientv3.OpDelete(vkey)}, nil))
		if err != nil || done || !held {
			return done, err
		}
		// Another host joined meanwhile: again.
	}
	return false, fmt.Errorf("removing member %s of %s kept conflicting with other hosts", host, name)
}

// guarded commits ops if guard and conds all hold, in one transaction;
// held says whether guard did, at that revision (so that a caller tells
// a condition of its own that failed from a guard that did).
func (s *Store) guarded(ctx context.Context, guard, conds []clientv3.Cmp, ops ...clientv3.Op) (done, held bool, err error) {
	t, err := s.cli.Txn(ctx).If(append(slices.Clone(guard), conds...)...).Then(ops...).
		Else(clientv3.OpTxn(guard, nil, nil)).Commit()
	if err != nil {
		return false, false, err
	}
	if t.Succeeded {
		return true, true, nil
	}
	return false, t.Responses[0].GetResponseTxn().Succeeded, nil
}

// blockBits is the prefix length of the address blocks a subnet is split
// into: /26 (62 containers a block), or four blocks of a small subnet.
func blockBits(subnet netip.Prefix) int {
	bits := subnet.Bits() + 2
	if subnet.Addr().Is4() && bits < 26 {
		bits = 26
	}
	if subnet.Addr().Is6() && bits < 122 {
		bits = 122
	}
	if bits > subnet.Addr().BitLen()-1 {
		bits = subnet.Addr().BitLen() - 1
	}
	return bits
}

// Blocks lists the blocks of network name's subnet held by each host.
func (s *Store) Blocks(ctx context.Context, name string) (map[netip.Prefix]string, error) {
	out := map[netip.Prefix]string{}
	err := s.call(ctx, "listing address blocks of "+name, func(ctx context.Context) error {
		r, err := s.cli.Get(ctx, netKey(name)+"blocks/", clientv3.WithPrefix())
		if err != nil {
			return err
		}
		for _, kv := range r.Kvs {
			if p, err := netip.ParsePrefix(strings.ReplaceAll(strings.TrimPrefix(string(kv.Key), netKey(name)+"blocks/"), "_", "/")); err == nil {
				out[p] = string(kv.Value)
			}
		}
		return nil
	})
	return out, err
}

func blockKey(name string, b netip.Prefix) string {
	return netKey(name) + "blocks/" + strings.ReplaceAll(b.String(), "/", "_")
}

// ClaimBlock claims, for this host, the first block of subnet that no host
// holds, by compare-and-swap: two hosts never get the same block, however
// many claim at once. Blocks outlive their host's lease: a host cut off
// and back still owns its addresses; RetireHost frees them.
//
// A block this host holds already that have does not list (its claim was
// answered to a call cut short, or never recorded) is returned first: a
// host never holds a block it does not use.
func (s *Store) ClaimBlock(ctx context.Context, name string, subnet netip.Prefix, have ...netip.Prefix) (netip.Prefix, error) {
	var got netip.Prefix
	err := s.call(ctx, "claiming an address block of "+name, func(ctx context.Context) error {
		if err := s.member(ctx, name); err != nil {
			return err
		}
		bits := blockBits(subnet)
		for try := 0; try < 64; try++ {
			r, err := s.cli.Get(ctx, netKey(name)+"blocks/", clientv3.WithPrefix())
			if err != nil {
				return err
			}
			held := map[string]bool{}
			for _, kv := range r.Kvs {
				held[string(kv.Key)] = true
				if string(kv.Value) != s.cfg.Host {
					continue
				}
				b, err := netip.ParsePrefix(strings.ReplaceAll(strings.TrimPrefix(string(kv.Key), netKey(name)+"blocks/"), "_", "/"))
				if err == nil && subnet.Contains(b.Addr()) && !slices.Contains(have, b) {
					got = b
					return nil
				}
			}
			var free netip.Prefix
			for b := netip.PrefixFrom(subnet.Masked().Addr(), bits); subnet.Contains(b.Addr()); b = nextBlock(b) {
				if !held[blockKey(name, b)] {
					free = b
					break
				}
				if !nextBlock(b).IsValid() {
					break
				}
			}
			if !free.IsValid() {
				return userErr("ournet: every address block of cluster network %s (%s) is held by a host; remove containers, or retire hosts that are gone for good (scripts/ournet-retire-host)", name, subnet)
			}
			t, err := s.cli.Txn(ctx).
				If(clientv3.Compare(clientv3.Version(blockKey(name, free)), "=", 0)).
				Then(clientv3.OpPut(blockKey(name, free), s.cfg.Host)).
				Commit()
			if err != nil {
				return err
			}
			if t.Succeeded {
				got = free
				return nil
			}
		}
		return fmt.Errorf("claiming a block of %s kept conflicting with other hosts", name)
	})
	return got, err
}

// ClaimBlockFor claims for this host the block of subnet that holds addr
// (a container's --ip), unless another host holds it: then the refusal
// names that host. A block this host holds already is returned as it is.
func (s *Store) ClaimBlockFor(ctx context.Context, name string, subnet netip.Prefix, addr netip.Addr) (netip.Prefix, error) {
	b, err := netip.PrefixFrom(addr, blockBits(subnet)).Masked(), error(nil)
	if !subnet.Contains(addr) {
		return netip.Prefix{}, userErr("ournet: address %s is not in cluster network %s's subnet %s", addr, name, subnet)
	}
	err = s.call(ctx, "claiming the address block of "+addr.String(), func(ctx context.Context) error {
		if err := s.member(ctx, name); err != nil {
			return err
		}
		key := blockKey(name, b)
		t, err := s.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.Version(key), "=", 0)).
			Then(clientv3.OpPut(key, s.cfg.Host)).
			Else(clientv3.OpGet(key)).
			Commit()
		if err != nil || t.Succeeded {
			return err
		}
		holder := ""
		if rs := t.Responses[0].GetResponseRange(); rs != nil && len(rs.Kvs) == 1 {
			holder = string(rs.Kvs[0].Value)
		}
		if holder == s.cfg.Host {
			return nil
		}
		return userErr("ournet: address %s of cluster network %s is in address block %s, which host %s holds; "+
			"run the container on that host, or choose an address no other host's block holds", addr, name, b, s.describeHost(ctx, holder))
	})
	return b, err
}

// Memberships lists the cluster networks this host is a member of.
func (s *Store) Memberships(ctx context.Context) ([]string, error) {
	var out []string
	err := s.call(ctx, "listing this host's cluster networks", func(ctx context.Context) error {
		r, err := s.cli.Get(ctx, prefix+"networks/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
		if err != nil {
			return err
		}
		for _, kv := range r.Kvs {
			rest := strings.TrimPrefix(string(kv.Key), prefix+"networks/")
			name, member, ok := strings.Cut(rest, "/members/")
			if ok && member == s.cfg.Host {
				out = append(out, name)
			}
		}
		return nil
	})
	return out, err
}

func nextBlock(b netip.Prefix) netip.Prefix {
	a := b.Addr()
	for i := 0; i < 1<<(a.BitLen()-b.Bits()); i++ {
		a = a.Next()
		if !a.IsValid() {
			return netip.Prefix{}
		}
	}
	return netip.PrefixFrom(a, b.Bits())
}

// releaseBlocks frees host's blocks of name (each only if host still
// holds it). With guard, only while guard holds (done says whether it
// did).
func (s *Store) releaseBlocks(ctx context.Context, name, host string, guard ...clientv3.Cmp) (done bool, err error) {
	r, err := s.cli.Get(ctx, netKey(name)+"blocks/", clientv3.WithPrefix())
	if err != nil {
		return false, err
	}
	for _, kv := range r.Kvs {
		if string(kv.Value) != host {
			continue
		}
		// Not held any more (the block changed hands): skipped.
		_, held, err := s.guarded(ctx, guard, []clientv3.Cmp{clientv3.Compare(clientv3.Value(string(kv.Key)), "=", host)},
			clientv3.OpDelete(string(kv.Key)))
		if err != nil || !held {
			return false, err
		}
	}
	return true, nil
}

// RetireHost is the operator's word that host is gone for good: its
// blocks, memberships and endpoints are freed, so its addresses may be
// handed out again; a network whose last member it was goes. A host that
// is alive (its lease holds its key) is refused, and so is one that comes
// back meanwhile, at the first change after it did: what it holds is its
// own again.
func (s *Store) RetireHost(ctx context.Context, host string) error {
	return s.call(ctx, "retiring host "+host, func(ctx context.Context) error {
		alive := userErr("ournet: host %s is alive (it renews its lease); stop its plugin, or wait for its lease to expire, then retire it", host)
		gone := clientv3.Compare(clientv3.Version(prefix+"hosts/"+host), "=", 0)
		r, err := s.cli.Txn(ctx).If(gone).Then(clientv3.OpGet(prefix+"networks/", clientv3.WithPrefix(), clientv3.WithKeysOnly())).Commit()
		if err != nil {
			return err
		}
		if !r.Succeeded {
			return alive
		}
		names := map[string]bool{}
		for _, kv := range r.Responses[0].GetResponseRange().Kvs {
			rest := strings.TrimPrefix(string(kv.Key), prefix+"networks/")
			names[strings.SplitN(rest, "/", 2)[0]] = true
		}
		for _, name := range slices.Sorted(maps.Keys(names)) {
			if ok, err := s.releaseBlocks(ctx, name, host, gone); err != nil || !ok {
				return cmp.Or(err, alive)
			}
			eps, err := s.cli.Get(ctx, netKey(name)+"endpoints/", clientv3.WithPrefix())
			if err != nil {
				return err
			}
			for _, kv := range eps.Kvs {
				if ep, ok := decodeEndpoint(name, kv.Key, kv.Value); ok && ep.Host == host {
					if done, _, err := s.guarded(ctx, []clientv3.Cmp{gone}, nil, clientv3.OpDelete(string(kv.Key))); err != nil || !done {
						return cmp.Or(err, alive)
					}
				}
			}
			if ok, err := s.dropMember(ctx, name, host, gone); err != nil || !ok {
				return cmp.Or(err, alive)
			}
		}
		return nil
	})
}

// Endpoint is one container's address on a cluster network, where it lives.
type Endpoint struct {
	Addr netip.Addr `json:"-"`
	Host string
	MAC  string
	VTEP netip.Addr // the host's advertised address
	// Lease is the lease the key is under (as listed), so that a host
	// that registered again sees which of its endpoints still hang on the
	// old one.
	Lease int64 `json:"-"`
}

func epKey(name string, a netip.Addr) string { return netKey(name) + "endpoints/" + a.String() }

// PutEndpoint publishes an endpoint of this host under its lease: it
// vanishes from every other host when this host's lease expires. An
// address another host holds is refused, naming the host; one this host
// published before (under an older lease too) is written again.
func (s *Store) PutEndpoint(ctx context.Context, name string, ep Endpoint) error {
	ep.Host, ep.VTEP = s.cfg.Host, s.cfg.Advertise
	raw, _ := json.Marshal(ep)
	return s.call(ctx, "publishing endpoint "+ep.Addr.String(), func(ctx context.Context) error {
		lease := s.leaseID()
		if lease == 0 {
			return fmt.Errorf("this host is not registered (%w)", ErrUnavailable)
		}
		if err := s.member(ctx, name); err != nil {
			return err
		}
		key := epKey(name, ep.Addr)
		for try := 0; try < 8; try++ {
			t, err := s.cli.Txn(ctx).
				If(clientv3.Compare(clientv3.Version(key), "=", 0)).
				Then(clientv3.OpPut(key, string(raw), clientv3.WithLease(lease))).
				Else(clientv3.OpGet(key)).
				Commit()
			if err != nil || t.Succeeded {
				return err
			}
			rs := t.Responses[0].GetResponseRange()
			if rs == nil || len(rs.Kvs) != 1 {
				continue
			}
			kv := rs.Kvs[0]
			other, _ := decodeEndpoint(name, kv.Key, kv.Value)
			if other.Host != s.cfg.Host {
				return userErr("ournet: address %s of cluster network %s is held by host %s; choose another address", ep.Addr, name, s.describeHost(ctx, other.Host))
			}
			if kv.Lease == int64(lease) && string(kv.Value) == string(raw) {
				return nil
			}
			t, err = s.cli.Txn(ctx).
				If(clientv3.Compare(clientv3.ModRevision(key), "=", kv.ModRevision)).
				Then(clientv3.OpPut(key, string(raw), clientv3.WithLease(lease))).
				Commit()
			if err != nil || t.Succeeded {
				return err
			}
		}
		return fmt.Errorf("publishing %s kept conflicting with other writers", ep.Addr)
	})
}

// DeleteEndpoint removes an endpoint of this host; one already gone, or
// another host's by now, is success.
func (s *Store) DeleteEndpoint(ctx context.Context, name string, a netip.Addr) error {
	return s.call(ctx, "removing endpoint "+a.String(), func(ctx context.Context) error {
		key := epKey(name, a)
		r, err := s.cli.Get(ctx, key)
		if err != nil || len(r.Kvs) == 0 {
			return err
		}
		kv := r.Kvs[0]
		if ep, _ := decodeEndpoint(name, kv.Key, kv.Value); ep.Host != s.cfg.Host {
			return nil
		}
		_, err = s.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(key), "=", kv.ModRevision)).
			Then(clientv3.OpDelete(key)).
			Commit()
		return err
	})
}

// Endpoints lists network name's endpoints, and the revision to watch from.
func (s *Store) Endpoints(ctx context.Context, name string) (map[netip.Addr]Endpoint, int64, error) {
	out := map[netip.Addr]Endpoint{}
	var rev int64
	err := s.call(ctx, "listing endpoints of "+name, func(ctx context.Context) error {
		r, err := s.cli.Get(ctx, netKey(name)+"endpoints/", clientv3.WithPrefix())
		if err != nil {
			return err
		}
		rev = r.Header.Revision
		for _, kv := range r.Kvs {
			if ep, ok := decodeEndpoint(name, kv.Key, kv.Value); ok {
				ep.Lease = kv.Lease
				out[ep.Addr] = ep
			}
		}
		return nil
	})
	return out, rev, err
}

func decodeEndpoint(name string, key, value []byte) (Endpoint, bool) {
	var ep Endpoint
	a, err := netip.ParseAddr(strings.TrimPrefix(string(key), netKey(name)+"endpoints/"))
	if err != nil {
		return ep, false
	}
	ep.Addr = a
	if len(value) > 0 && json.Unmarshal(value, &ep) != nil {
		return ep, false
	}
	return ep, true
}

// EndpointEvent is one change of a network's endpoints: Gone says it was
// deleted (by its host, or by its lease expiring); Prev is what it was.
type EndpointEvent struct {
	Endpoint
	Gone bool
}

// WatchEndpoints follows network name's endpoints from revision rev (as
// Endpoints returned it) until ctx ends. The channel closes when the watch
// breaks (a compaction, the store lost): list and watch again.
func (s *Store) WatchEndpoints(ctx context.Context, name string, rev int64) <-chan EndpointEvent {
	out := make(chan EndpointEvent)
	wch := s.cli.Watch(clientv3.WithRequireLeader(ctx), netKey(name)+"endpoints/", clientv3.WithPrefix(), clientv3.WithRev(rev+1), clientv3.WithPrevKV())
	go func() {
		defer close(out)
		for resp := range wch {
			if resp.Err() != nil {
				return
			}
			for _, ev := range resp.Events {
				e := EndpointEvent{Gone: ev.Type == clientv3.EventTypeDelete}
				value := ev.Kv.Value
				if e.Gone && ev.PrevKv != nil {
					value = ev.PrevKv.Value
				}
				ep, ok := decodeEndpoint(name, ev.Kv.Key, value)
				if !ok {
					continue
				}
				e.Endpoint = ep
				select {
				case out <- e:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return out
}

// KnownHosts lists every host that is a member of a cluster network or
// holds address blocks, and whether it is alive (holds a lease): a host
// that is gone but still listed keeps its addresses until RetireHost.
func (s *Store) KnownHosts(ctx context.Context) (map[string]bool, error) {
	out := map[string]bool{}
	err := s.call(ctx, "listing hosts", func(ctx context.Context) error {
		r, err := s.cli.Get(ctx, prefix+"networks/", clientv3.WithPrefix())
		if err != nil {
			return err
		}
		for _, kv := range r.Kvs {
			rest := strings.TrimPrefix(string(kv.Key), prefix+"networks/")
			if _, member, ok := strings.Cut(rest, "/members/"); ok {
				out[member] = false
			} else if _, _, ok := strings.Cut(rest, "/blocks/"); ok {
				out[string(kv.Value)] = false
			}
		}
		live, err := s.cli.Get(ctx, prefix+"hosts/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
		if err != nil {
			return err
		}
		for _, kv := range live.Kvs {
			out[strings.TrimPrefix(string(kv.Key), prefix+"hosts/")] = true
		}
		return nil
	})
	return out, err
}

// describeHost names a host for a person: its ID, with its hostname and
// address while it is alive.
func (s *Store) describeHost(ctx context.Context, id string) string {
	r, err := s.cli.Get(ctx, prefix+"hosts/"+id)
	if err != nil || len(r.Kvs) == 0 {
		return id + " (not alive now)"
	}
	var h Host
	if json.Unmarshal(r.Kvs[0].Value, &h) != nil {
		return id
	}
	return fmt.Sprintf("%s (%s, %s)", id, h.Hostname, h.Advertise)
}

// member refuses, for a person, a host that is no longer a member of
// network name: it was retired (scripts/ournet-retire-host) while it was
// away, so its blocks may be another host's by now.
func (s *Store) member(ctx context.Context, name string) error {
	r, err := s.cli.Get(ctx, netKey(name)+"members/"+s.cfg.Host, clientv3.WithKeysOnly())
	if err != nil {
		return err
	}
	if len(r.Kvs) == 0 {
		return userErr("ournet: this host (%s) is not a member of cluster network %s any more (it was retired while it was away, or the network's keys were removed from etcd); "+
			"remove the network on this host (docker network rm) and create it again", s.cfg.Host, name)
	}
	return nil
}
