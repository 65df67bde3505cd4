package ipam

import (
	"errors"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	api "github.com/docker/go-plugins-helpers/ipam"
)

var (
	net1 = netip.MustParsePrefix("10.1.0.0/24")
	net2 = netip.MustParsePrefix("10.2.0.0/24")
	net3 = netip.MustParsePrefix("10.3.0.0/24")
	net4 = netip.MustParsePrefix("10.4.0.0/24")
)

// The pool of a network the driver deleted whose ReleasePool was lost to a
// plugin restart (its empty retry names no pool) is freed whichever comes
// first, the DeleteNetwork or the empty retry; a pool another network uses
// is not; and an orphan whose ReleasePool never came gives way to a new
// pool over it, or goes at a start, once that ReleasePool cannot come.
func TestOrphanPools(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	st, a := start(t, path)
	var ids []string
	for _, s := range []netip.Prefix{net1, net2, net3} {
		id := mustPool(t, a, s.String(), "", nil)
		mustAddr(t, a, id, "", gwOpts)
		ids = append(ids, id)
	}
	pending := mustPool(t, a, net4.String(), "", nil)

	// DeleteNetwork first (older engines), then the empty retry.
	a.NetworkGone([]netip.Prefix{net1, net4, netip.MustParsePrefix("10.9.0.0/24")})
	if got := poolIDs(a); !slices.Equal(got, append(slices.Clone(ids), pending)) {
		t.Fatalf("pools after NetworkGone %v: an orphan waits for its ReleasePool", got)
	}
	if n := a.SweepOrphans(); n != 1 {
		t.Fatalf("the empty retry freed %d pools, want 1 (%s)", n, ids[0])
	}
	// The empty retry first (engine 20.10 and later), then DeleteNetwork.
	if n := a.SweepOrphans(); n != 0 {
		t.Fatalf("an empty retry with no orphan freed %d pools", n)
	}
	a.NetworkGone([]netip.Prefix{net2})
	if got := poolIDs(a); !slices.Equal(got, []string{ids[2], pending}) {
		t.Fatalf("pools after a lost release and then NetworkGone %v", got)
	}
	// A lost release is used once.
	a.NetworkGone([]netip.Prefix{net3})
	if got := poolIDs(a); !slices.Equal(got, []string{ids[2], pending}) {
		t.Fatalf("a second NetworkGone freed %v", got)
	}
	// An orphan used after all is not one any more; the mark is saved.
	mustAddr(t, a, ids[2], "", nil)
	a.NetworkGone([]netip.Prefix{net3})
	st.Close()

	st, b := start(t, path)
	if got := poolIDs(b); !slices.Equal(got, []string{ids[2]}) {
		t.Fatalf("pools after restart %v (the pending one is dropped)", got)
	}
	// Within its grace an orphan still holds its subnet; past it, a new
	// pool over it frees it, unless the new one overlaps a live pool too.
	if _, err := b.RequestPool(&api.RequestPoolRequest{Pool: "10.3.0.0/25"}); !errors.Is(err, ErrOverlap) {
		t.Fatalf("a new pool over an orphan within its grace: %v, want an overlap", err)
	}
	mustAddr(t, b, mustPool(t, b, net1.String(), "", nil), "", gwOpts)
	age(b, ids[2])
	if _, err := b.RequestPool(&api.RequestPoolRequest{Pool: "10.0.0.0/14"}); !errors.Is(err, ErrOverlap) {
		t.Fatalf("a /14 over a live pool and the orphan: %v", err)
	}
	mustAddr(t, b, mustPool(t, b, "10.3.0.0/25", "", nil), "", gwOpts)
	if got := poolIDs(b); !slices.Equal(got, []string{ids[0], "ournet-local/10.3.0.0/25"}) {
		t.Fatalf("pools after the reclaim %v", got)
	}

	// At a start, an orphan past its grace is freed.
	b.NetworkGone([]netip.Prefix{net1})
	age(b, ids[0])
	st.Close()
	st, c := start(t, path)
	defer st.Close()
	if got := poolIDs(c); !slices.Equal(got, []string{"ournet-local/10.3.0.0/25"}) {
		t.Fatalf("pools after a start past the grace %v", got)
	}
}

