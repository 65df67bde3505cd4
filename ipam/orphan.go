package ipam

import (
	"net/netip"
	"slices"
	"time"

	api "github.com/docker/go-plugins-helpers/ipam"
	log "github.com/sirupsen/logrus"
)

// A pool whose network is gone is an orphan until dockerd's ReleasePool
// frees it. dockerd deletes a network with ReleaseAddress (the gateway),
// ReleasePool and DeleteNetwork (engines before 20.10 call DeleteNetwork
// first), and forgets the network whatever the releases answer. A
// ReleasePool that reached the socket of a plugin that was dying, unread,
// is retried with an empty body (its body was already consumed) that
// names no pool, and the pool would be held for ever: a later create of
// the same subnet is refused as overlapping it. So the driver says which
// pools its deleted networks used (NetworkGone), and in either order:
//   - an empty retry of ReleasePool frees every orphan (SweepOrphans), or,
//     with none, is kept as a release lost for the next DeleteNetwork;
//   - a NetworkGone that finds such a lost release frees the pool at once,
//     else marks it an orphan;
//   - a RequestPool that overlaps an orphan frees it once orphanGrace has
//     passed, and so does a start: dockerd stops retrying a plugin call
//     after 30 s, so no ReleasePool for it can still come.
// A ReleasePool of an orphan may still be on its way when it is swept; it
// then finds an unknown pool, which is fine unless a new network got the
// same subnet (so the same pool ID) in those milliseconds.

// An address is an orphan the same way, between its endpoint's delete and
// its ReleaseAddress (dockerd deletes the endpoint first, then releases
// its address). The driver says which addresses its deleted endpoints
// used (EndpointGone), and:
//   - an empty retry of ReleaseAddress frees the orphans marked before
//     this plugin started: the release the dying plugin never read was
//     for one of them. One marked since is left alone, as its own
//     ReleaseAddress may be on its way, and freeing it early could let a
//     new container get the address that release then frees;
//   - an orphan past orphanGrace is freed by the next RequestAddress in
//     its pool, and by a start.
// The sweep may free more than the lost release's address: the endpoint's
// IPv6 address (dockerd releases IPv4, then IPv6), or another endpoint's
// deleted just before the crash, whose own releases come after the sweep
// with their bodies. Such a late release must not free the address again
// if a new container got it in between: a sweep remembers what it freed,
// and a release of one of those addresses that finds it held and not an
// orphan (a new container's own release follows its DeleteEndpoint, which
// marks it) is the late one, and is ignored (lateRelease). The price: a
// new container that got such an address within the minute and whose
// create fails is released without a DeleteEndpoint, so that release is
// ignored too and the address stays held until its pool goes.
// The gateway and --aux-address are released with the network's pool.

// A pool can also be held for a network dockerd does not have: the
// plugin died in the network's CreateNetwork after saving it, and stayed
// down past dockerd's retries (30 s). dockerd then fails the create and
// sends ReleasePool, which a plugin still down, or dying again, loses; no
// DeleteNetwork comes for it, so the pool never becomes an orphan and the
// user's next create of the subnet would be refused for ever. The
// driver can prove which networks dockerd never learnt of (an earlier
// run's, never answered), so a RequestPool that overlaps a pool asks it
// first (SetReclaim): it removes such a network and names its pools, which
// are freed as that lost ReleasePool would have freed them. No ReleasePool
// of theirs can still come: dockerd sends it before it fails the create,
// and the user runs the command again after that.
//
// The plugin can also die, and stay down as long, earlier: in the
// gateway's RequestAddress after RequestPool was answered, or in
// CreateNetwork before saving the network. Then there is no network at
// all, and nothing but the cut-short call (its body kept for a replay,
// with no reply) says the create failed: the plugin tells the IPAM at
// start (GatewayCutShort, NetworkCutShort). A RequestPool that overlaps
// such a pool, which no ournet network holds and whose RequestAddress
// dockerd did not retry since, frees it the same way.

// SetReclaim sets the driver's hook (driver.ReclaimUnlearnt): given a
// subnet a new pool would overlap, it removes the network dockerd never
// learnt of that holds it, if that is what holds it, and returns that
// network's subnets; known says whether an ournet network held it at all.
// Call before serving.
func (a *Allocator) SetReclaim(fn func(netip.Prefix) (subnets []netip.Prefix, known bool)) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.reclaim = fn
}

