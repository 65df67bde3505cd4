package ipam

import (
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
)

// fakeBlocks is the cluster store's block table in memory: one /26 per
// claim, compare-and-swap under a mutex, as etcd's transactions do.
type fakeBlocks struct {
	mu     sync.Mutex
	holder map[netip.Prefix]string
}

type hostBlocks struct {
	f    *fakeBlocks
	host string
}

func (h hostBlocks) Claim(_ string, subnet netip.Prefix, _ []netip.Prefix) (netip.Prefix, error) {
	h.f.mu.Lock()
	defer h.f.mu.Unlock()
	for a := subnet.Addr(); subnet.Contains(a); {
		b := netip.PrefixFrom(a, 26)
		if _, ok := h.f.holder[b]; !ok {
			h.f.holder[b] = h.host
			return b, nil
		}
		for i := 0; i < 64; i++ {
			a = a.Next()
		}
	}
	return netip.Prefix{}, fmt.Errorf("every block is held")
}

func (h hostBlocks) ClaimFor(_ string, subnet netip.Prefix, addr netip.Addr) (netip.Prefix, error) {
	h.f.mu.Lock()
	defer h.f.mu.Unlock()
	b, _ := addr.Prefix(26)
	if o, ok := h.f.holder[b]; ok && o != h.host {
		return netip.Prefix{}, fmt.Errorf("address %s is in address block %s, which host %s holds", addr, b, o)
	}
	h.f.holder[b] = h.host
	return b, nil
}

func clusterHost(t *testing.T, f *fakeBlocks, host string) (*Allocator, string) {
	a := newMem(t, Config{})
	a.SetBlocks(hostBlocks{f, host})
	id := mustPool(t, a, "198.18.208.0/22", "", nil)
	if gw := mustAddr(t, a, id, "", gwOpts); gw != "198.18.208.1/22" {
		t.Fatalf("%s: gateway %s, want 198.18.208.1/22 on every host", host, gw)
	}
	if err := a.Attach(netip.MustParsePrefix("198.18.208.0/22"), "app"); err != nil {
		t.Fatal(err)
	}
	return a, id
}

// Three hosts allocating at once never hand out the same address, and
// each hands out only addresses of its own blocks.
func TestClusterAddressesAreUnique(t *testing.T) {
	f := &fakeBlocks{holder: map[netip.Prefix]string{}}
	seen := map[string]string{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, host := range []string{"h1", "h2", "h3"} {
		a, id := clusterHost(t, f, host)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 70; i++ { // more than one block each
				got, err := reqAddr(a, id, "", nil)
				if err != nil {
					t.Errorf("%s: %v", host, err)
					return
				}
				mu.Lock()
				if other, dup := seen[got]; dup {
					t.Errorf("%s got %s, which %s has", host, got, other)
				}
				seen[got] = host
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(seen) != 210 {
		t.Fatalf("%d addresses, want 210", len(seen))
	}
	for addr, host := range seen {
		p := netip.MustParsePrefix(addr)
		b, _ := p.Addr().Prefix(26)
		if f.holder[b] != host {
			t.Errorf("%s handed out %s of block %s, held by %q", host, addr, b, f.holder[b])
		}
	}
}

// --ip of an address in another host's block is refused, naming the host;
// in a free block it takes the block.
func TestClusterStaticAddress(t *testing.T) {
	f := &fakeBlocks{holder: map[netip.Prefix]string{}}
	a1, id1 := clusterHost(t, f, "h1")
	a2, id2 := clusterHost(t, f, "h2")
	mustAddr(t, a1, id1, "", nil) // h1 takes 198.18.208.0/26
	if _, err := reqAddr(a2, id2, "198.18.208.5", nil); err == nil || !strings.Contains(err.Error(), "host h1") {
		t.Fatalf("--ip in h1's block on h2: %v, want a refusal naming h1", err)
	}
	if got := mustAddr(t, a2, id2, "198.18.208.200", nil); got != "198.18.208.200/22" {
		t.Fatalf("got %s", got)
	}
	if f.holder[netip.MustParsePrefix("198.18.208.192/26")] != "h2" {
		t.Fatalf("h2 did not take the block of its --ip: %v", f.holder)
	}
	// The next dynamic address on h2 comes from that block.
	if got := mustAddr(t, a2, id2, "", nil); got != "198.18.208.192/22" {
		t.Fatalf("next on h2: %s", got)
	}
}

func TestClusterAttachRefusals(t *testing.T) {
	f := &fakeBlocks{holder: map[netip.Prefix]string{}}
	a := newMem(t, Config{DefaultPools: []DefaultPool{{Base: netip.MustParsePrefix("198.19.0.0/16"), Size: 24}}})
	if err := a.Attach(netip.MustParsePrefix("198.18.210.0/24"), "app"); err == nil || !strings.Contains(err.Error(), "ETCD_ENDPOINTS") {
		t.Fatalf("without a store: %v", err)
	}
	a.SetBlocks(hostBlocks{f, "h1"})
	if err := a.Attach(netip.MustParsePrefix("198.18.210.0/24"), "app"); err == nil || !strings.Contains(err.Error(), "--ipam-driver ournet") {
		t.Fatalf("unknown subnet: %v", err)
	}
	id := mustPool(t, a, "", "", nil)
	pfx := a.Pools()[0].Pool
	_ = id
	if err := a.Attach(pfx, "app"); err == nil || !strings.Contains(err.Error(), "--subnet") {
		t.Fatalf("picked subnet: %v", err)
	}
	mustPool(t, a, "198.18.220.0/24", "198.18.220.0/25", nil)
	if err := a.Attach(netip.MustParsePrefix("198.18.220.0/24"), "app"); err == nil || !strings.Contains(err.Error(), "--ip-range") {
		t.Fatalf("ip-range: %v", err)
	}
}