// A container's address whose ReleaseAddress the dying plugin never read
// is freed by the empty retry once the plugin is back; one deleted since
// waits for its own release, or for its grace to pass.
func TestOrphanAddresses(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	st, a := start(t, path)
	id := mustPool(t, a, net1.String(), "", nil)
	gw := mustA("10.1.0.1")
	mustAddr(t, a, id, "", gwOpts)
	dyn := mustA(strings.Split(mustAddr(t, a, id, "", nil), "/")[0])
	fixed, other := mustA("10.1.0.50"), mustA("10.1.0.60")
	mustAddr(t, a, id, fixed.String(), nil)
	mustAddr(t, a, id, other.String(), nil)

	a.EndpointGone(net1, dyn)
	a.EndpointGone(net1, gw)                 // the gateway goes with the pool
	a.EndpointGone(net2, mustA("10.2.0.5"))  // not ournet's pool
	a.EndpointGone(net1, mustA("10.1.0.77")) // not held
	if n := a.SweepAddresses(); n != 0 || !slices.Equal(held(a, id), []netip.Addr{gw, dyn, fixed, other}) {
		t.Fatalf("an empty retry freed %d addresses of endpoints deleted by this plugin (held %v): their own release may be on its way", n, held(a, id))
	}
	st.Close()

	// The plugin died before reading dyn's ReleaseAddress; the retry comes
	// to the next one, empty (a restart takes far more than this sleep).
	time.Sleep(2 * time.Millisecond)
	st, b := start(t, path)
	if n := b.SweepAddresses(); n != 1 || !slices.Equal(held(b, id), []netip.Addr{gw, fixed, other}) {
		t.Fatalf("the empty retry freed %d (held %v), want %s freed", n, held(b, id), dyn)
	}
	// Within its grace an orphan stays held; past it, a request frees it.
	b.EndpointGone(net1, fixed)
	if _, err := reqAddr(b, id, fixed.String(), nil); !errors.Is(err, ErrAddressInUse) {
		t.Fatalf("--ip of an orphan within its grace: %v, want in use", err)
	}
	ageAddr(b, id, fixed)
	mustAddr(t, b, id, fixed.String(), nil)
	// At a start, an orphan past its grace is freed; the mark is saved.
	b.EndpointGone(net1, other)
	ageAddr(b, id, other)
	st.Close()
	st, c := start(t, path)
	defer st.Close()
	if got := held(c, id); !slices.Equal(got, []netip.Addr{gw, fixed}) {
		t.Fatalf("held after a start past the grace %v", got)
	}
}

// The sweep after a crash frees an endpoint's IPv6 address too, whose
// own release (dockerd releases IPv4, then IPv6) comes after it: if a new
// container got the address in between, that late release frees nothing.
func TestLateReleaseAfterSweep(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	st, a := start(t, path)
	v4, v6 := mustPool(t, a, net1.String(), "", nil), mustPool(t, a, "2001:db8:1::/64", "", nil)
	mustAddr(t, a, v4, "", gwOpts)
	mustAddr(t, a, v6, "", gwOpts)
	x4, x6 := mustA("10.1.0.5"), mustA("2001:db8:1::5")
	mustAddr(t, a, v4, x4.String(), nil)
	mustAddr(t, a, v6, x6.String(), nil)
	a.EndpointGone(net1, x4)
	a.EndpointGone(netip.MustParsePrefix("2001:db8:1::/64"), x6)
	st.Close()
	time.Sleep(2 * time.Millisecond)
	st, b := start(t, path)
	defer st.Close()
	if n := b.SweepAddresses(); n != 2 {
		t.Fatalf("the sweep freed %d addresses, want both of the endpoint's", n)
	}
	mustAddr(t, b, v6, x6.String(), nil) // a new container
	if err := b.ReleaseAddress(&api.ReleaseAddressRequest{PoolID: v6, Address: x6.String()}); err != nil {
		t.Fatal(err)
	}
	if got := held(b, v6); len(got) != 2 || got[1] != x6 {
		t.Fatalf("the old endpoint's late release freed the new container's %s (held %v)", x6, got)
	}
	// The new container's own release, after its DeleteEndpoint, frees it.
	b.EndpointGone(netip.MustParsePrefix("2001:db8:1::/64"), x6)
	if err := b.ReleaseAddress(&api.ReleaseAddressRequest{PoolID: v6, Address: x6.String()}); err != nil {
		t.Fatal(err)
	}
	if got := held(b, v6); len(got) != 1 {
		t.Fatalf("held after the new container's release %v", got)
	}
	// A swept address nobody took: its late release is a no-op, and the
	// next holder's release is not mistaken for it.
	if err := b.ReleaseAddress(&api.ReleaseAddressRequest{PoolID: v4, Address: x4.String()}); err != nil {
		t.Fatal(err)
	}
	mustAddr(t, b, v4, x4.String(), nil)
	if err := b.ReleaseAddress(&api.ReleaseAddressRequest{PoolID: v4, Address: x4.String()}); err != nil {
		t.Fatal(err)
	}
	if got := held(b, v4); len(got) != 1 {
		t.Fatalf("held in the IPv4 pool %v, want the gateway alone", got)
	}
}