// GatewayCutShort takes a RequestAddress an earlier run of the plugin
// stopped in, before answering it: if it was a gateway's, its pool is
// marked. Call before serving.
func (a *Allocator) GatewayCutShort(req *api.RequestAddressRequest) {
	if req.Options[optRequestAddressType] != optGateway {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.cutShort[req.PoolID] = true
}

// NetworkCutShort takes the subnets of a CreateNetwork an earlier run of
// the plugin stopped in, before answering it, and marks their pools. Call
// before serving.
func (a *Allocator) NetworkCutShort(subnets []netip.Prefix) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, s := range subnets {
		if p := a.poolOf(s.Masked()); p != nil {
			a.cutShort[p.ID] = true
		}
	}
}

// reclaimUnlearnt frees what a pool of pfx would overlap if it is one of
// the two above: the pools of a network dockerd never learnt of, or a pool
// no ournet network holds whose creation was cut short.
// Called without a.mu: the hook takes the driver's lock, and the driver
// calls the IPAM with it held.
func (a *Allocator) reclaimUnlearnt(pfx netip.Prefix) {
	a.mu.Lock()
	fn := a.reclaim
	q, ok := a.overlap(pfx)
	a.mu.Unlock()
	if fn == nil || !ok {
		return
	}
	subnets, known := fn(q)
	a.mu.Lock()
	defer a.mu.Unlock()
	if p := a.poolOf(q); !known && p != nil && a.cutShort[p.ID] {
		a.release(p)
		log.WithField("pool", p.ID).Warn("ipam: released the pool of a network whose creation failed while the plugin was down (its gateway or network was never answered, and its ReleasePool never came)")
		return
	}
	for _, s := range subnets {
		p := a.poolOf(s.Masked())
		if p == nil || p.Pending {
			continue // freed meanwhile, or never answered (a start drops it)
		}
		if len(a.lost) > 0 {
			a.lost = a.lost[1:] // the lost release was most likely this one
		}
		a.release(p)
		log.WithField("pool", p.ID).Warn("ipam: released the pool of a network dockerd never learnt of (the plugin stopped before answering its creation, and lost the pool's ReleasePool)")
	}
}

// orphanGrace is how long after its network's delete an orphan's own
// ReleasePool may still arrive (dockerd's plugin timeout is 30 s), and how
// long a lost release waits for its DeleteNetwork.
const orphanGrace = time.Minute

// pastGrace says whether p is an orphan whose own ReleasePool can no longer
// come.
func (p *pool) pastGrace() bool {
	return p.Orphaned != 0 && time.Since(time.Unix(p.Orphaned, 0)) > orphanGrace
}

// NetworkMade tells the IPAM that an ournet network was created on the
// pools of these subnets: dockerd has their IDs. A pool still pending is
// one whose network asked for no gateway (gateway mode isolated, or an
// internal network with inhibit_ipv4, engine 28+), which without this
// a restart would drop while its network lives (see pool.Pending).
func (a *Allocator) NetworkMade(subnets []netip.Prefix) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, s := range subnets {
		cur := a.poolOf(s.Masked())
		if cur == nil || !cur.Pending {
			continue
		}
		p := cur.clone()
		p.Pending = false
		if err := a.save(p); err != nil {
			log.WithField("pool", p.ID).WithError(err).Warn("ipam: saving that a network uses the pool (a restart before the next save drops it)")
			continue
		}
		a.pools[p.ID] = p
	}
}

// NetworkGone marks the pools of these subnets as orphans, or frees them
// if a ReleasePool was lost: the ournet network that used them was
// deleted. Pending pools are left alone (the restart drops them), and so
// is a subnet ournet's IPAM does not hold (the network had another IPAM
// driver). A mark that cannot be saved is kept in memory: the delete goes
// on whatever happens here.
func (a *Allocator) NetworkGone(subnets []netip.Prefix) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for len(a.lost) > 0 && time.Since(a.lost[0]) > orphanGrace {
		a.lost = a.lost[1:]
	}
	for _, s := range subnets {
		cur := a.poolOf(s.Masked())
		if cur == nil || cur.Pending || cur.Orphaned != 0 {
			continue
		}
		if len(a.lost) > 0 {
			a.lost = a.lost[1:]
			a.release(cur)
			log.WithField("pool", cur.ID).Info("ipam: released the pool of a deleted network whose ReleasePool the plugin never read (the engine retried it with an empty body)")
			continue
		}
		p := cur.clone()
		p.Orphaned = time.Now().Unix()
		a.saveRelease(p)
		a.pools[p.ID] = p
	}
}

// SweepOrphans answers an empty retry of ReleasePool (see above): it
// frees every orphan, or, with none, keeps the release for the next
// NetworkGone. It says how many pools it freed.
func (a *Allocator) SweepOrphans() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for id, p := range a.pools {
		if p.Orphaned != 0 {
			a.release(p)
			n++
			log.WithField("pool", id).Info("ipam: released the pool of a deleted network whose ReleasePool the plugin never read (the engine retried it with an empty body)")
		}
	}
	if n == 0 {
		a.lost = append(a.lost, time.Now())
	}
	return n
}

