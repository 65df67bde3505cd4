package ipam

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"sync"
	"testing"

	api "github.com/docker/go-plugins-helpers/ipam"
)

func TestConcurrentAddresses(t *testing.T) {
	for _, withStore := range []bool{false, true} {
		t.Run(fmt.Sprintf("store=%v", withStore), func(t *testing.T) {
			a := newMem(t, Config{})
			if withStore {
				st := openStore(t, filepath.Join(t.TempDir(), "state.db"))
				defer st.Close()
				var err error
				if a, err = New(Config{}, st); err != nil {
					t.Fatal(err)
				}
			}
			id := mustPool(t, a, "10.1.0.0/24", "", nil)
			const n = 50
			got := make([]string, n)
			errs := make([]error, n)
			var wg sync.WaitGroup
			start := make(chan struct{})
			for i := range n {
				wg.Go(func() {
					<-start
					got[i], errs[i] = reqAddr(a, id, "", nil)
				})
			}
			close(start)
			wg.Wait()
			seen := map[string]bool{}
			for i := range n {
				if errs[i] != nil {
					t.Fatalf("goroutine %d: %v", i, errs[i])
				}
				p, err := netip.ParsePrefix(got[i])
				if err != nil || !pfx("10.1.0.0/24").Contains(p.Addr()) || p.Bits() != 24 {
					t.Errorf("goroutine %d got %q", i, got[i])
				}
				if seen[got[i]] {
					t.Errorf("%s handed out twice", got[i])
				}
				seen[got[i]] = true
			}
			if len(poolInfo(t, a, id).Allocated) != n {
				t.Errorf("pool holds %d addresses, want %d", len(poolInfo(t, a, id).Allocated), n)
			}
		})
	}
}

func TestConcurrentChurn(t *testing.T) {
	a := newMem(t, Config{DefaultPools: DefaultV4Pools()})
	id := mustPool(t, a, "10.1.0.0/26", "", nil) // 62 addresses for 8 workers x 5
	var mu sync.Mutex
	live := map[string]int{}
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for round := range 200 {
				var mine []string
				for range 5 {
					got, err := reqAddr(a, id, "", nil)
					if err != nil {
						t.Errorf("worker %d: %v", w, err)
						return
					}
					mu.Lock()
					if holder, ok := live[got]; ok {
						t.Errorf("%s given to worker %d while worker %d holds it", got, w, holder)
					}
					live[got] = w
					mu.Unlock()
					mine = append(mine, got)
				}
				for _, m := range mine {
					mu.Lock()
					delete(live, m) // forget before releasing: someone may get it at once
					mu.Unlock()
					p := netip.MustParsePrefix(m)
					if err := a.ReleaseAddress(&api.ReleaseAddressRequest{PoolID: id, Address: p.Addr().String()}); err != nil {
						t.Errorf("release: %v", err)
					}
				}
				if round%50 == 0 {
					_ = a.Pools()
				}
			}
		})
	}
	wg.Wait()
	if n := len(poolInfo(t, a, id).Allocated); n != 0 {
		t.Errorf("%d addresses left after everyone released", n)
	}
}

func TestConcurrentDefaultPools(t *testing.T) {
	a := newMem(t, Config{DefaultPools: DefaultV4Pools(), HostNetworks: hosts("10.200.3.0/24")})
	const n = 20
	got := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			res, err := a.RequestPool(&api.RequestPoolRequest{AddressSpace: LocalAddressSpace})
			if err != nil {
				t.Error(err)
				return
			}
			got[i] = res.Pool
		})
	}
	wg.Wait()
	seen := map[string]bool{}
	for _, g := range got {
		if seen[g] || g == "10.200.3.0/24" {
			t.Errorf("pool %s given twice or clashes with the host", g)
		}
		seen[g] = true
	}
}