// held lists the addresses pool id holds.
func held(a *Allocator, id string) []netip.Addr {
	var out []netip.Addr
	for _, p := range a.Pools() {
		if p.ID == id {
			for _, al := range p.Allocated {
				out = append(out, al.Addr)
			}
		}
	}
	return out
}

// ageAddr backdates the orphan mark of addr in pool id past orphanGrace.
func ageAddr(a *Allocator, id string, addr netip.Addr) {
	a.mu.Lock()
	defer a.mu.Unlock()
	p := a.pools[id].clone()
	i, _ := p.find(addr)
	p.Addrs[i].Orphaned = time.Now().Add(-2 * orphanGrace).UnixMilli()
	a.saveRelease(p)
	a.pools[id] = p
}

// age backdates the orphan mark of pool id past orphanGrace, in memory and
// in the state file.
func age(a *Allocator, id string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	p := a.pools[id].clone()
	p.Orphaned = time.Now().Add(-2 * orphanGrace).Unix()
	a.saveRelease(p)
	a.pools[id] = p
}

func poolIDs(a *Allocator) []string {
	var ids []string
	for _, p := range a.Pools() {
		ids = append(ids, p.ID)
	}
	return ids
}

// The pool of a network dockerd never learnt of, whose ReleasePool was
// lost (its empty retry found no orphan), gives way to a new pool of the
// same subnet once the driver has removed that network, and only then:
// the hook is asked with the subnet held, and a pool it does not name
// stays held.
func TestUnlearntNetworkPoolReclaimed(t *testing.T) {
	a := newMem(t, Config{})
	held := mustPool(t, a, net1.String(), "", nil)
	mustAddr(t, a, held, "", gwOpts) // answered: dockerd learnt the pool
	other := mustPool(t, a, net2.String(), "", nil)
	mustAddr(t, a, other, "", gwOpts)
	if n := a.SweepOrphans(); n != 0 { // the lost ReleasePool's empty retry
		t.Fatalf("the empty retry freed %d pools", n)
	}
	req := &api.RequestPoolRequest{AddressSpace: LocalAddressSpace, Pool: "10.1.0.0/25"}
	if _, err := a.RequestPool(req); err == nil || !strings.Contains(err.Error(), "overlaps 10.1.0.0/24") {
		t.Fatalf("without the driver's hook: %v, want the overlap refused", err)
	}
	var asked []netip.Prefix
	a.SetReclaim(func(q netip.Prefix) ([]netip.Prefix, bool) {
		asked = append(asked, q)
		if q == net2 {
			return nil, true // a network dockerd has
		}
		return []netip.Prefix{q}, true
	})
	if _, err := a.RequestPool(&api.RequestPoolRequest{AddressSpace: LocalAddressSpace, Pool: "10.2.0.128/25"}); err == nil {
		t.Fatal("a pool the driver does not give up was freed")
	}
	res, err := a.RequestPool(req)
	if err != nil {
		t.Fatalf("the unlearnt network's pool was not freed: %v", err)
	}
	if !slices.Equal(asked, []netip.Prefix{net2, net1}) {
		t.Fatalf("the hook was asked %v, want [%s %s]", asked, net2, net1)
	}
	if got := poolIDs(a); !slices.Contains(got, other) || !slices.Contains(got, res.PoolID) || slices.Contains(got, held) {
		t.Fatalf("pools %v, want %s and %s, not %s", got, other, res.PoolID, held)
	}
	if len(a.lost) != 0 {
		t.Fatalf("the lost release is kept (%d): it was the freed pool's", len(a.lost))
	}
}