// EndpointGone marks addr, in the pool of exactly subnet, an orphan: the
// ournet endpoint that used it was deleted. As with NetworkGone, a pool
// ournet's IPAM does not hold, or an address it does not hold, is left
// alone, and a mark that cannot be saved is kept in memory.
func (a *Allocator) EndpointGone(subnet netip.Prefix, addr netip.Addr) {
	a.mu.Lock()
	defer a.mu.Unlock()
	cur := a.poolOf(subnet.Masked())
	if cur == nil || cur.Pending || !addr.IsValid() {
		return
	}
	i, held := cur.find(addr.Unmap())
	if !held || cur.Addrs[i].Kind == KindGateway || cur.Addrs[i].Orphaned != 0 {
		return
	}
	p := cur.clone()
	p.Addrs[i].Orphaned = time.Now().UnixMilli()
	a.saveRelease(p)
	a.pools[p.ID] = p
}

// SweepAddresses answers an empty retry of ReleaseAddress (see above): it
// frees every address orphaned before this plugin started, and says how
// many.
func (a *Allocator) SweepAddresses() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	before := a.started.UnixMilli()
	now := time.Now()
	for addr, t := range a.swept {
		if now.Sub(t) > orphanGrace {
			delete(a.swept, addr)
		}
	}
	lost := func(al Allocation) bool { return al.Orphaned != 0 && al.Orphaned < before }
	n := 0
	for id, cur := range a.pools {
		if !slices.ContainsFunc(cur.Addrs, lost) {
			continue
		}
		p := cur.clone()
		p.Addrs = slices.DeleteFunc(p.Addrs, func(al Allocation) bool {
			if !lost(al) {
				return false
			}
			n++
			a.swept[al.Addr] = now
			log.WithFields(log.Fields{"pool": id, "addr": al.Addr}).Info("ipam: released the address of a deleted endpoint whose ReleaseAddress the plugin never read (the engine retried it with an empty body)")
			return true
		})
		a.saveRelease(p)
		a.pools[id] = p
	}
	return n
}

// lateRelease says whether a ReleaseAddress of addr, held in p as al (nil:
// not held), is the late release of an address a sweep freed and a new
// container got since: then it must free nothing (see above). Called with
// a.mu held.
func (a *Allocator) lateRelease(addr netip.Addr, al *Allocation) bool {
	t, ok := a.swept[addr]
	if !ok {
		return false
	}
	delete(a.swept, addr) // the late release comes once
	return al != nil && al.Orphaned == 0 && time.Since(t) <= orphanGrace
}

// pastGrace says whether al is an orphan whose own ReleaseAddress can no
// longer come.
func (al Allocation) pastGrace() bool {
	return al.Orphaned != 0 && time.Since(time.UnixMilli(al.Orphaned)) > orphanGrace
}

// dropStale frees p's orphan addresses past grace; p is a clone about to
// be saved.
func (p *pool) dropStale() {
	p.Addrs = slices.DeleteFunc(p.Addrs, Allocation.pastGrace)
}

// reclaimOrphan frees the pool of subnet s if it is an orphan whose own
// ReleasePool can no longer come, and says whether it did. Called with
// a.mu held.
func (a *Allocator) reclaimOrphan(s netip.Prefix) bool {
	p := a.poolOf(s)
	if p == nil || !p.pastGrace() {
		return false
	}
	a.release(p)
	log.WithField("pool", p.ID).Info("ipam: released the pool of a deleted network whose ReleasePool never came, for a new network that overlaps it")
	return true
}

// overlap is byPrefix.Overlap after freeing the orphans reclaimOrphan
// may free. Called with a.mu held.
func (a *Allocator) overlap(s netip.Prefix) (netip.Prefix, bool) {
	for {
		q, ok := a.byPrefix.Overlap(s)
		if !ok || !a.reclaimOrphan(q) {
			return q, ok
		}
	}
}

// release frees p and its addresses. Called with a.mu held.
func (a *Allocator) release(p *pool) {
	_ = a.drop(p.ID) // a failed write is kept in memory for Flush
	delete(a.pools, p.ID)
	delete(a.cutShort, p.ID) // a new pool of the same ID is not that one
	a.byPrefix.Remove(p.Prefix)
}

// poolOf finds the pool of exactly subnet s; nil if none. Called with a.mu
// held.
func (a *Allocator) poolOf(s netip.Prefix) *pool {
	for _, p := range a.pools {
		if p.Prefix == s {
			return p
		}
	}
	return nil
}
