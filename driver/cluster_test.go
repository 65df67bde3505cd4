package driver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/docker/go-plugins-helpers/network"

	"github.com/ournet/ournet/internal/cluster"
	"github.com/ournet/ournet/internal/overlay"
)

// These drive the cluster part of the driver over fakes; the e2e cluster
// test (e2e/cluster_test.go) runs it on three hosts with etcd.

// quietStore is a cluster store that accepts everything, and whose
// listings never answer (an agent then never lists).
type quietStore struct{}

func (quietStore) Host() string          { return "me" }
func (quietStore) Lease() int64          { return 1 }
func (quietStore) Advertise() netip.Addr { return netip.MustParseAddr("198.51.100.1") }
func (quietStore) Define(_ context.Context, name string, spec cluster.Spec) (cluster.Network, error) {
	return cluster.Network{Name: name, Spec: spec, VNI: 4096}, nil
}
func (quietStore) Leave(context.Context, string) error                         { return nil }
func (quietStore) Memberships(context.Context) ([]string, error)               { return nil, nil }
func (quietStore) PutEndpoint(context.Context, string, cluster.Endpoint) error { return nil }
func (quietStore) DeleteEndpoint(context.Context, string, netip.Addr) error    { return nil }
func (quietStore) Endpoints(ctx context.Context, _ string) (map[netip.Addr]cluster.Endpoint, int64, error) {
	<-ctx.Done()
	return nil, 0, ctx.Err()
}
func (quietStore) WatchEndpoints(context.Context, string, int64) <-chan cluster.EndpointEvent {
	return nil
}

type anyPools struct{}

func (anyPools) CheckAttach(netip.Prefix, string) error { return nil }
func (anyPools) Attach(netip.Prefix, string) error      { return nil }

type fakeGuard struct {
	mu sync.Mutex
	on bool
}

func (g *fakeGuard) EnsureVXLAN(int, string, netip.Addr, []netip.Addr, bool) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.on = true
	return nil
}
func (g *fakeGuard) DelVXLAN() error { g.mu.Lock(); defer g.mu.Unlock(); g.on = false; return nil }
func (g *fakeGuard) up() bool        { g.mu.Lock(); defer g.mu.Unlock(); return g.on }

// fakeOverlay runs onEnsure as it makes a device, and records whether
// the guard was up once it had.
type fakeOverlay struct {
	g          *fakeGuard
	onEnsure   func()
	guardAtDev bool
}

func (o *fakeOverlay) Ensure(overlay.Device) error {
	if o.onEnsure != nil {
		o.onEnsure()
	}
	o.guardAtDev = o.g.up()
	return nil
}
func (o *fakeOverlay) Delete(string, string) error                                   { return nil }
func (o *fakeOverlay) SetPeers(string, []overlay.Peer) (int, int, error)             { return 0, 0, nil }
func (o *fakeOverlay) SetFastPath(string, []overlay.Local, []net.HardwareAddr) error { return nil }

func clusterReq() *network.CreateNetworkRequest {
	return &network.CreateNetworkRequest{
		NetworkID: nid, Options: generic(optCluster, "app"),
		IPv4Data: []*network.IPAMData{{AddressSpace: "ournet-local", Pool: "198.18.7.0/24", Gateway: "198.18.7.1/24"}},
	}
}

// The first cluster network's VXLAN device is made with the guard up,
// even when a sync or repair round updates the guard (it takes no driver
// lock) between the guard's creation and the network's agent: that round
// once counted no agent and removed the guard, leaving UDP 4789 open.
// Once the network is gone, so is the guard.
func TestGuardStaysUnderTheFirstDevice(t *testing.T) {
	d, _, _, _ := newTestDriver(t)
	g := &fakeGuard{}
	o := &fakeOverlay{g: g, onEnsure: func() {}}
	o.onEnsure = func() { d.updateGuard() } // the round, from another goroutine's point of view
	d.SetCluster(&Cluster{Store: quietStore{}, Overlay: o, Pools: anyPools{}, Guard: g, Underlay: "eth0", UnderlayMTU: 1500})
	if err := d.CreateNetwork(clusterReq()); err != nil {
		t.Fatal(err)
	}
	if !o.guardAtDev {
		t.Fatal("the VXLAN device was made with no guard")
	}
	if d.updateGuard(); !g.up() {
		t.Fatal("a round after the create removed the guard of a cluster network")
	}
	if err := d.DeleteNetwork(&network.DeleteNetworkRequest{NetworkID: nid}); err != nil {
		t.Fatal(err)
	}
	if d.updateGuard(); g.up() {
		t.Fatal("the guard outlived the last cluster network")
	}
}

