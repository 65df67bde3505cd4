package main

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	api "github.com/docker/go-plugins-helpers/ipam"

	"github.com/ournet/ournet/internal/cluster"
)

// slowStore is a cluster store without quorum: each claim fails, unavailable,
// after wait; with up, it gives blocks.
type slowStore struct {
	wait  time.Duration
	up    atomic.Bool
	calls atomic.Int32
	next  atomic.Int32
}

func (s *slowStore) ClaimBlock(_ context.Context, name string, subnet netip.Prefix, _ ...netip.Prefix) (netip.Prefix, error) {
	s.calls.Add(1)
	if s.up.Load() {
		b := subnet.Addr().As4()
		b[2] += byte(s.next.Add(1) - 1)
		return netip.PrefixFrom(netip.AddrFrom4(b), 26), nil
	}
	time.Sleep(s.wait)
	return netip.Prefix{}, fmt.Errorf("ournet: claiming an address block of %s: cluster store (etcd at test): %w (no leader)", name, cluster.ErrUnavailable)
}

func (s *slowStore) ClaimBlockFor(ctx context.Context, name string, subnet netip.Prefix, _ netip.Addr) (netip.Prefix, error) {
	return s.ClaimBlock(ctx, name, subnet)
}

// gate stands in for the driver's view of the store (driver.StoreDown).
type gate struct{ down atomic.Bool }

func (g *gate) StoreDown() bool { return g.down.Load() }
func (g *gate) StoreResult(err error) {
	g.down.Store(err != nil)
}

// Parallel first containers of a cluster network on a host, with the store
// without quorum: the first claim waits on the store, the others are
// refused at once instead of queueing behind it under the IPAM's lock
// (seven at the store's 5 s each went past dockerd's 30 s), and so is an
// unrelated network's release; once the store answers, claims go through.
func TestClaimsDoNotQueueOnADownStore(t *testing.T) {
	a := newAllocator(t)
	cs, g := &slowStore{wait: 500 * time.Millisecond}, &gate{}
	a.SetBlocks(blocks{s: cs, gate: g})
	pool := func(subnet string) string {
		t.Helper()
		p, err := a.RequestPool(&api.RequestPoolRequest{Pool: subnet})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := a.RequestAddress(&api.RequestAddressRequest{PoolID: p.PoolID, Options: map[string]string{"RequestAddressType": "com.docker.network.gateway"}}); err != nil {
			t.Fatal(err)
		}
		return p.PoolID
	}
	app, local := pool("198.18.208.0/22"), pool("198.18.212.0/24")
	if err := a.Attach(netip.MustParsePrefix("198.18.208.0/22"), "app"); err != nil {
		t.Fatal(err)
	}
	held, err := a.RequestAddress(&api.RequestAddressRequest{PoolID: local})
	if err != nil {
		t.Fatal(err)
	}

	var wg sync.WaitGroup
	var mu sync.Mutex
	var slowest time.Duration
	var refused int
	for range 7 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			_, err := a.RequestAddress(&api.RequestAddressRequest{PoolID: app})
			mu.Lock()
			defer mu.Unlock()
			slowest = max(slowest, time.Since(start))
			if err != nil {
				refused++
			}
		}()
	}
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	if err := a.ReleaseAddress(&api.ReleaseAddressRequest{PoolID: local, Address: held.Address}); err != nil {
		t.Fatal(err)
	}
	release := time.Since(start)
	wg.Wait()
	t.Logf("one claim %s; the slowest RequestAddress %s; an unrelated ReleaseAddress %s; %d store calls", cs.wait, slowest, release, cs.calls.Load())
	if refused != 7 {
		t.Fatalf("%d of 7 RequestAddress refused without quorum", refused)
	}
	if slowest > 2*cs.wait || release > 2*cs.wait || cs.calls.Load() != 1 {
		t.Fatalf("calls queued on the store: the slowest RequestAddress took %s and an unrelated release %s (one claim %s), the store was asked %d times",
			slowest, release, cs.wait, cs.calls.Load())
	}

	cs.up.Store(true)
	g.down.Store(false) // the driver's sync found it answering
	got, err := a.RequestAddress(&api.RequestAddressRequest{PoolID: app})
	if err != nil {
		t.Fatalf("with the store back: %v", err)
	}
	t.Logf("with the store back: %s", got.Address)
}
