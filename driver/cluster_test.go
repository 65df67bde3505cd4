package driver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"

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