// A failed create leaves no guard behind it either.
func TestGuardGoesWithAFailedCreate(t *testing.T) {
	d, _, fw, _ := newTestDriver(t)
	g := &fakeGuard{}
	d.SetCluster(&Cluster{Store: quietStore{}, Overlay: &fakeOverlay{g: g}, Pools: anyPools{}, Guard: g, Underlay: "eth0", UnderlayMTU: 1500})
	fw.fail = errors.New("iptables: boom")
	if err := d.CreateNetwork(clusterReq()); err == nil {
		t.Fatal("the create succeeded with the firewall failing")
	}
	if d.updateGuard(); g.up() {
		t.Fatal("a failed create's guard stayed")
	}
}

// StoreDown and StoreResult: a store that could not be reached is down
// for calls outside the driver until any answer; without a cluster it is
// never down.
func TestStoreDownForOthers(t *testing.T) {
	d, _, _, _ := newTestDriver(t)
	if d.StoreResult(fmt.Errorf("x: %w", cluster.ErrUnavailable)); d.StoreDown() {
		t.Fatal("down without a cluster")
	}
	d.SetCluster(&Cluster{Store: quietStore{}, Overlay: &fakeOverlay{g: &fakeGuard{}}, Pools: anyPools{}, Guard: &fakeGuard{}})
	for _, step := range []struct {
		err  error
		down bool
	}{
		{nil, false},
		{fmt.Errorf("claiming: %w", cluster.ErrUnavailable), true},
		{errors.New("address 198.18.7.9 is held by host h2"), false}, // an answer
		{fmt.Errorf("claiming: %w", cluster.ErrUnavailable), true},
		{nil, false},
	} {
		if d.StoreResult(step.err); d.StoreDown() != step.down {
			t.Fatalf("after %v: down %v, want %v", step.err, d.StoreDown(), step.down)
		}
	}
}

// listedStore lists no endpoint at once, and its watch never sends: the
// store's echo of this host's own changes never comes.
type listedStore struct{ quietStore }

func (listedStore) Endpoints(context.Context, string) (map[netip.Addr]cluster.Endpoint, int64, error) {
	return nil, 1, nil
}
func (listedStore) WatchEndpoints(ctx context.Context, _ string, _ int64) <-chan cluster.EndpointEvent {
	ch := make(chan cluster.EndpointEvent)
	go func() { <-ctx.Done(); close(ch) }()
	return ch
}

// fastPathOverlay records the local endpoints of each SetFastPath, and
// counts them.
type fastPathOverlay struct {
	fakeOverlay
	mu     sync.Mutex
	locals []string
	calls  int
}

func (o *fastPathOverlay) SetFastPath(_ string, locals []overlay.Local, _ []net.HardwareAddr) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.calls++
	o.locals = o.locals[:0]
	for _, l := range locals {
		o.locals = append(o.locals, l.Veth)
	}
	return nil
}

func (o *fastPathOverlay) has() (locals []string, calls int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.locals), o.calls
}

// The fast path follows this host's endpoints when they come and go, with
// no word from the store (here none ever comes): an endpoint that takes
// again the address (and so the MAC) of one removed while the store was
// down writes nothing there, and no echo comes.
func TestFastPathFollowsLocalEndpoints(t *testing.T) {
	d, _, _, _ := newTestDriver(t)
	g := &fakeGuard{}
	o := &fastPathOverlay{fakeOverlay: fakeOverlay{g: g}}
	d.SetCluster(&Cluster{Store: listedStore{}, Overlay: o, Pools: anyPools{}, Guard: g, Underlay: "eth0", UnderlayMTU: 1500})
	if err := d.CreateNetwork(clusterReq()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.DeleteNetwork(&network.DeleteNetworkRequest{NetworkID: nid}) })
	// waitLocals waits for a program after the calls-th with locals want.
	waitLocals := func(calls int, want ...string) int {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			got, n := o.has()
			if n > calls && slices.Equal(got, want) {
				return n
			}
			if time.Now().After(deadline) {
				t.Fatalf("after %d programs, the fast path's local endpoints are %v, want %v in a later one", n, got, want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	// The agent's first listing, before any endpoint; then an endpoint,
	// twice, the second taking the first's address.
	n := waitLocals(0)
	for _, addr := range []string{"198.18.7.5/24", "198.18.7.5/24"} {
		if _, err := d.CreateEndpoint(epReq(nid, eid, addr, "")); err != nil {
			t.Fatal(err)
		}
		n = waitLocals(n, hostVethName(eid))
		if err := d.DeleteEndpoint(&network.DeleteEndpointRequest{NetworkID: nid, EndpointID: eid}); err != nil {
			t.Fatal(err)
		}
		n = waitLocals(n)
	}
}
