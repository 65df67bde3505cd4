package ipam

import (
	"errors"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	api "github.com/docker/go-plugins-helpers/ipam"

	"github.com/ournet/ournet/internal/store"
)

// start is a plugin start on the state file at path: the store opened
// and an allocator made on what it holds. The caller closes the store.
func start(t *testing.T, path string) (*store.Store, *Allocator) {
	t.Helper()
	st := openStore(t, path)
	a, err := New(Config{}, st)
	if err != nil {
		t.Fatal(err)
	}
	return st, a
}

func openStore(t *testing.T, path string) *store.Store {
	t.Helper()
	st, err := store.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func TestPersistence(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	cfg := Config{DefaultPools: DefaultV4Pools(), DefaultPoolsV6: DefaultV6Pools()}

	st := openStore(t, path)
	a, err := New(cfg, st)
	if err != nil {
		t.Fatal(err)
	}
	id := mustPool(t, a, "10.1.0.0/24", "10.1.0.0/26", map[string]string{OptSerial: "true"})
	res, err := a.RequestPool(&api.RequestPoolRequest{AddressSpace: LocalAddressSpace, V6: true})
	if err != nil {
		t.Fatal(err)
	}
	id6 := res.PoolID
	gone := mustPool(t, a, "10.2.0.0/24", "", nil)
	mustAddr(t, a, id, "", gwOpts)
	mustAddr(t, a, id, "10.1.0.200", nil)
	var held []string
	for range 5 {
		held = append(held, mustAddr(t, a, id, "", nil))
	}
	mustRelease(t, a, id, strings.TrimSuffix(held[4], "/24")) // the serial cursor stays past it
	held = held[:4]
	mustAddr(t, a, id6, "", gwOpts)
	v6addr := mustAddr(t, a, id6, "", nil)
	if err := a.ReleasePool(&api.ReleasePoolRequest{PoolID: gone}); err != nil {
		t.Fatal(err)
	}
	before := a.Pools()
	st.Close()

	st = openStore(t, path)
	defer st.Close()
	b, err := New(cfg, st)
	if err != nil {
		t.Fatal(err)
	}
	if after := b.Pools(); !reflect.DeepEqual(before, after) {
		t.Fatalf("reloaded state differs:\nbefore %+v\nafter  %+v", before, after)
	}

	// Nothing handed out before is handed out again.
	taken := map[string]bool{"10.1.0.1/24": true, "10.1.0.200/24": true}
	for _, h := range held {
		taken[h] = true
	}
	got := mustAddr(t, b, id, "", nil)
	if taken[got] {
		t.Fatalf("%s handed out twice across a restart", got)
	}
	if got != "10.1.0.7/24" {
		t.Errorf("serial cursor lost: got %s, want 10.1.0.7/24", got)
	}
	if _, err := reqAddr(b, id, "10.1.0.200", nil); !errors.Is(err, ErrAddressInUse) {
		t.Errorf("static address forgotten: %v", err)
	}
	if got6 := mustAddr(t, b, id6, "", nil); got6 == v6addr {
		t.Errorf("%s handed out twice across a restart", got6)
	}
	if _, err := b.RequestPool(&api.RequestPoolRequest{AddressSpace: LocalAddressSpace, Pool: "10.1.0.0/16"}); !errors.Is(err, ErrOverlap) {
		t.Errorf("held pool forgotten: %v", err)
	}
	mustPool(t, b, "10.2.0.0/24", "", nil) // released before the restart: free
	res, err = b.RequestPool(&api.RequestPoolRequest{AddressSpace: LocalAddressSpace, V6: true})
	if err != nil || res.PoolID == id6 {
		t.Errorf("default v6 pool %v %v: want a different one than %s", res, err, id6)
	}
}

// A write that fails must change nothing, in memory or on disk.
func TestFailedWriteRollsBack(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	st := openStore(t, path)
	a, err := New(Config{DefaultPools: DefaultV4Pools()}, st)
	if err != nil {
		t.Fatal(err)
	}
	id := mustPool(t, a, "10.1.0.0/24", "", nil)
	mustAddr(t, a, id, "", gwOpts)
	mustAddr(t, a, id, "", nil)
	before := a.Pools()
	st.Close() // every write now fails

	_, err = reqAddr(a, id, "", nil)
	checkErr(t, err, ErrNotSaved, "state file", "nothing was changed")
	_, err = reqAddr(a, id, "10.1.0.50", nil)
	checkErr(t, err, ErrNotSaved)
	_, err = a.RequestPool(&api.RequestPoolRequest{AddressSpace: LocalAddressSpace, Pool: "10.3.0.0/24"})
	checkErr(t, err, ErrNotSaved)
	_, err = a.RequestPool(&api.RequestPoolRequest{AddressSpace: LocalAddressSpace})
	checkErr(t, err, ErrNotSaved)
	if after := a.Pools(); !reflect.DeepEqual(before, after) {
		t.Fatalf("failed writes changed memory:\nbefore %+v\nafter  %+v", before, after)
	}
	// Releases always take effect (dockerd never retries one, and a refused
	// one leaks the address or the subnet): kept in memory until Flush.
	if err := a.ReleaseAddress(&api.ReleaseAddressRequest{PoolID: id, Address: "10.1.0.2"}); err != nil {
		t.Fatalf("release with the state file failing: %v", err)
	}
	if n := a.Unsaved(); n != 1 {
		t.Fatalf("unsaved releases = %d, want 1", n)
	}
	if _, err := reqAddr(a, id, "10.1.0.2", nil); !errors.Is(err, ErrNotSaved) {
		t.Fatalf("the released address is not free in memory, or the request saved: %v", err)
	}

	st, b := start(t, path)
	defer st.Close()
	if after := b.Pools(); !reflect.DeepEqual(before, after) {
		t.Fatalf("disk differs from memory:\nmemory %+v\ndisk   %+v", before, after)
	}
}

func TestLoadDamaged(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	st := openStore(t, path)
	defer st.Close()
	put := func(key string, v any) {
		t.Helper()
		if err := st.Put(Bucket, key, v); err != nil {
			t.Fatal(err)
		}
	}

	// Repairable: unsorted, duplicated and stray addresses.
	put("ournet-local/10.1.0.0/24", map[string]any{
		"pool": "10.1.0.0/24",
		"addresses": []map[string]string{
			{"addr": "10.1.0.9", "kind": "dynamic"}, {"addr": "10.1.0.2", "kind": "gateway"},
			{"addr": "10.1.0.9", "kind": "dynamic"}, {"addr": "10.7.0.1", "kind": "dynamic"},
		},
	})
	a, err := New(Config{}, st)
	if err != nil {
		t.Fatal(err)
	}
	p := poolInfo(t, a, "ournet-local/10.1.0.0/24")
	if got := addrsOf(p); !reflect.DeepEqual(got, []string{"10.1.0.2", "10.1.0.9"}) || p.Gateway.String() != "10.1.0.2" {
		t.Errorf("repaired addresses %v gateway %v", got, p.Gateway)
	}

	// Not repairable: the plugin must not start on a guess.
	put("ournet-local/bad", map[string]any{"pool": "10.1.0.5/24"})
	if _, err := New(Config{}, st); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "damaged") {
		t.Errorf("pool with host bits: got %v", err)
	}
	put("ournet-local/bad", "not a record")
	if _, err := New(Config{}, st); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "damaged") {
		t.Errorf("undecodable record: got %v", err)
	}
}

// A pool answered but never used (no RequestAddress: the plugin crashed
// before dockerd got the answer) is released at the next start; a pool
// whose gateway was requested is kept.
func TestPendingPoolReleasedAtStart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	st, a := start(t, path)
	used := mustPool(t, a, "10.1.0.0/24", "", nil)
	mustAddr(t, a, used, "", gwOpts)
	mustPool(t, a, "10.2.0.0/24", "", nil) // never used
	st.Close()

	st, b := start(t, path)
	defer st.Close()
	pools := b.Pools()
	if len(pools) != 1 || pools[0].ID != used {
		t.Fatalf("pools after restart = %+v, want only %s", pools, used)
	}
	mustPool(t, b, "10.2.0.0/24", "", nil) // free again
}