// A pool whose gateway RequestAddress or CreateNetwork an earlier run
// stopped in, unanswered, and that no ournet network holds, gives way to a
// new pool over it; not
// once dockerd has retried that RequestAddress, nor when an ournet network
// holds it, nor without the mark.
func TestGatewayCutShortPoolReclaimed(t *testing.T) {
	a := newMem(t, Config{})
	known := false
	a.SetReclaim(func(netip.Prefix) ([]netip.Prefix, bool) { return nil, known })
	over := func(s string) error {
		_, err := a.RequestPool(&api.RequestPoolRequest{AddressSpace: LocalAddressSpace, Pool: s})
		return err
	}
	gw := func(id string) *api.RequestAddressRequest {
		return &api.RequestAddressRequest{PoolID: id, Options: gwOpts}
	}
	p1 := mustPool(t, a, net1.String(), "", nil)
	mustAddr(t, a, p1, "", gwOpts) // saved, never answered: the plugin died
	if err := over("10.1.0.0/25"); err == nil {
		t.Fatal("a pool with no mark was freed")
	}
	a.GatewayCutShort(&api.RequestAddressRequest{PoolID: p1}) // not a gateway's
	if err := over("10.1.0.0/25"); err == nil {
		t.Fatal("a pool marked by a container's RequestAddress was freed")
	}
	a.GatewayCutShort(gw(p1))
	known = true
	if err := over("10.1.0.0/25"); err == nil {
		t.Fatal("a marked pool an ournet network holds was freed")
	}
	known = false
	if err := over("10.1.0.0/25"); err != nil {
		t.Fatalf("the marked pool was not freed: %v", err)
	}
	// dockerd retried the RequestAddress after all: the pool is its.
	p2 := mustPool(t, a, net2.String(), "", nil)
	mustAddr(t, a, p2, "", gwOpts)
	a.GatewayCutShort(gw(p2))
	mustAddr(t, a, p2, "", gwOpts) // the replay
	if err := over("10.2.0.0/25"); err == nil {
		t.Fatal("a pool whose RequestAddress was retried was freed")
	}
	// The CreateNetwork cut short instead, before the network was saved.
	p4 := mustPool(t, a, net4.String(), "", nil)
	mustAddr(t, a, p4, "", gwOpts)                                          // answered
	a.NetworkCutShort([]netip.Prefix{netip.MustParsePrefix("10.9.0.0/24")}) // no such pool
	if err := over("10.4.0.0/25"); err == nil {
		t.Fatal("a pool no cut-short call names was freed")
	}
	a.NetworkCutShort([]netip.Prefix{net4})
	if err := over("10.4.0.0/25"); err != nil {
		t.Fatalf("the pool of a cut-short CreateNetwork was not freed: %v", err)
	}
	// Released by dockerd after all: a new pool of the same subnet (the
	// same ID) is not the marked one.
	p3 := mustPool(t, a, net3.String(), "", nil)
	mustAddr(t, a, p3, "", gwOpts)
	a.GatewayCutShort(gw(p3))
	if err := a.ReleasePool(&api.ReleasePoolRequest{PoolID: p3}); err != nil {
		t.Fatal(err)
	}
	if again := mustPool(t, a, net3.String(), "", nil); again != p3 {
		t.Fatalf("the new pool's ID is %s, want %s", again, p3)
	}
	if err := over("10.3.0.0/25"); err == nil {
		t.Fatal("a new pool was freed by the mark of the released pool of the same ID")
	}
}

// A network that asks for no gateway (gateway mode isolated, engine 28+)
// keeps its pool through a restart once its network is made; a pool
// answered and then never used goes, as before.
func TestGatewaylessPoolSurvivesRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	st, a := start(t, path)
	used := mustPool(t, a, net1.String(), "", nil)
	unused := mustPool(t, a, net2.String(), "", nil)
	a.NetworkMade([]netip.Prefix{net1})
	st.Close()
	st, a = start(t, path)
	defer st.Close()
	if got := poolIDs(a); !slices.Equal(got, []string{used}) {
		t.Fatalf("pools after a restart: %v, want only %s (%s was never used)", got, used, unused)
	}
	if _, err := reqAddr(a, used, "", nil); err != nil {
		t.Fatalf("the first container on the gateway-less network after the restart: %v", err)
	}
}
