package ipam

import (
	"fmt"
	"path/filepath"
	"slices"
	"testing"

	api "github.com/docker/go-plugins-helpers/ipam"
)

// step is one RequestAddress (or release, with rel) and what it must give.
type step struct {
	addr    string
	gw      bool
	opts    map[string]string
	rel     bool
	want    string // CIDR answer; "" when wantErr
	wantErr error
	words   []string
}

func TestRequestAddress(t *testing.T) {
	serial := map[string]string{OptSerial: "true"}
	tests := []struct {
		name      string
		cfg       Config
		pool, sub string
		poolOpts  map[string]string
		steps     []step
	}{
		{name: "gateway first usable then containers", pool: "10.1.0.0/24", steps: []step{
			{gw: true, want: "10.1.0.1/24"},
			{want: "10.1.0.2/24"},
			{want: "10.1.0.3/24"},
		}},
		{name: "no gateway: first container gets .1", pool: "10.1.0.0/24", steps: []step{{want: "10.1.0.1/24"}}},
		{name: "explicit gateway", pool: "10.1.0.0/24", steps: []step{
			{gw: true, addr: "10.1.0.254", want: "10.1.0.254/24"},
			{want: "10.1.0.1/24"},
		}},
		{name: "address in CIDR form", pool: "10.1.0.0/24", steps: []step{{gw: true, addr: "10.1.0.9/24", want: "10.1.0.9/24"}}},
		{name: "gateway outside subnet", pool: "10.1.0.0/24", steps: []step{
			{gw: true, addr: "10.2.0.1", wantErr: ErrOutOfRange, words: []string{"10.2.0.1", "not in this network's subnet 10.1.0.0/24"}},
		}},
		{name: "gateway of other family", pool: "10.1.0.0/24", steps: []step{{gw: true, addr: "fd00::1", wantErr: ErrOutOfRange}}},
		{name: "network address", pool: "10.1.0.0/24", steps: []step{
			{gw: true, addr: "10.1.0.0", wantErr: ErrReserved, words: []string{"10.1.0.0 is the network address of 10.1.0.0/24", "choose another"}},
			{addr: "10.1.0.0", wantErr: ErrReserved},
		}},
		{name: "broadcast address", pool: "10.1.0.0/24", steps: []step{
			{addr: "10.1.0.255", wantErr: ErrReserved, words: []string{"broadcast address"}},
		}},
		{name: "v6 anycast address", pool: "fd00:1::/64", steps: []step{
			{gw: true, addr: "fd00:1::", wantErr: ErrReserved, words: []string{"subnet-router anycast"}},
			{gw: true, want: "fd00:1::1/64"},
			{want: "fd00:1::2/64"},
			{addr: "fd00:1::ffff:ffff:ffff:ffff", want: "fd00:1::ffff:ffff:ffff:ffff/64"}, // no broadcast in v6
		}},
		{name: "invalid address", pool: "10.1.0.0/24", steps: []step{
			{addr: "10.1.0.300", wantErr: ErrInvalid, words: []string{`"10.1.0.300" is not a valid IP address`}},
			{addr: "fe80::1%eth0", wantErr: ErrInvalid},
		}},
		{name: "static --ip and in-use errors", pool: "10.1.0.0/24", steps: []step{
			{gw: true, want: "10.1.0.1/24"},
			{addr: "10.1.0.50", want: "10.1.0.50/24"},
			{addr: "10.1.0.1", wantErr: ErrAddressInUse, words: []string{"10.1.0.1 is already in use in 10.1.0.0/24", "gateway", "leave --ip out"}},
			{addr: "10.1.0.50", wantErr: ErrAddressInUse, words: []string{"10.1.0.50", "--ip"}},
			{want: "10.1.0.2/24"},
			{addr: "10.1.0.2", wantErr: ErrAddressInUse, words: []string{"by a container"}},
			{gw: true, addr: "10.1.0.2", wantErr: ErrAddressInUse},
		}},
		{name: "aux addresses are never handed out", pool: "10.1.0.0/29", steps: []step{
			{gw: true, want: "10.1.0.1/29"},
			{addr: "10.1.0.2", want: "10.1.0.2/29"},
			{addr: "10.1.0.4", want: "10.1.0.4/29"},
			{want: "10.1.0.3/29"},
			{want: "10.1.0.5/29"},
			{want: "10.1.0.6/29"},
			{wantErr: ErrPoolFull, words: []string{"no free address is left in 10.1.0.0/29", "larger --subnet"}},
		}},
		{name: "ip-range: dynamic inside range, answer has subnet length", pool: "10.1.0.0/24", sub: "10.1.0.128/25", steps: []step{
			{gw: true, want: "10.1.0.128/24"}, // Docker takes the gateway from the range too
			{want: "10.1.0.129/24"},
			{addr: "10.1.0.5", want: "10.1.0.5/24"}, // --ip may be outside the range, inside the subnet
			{want: "10.1.0.130/24"},
		}},
		{name: "ip-range first address inside a bigger subnet is usable", pool: "10.1.0.0/16", sub: "10.1.5.0/24", steps: []step{
			{want: "10.1.5.0/16"},
			{want: "10.1.5.1/16"},
		}},
		{name: "ip-range at the top stops before broadcast", pool: "10.1.0.0/24", sub: "10.1.0.252/30", steps: []step{
			{want: "10.1.0.252/24"},
			{want: "10.1.0.253/24"},
			{want: "10.1.0.254/24"},
			{wantErr: ErrPoolFull, words: []string{"10.1.0.0/24 (ip-range 10.1.0.252/30)"}},
			{addr: "10.1.0.10", want: "10.1.0.10/24"}, // the subnet outside the range still has room
		}},
		{name: "/31 has no network or broadcast address", pool: "10.1.0.0/31", steps: []step{
			{want: "10.1.0.0/31"}, {want: "10.1.0.1/31"}, {wantErr: ErrPoolFull},
		}},
		{name: "v6 /127 holds the gateway and one container (no anycast address in a /127)", pool: "fd00:1::/127", steps: []step{
			{gw: true, want: "fd00:1::/127"}, {want: "fd00:1::1/127"}, {wantErr: ErrPoolFull},
		}},
		{name: "lowest free first, like Docker: a released address comes back", pool: "10.1.0.0/24", steps: []step{
			{gw: true, want: "10.1.0.1/24"},
			{want: "10.1.0.2/24"}, {want: "10.1.0.3/24"}, {want: "10.1.0.4/24"},
			{rel: true, addr: "10.1.0.3"},
			{want: "10.1.0.3/24"},
			{want: "10.1.0.5/24"},
		}},
		{name: "serial by network option", pool: "10.1.0.0/29", poolOpts: serial, steps: []step{
			{gw: true, want: "10.1.0.1/29"},
			{want: "10.1.0.2/29"}, {want: "10.1.0.3/29"}, {want: "10.1.0.4/29"},
			{rel: true, addr: "10.1.0.3"},
			{want: "10.1.0.5/29"},
			{want: "10.1.0.6/29"},
			{want: "10.1.0.3/29"}, // wrapped around
			{wantErr: ErrPoolFull},
			{rel: true, addr: "10.1.0.2"},
			{want: "10.1.0.2/29"},
		}},
		{name: "serial by plugin setting, request may opt out", cfg: Config{Serial: true}, pool: "10.1.0.0/24", steps: []step{
			{want: "10.1.0.1/24"}, {want: "10.1.0.2/24"},
			{rel: true, addr: "10.1.0.1"},
			{want: "10.1.0.3/24"},
			{opts: map[string]string{OptSerial: "false"}, want: "10.1.0.1/24"},
		}},
		{name: "serial by request option", pool: "10.1.0.0/24", steps: []step{
			{want: "10.1.0.1/24"}, {want: "10.1.0.2/24"},
			{rel: true, addr: "10.1.0.1"},
			{opts: serial, want: "10.1.0.3/24"},
			{want: "10.1.0.1/24"},
		}},
		{name: "gateway is lowest free even when serial", pool: "10.1.0.0/24", poolOpts: serial, steps: []step{
			{want: "10.1.0.1/24"}, {want: "10.1.0.2/24"},
			{rel: true, addr: "10.1.0.1"},
			{gw: true, want: "10.1.0.1/24"},
		}},
		{name: "releasing what is not held", pool: "10.1.0.0/24", steps: []step{
			{rel: true, addr: "10.1.0.9"},
			{rel: true, addr: "10.2.0.9"},
			{rel: true, addr: ""},
			{rel: true, addr: "nonsense", wantErr: ErrInvalid, words: []string{"nonsense"}},
			{want: "10.1.0.1/24"},
		}},
		{name: "v6 ip-range", pool: "fd00:1::/64", sub: "fd00:1::ff00/120", steps: []step{
			{gw: true, addr: "fd00:1::1", want: "fd00:1::1/64"},
			{want: "fd00:1::ff00/64"},
			{want: "fd00:1::ff01/64"},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a := newMem(t, tc.cfg)
			id := mustPool(t, a, tc.pool, tc.sub, tc.poolOpts)
			for i, s := range tc.steps {
				t.Run(fmt.Sprint(i), func(t *testing.T) {
					before := a.Pools()
					var got string
					var err error
					if s.rel {
						err = a.ReleaseAddress(&api.ReleaseAddressRequest{PoolID: id, Address: s.addr})
					} else {
						opts := s.opts
						if s.gw {
							opts = gwOpts
						}
						got, err = reqAddr(a, id, s.addr, opts)
					}
					if s.wantErr != nil {
						checkErr(t, err, s.wantErr, s.words...)
						if !slices.EqualFunc(before, a.Pools(), samePool) {
							t.Errorf("a failed call changed the pool")
						}
						return
					}
					if err != nil {
						t.Fatal(err)
					}
					if got != s.want {
						t.Fatalf("got %q, want %q", got, s.want)
					}
				})
			}
		})
	}
}

func samePool(x, y PoolInfo) bool {
	return x.ID == y.ID && x.Gateway == y.Gateway && slices.Equal(x.Allocated, y.Allocated)
}

func TestRequestAddressUnknownPool(t *testing.T) {
	a := newMem(t, Config{})
	_, err := reqAddr(a, "ournet-local/10.1.0.0/24", "", nil)
	checkErr(t, err, ErrUnknownPool, `"ournet-local/10.1.0.0/24"`, "remove the network and create it again")
	if err := a.ReleaseAddress(&api.ReleaseAddressRequest{PoolID: "ournet-local/10.1.0.0/24", Address: "10.1.0.1"}); err != nil {
		t.Errorf("releasing in an unknown pool: %v", err)
	}
}

func TestPoolsSnapshot(t *testing.T) {
	a := newMem(t, Config{})
	id := mustPool(t, a, "10.1.0.0/24", "10.1.0.128/25", nil)
	id6 := mustPool(t, a, "fd00:1::/64", "", nil)
	mustAddr(t, a, id, "10.1.0.9", nil)
	mustAddr(t, a, id, "", gwOpts)
	mustAddr(t, a, id, "", nil)
	p := poolInfo(t, a, id)
	if p.Gateway.String() != "10.1.0.128" || p.SubPool != pfx("10.1.0.128/25") || p.V6 || p.AddressSpace != LocalAddressSpace {
		t.Errorf("snapshot %+v", p)
	}
	want := []Allocation{
		{Addr: mustA("10.1.0.9"), Kind: KindStatic}, {Addr: mustA("10.1.0.128"), Kind: KindGateway}, {Addr: mustA("10.1.0.129"), Kind: KindDynamic},
	}
	if !slices.Equal(p.Allocated, want) {
		t.Errorf("allocated %v, want %v", p.Allocated, want)
	}
	p.Allocated[0].Kind = "scribbled" // a snapshot is a copy
	if poolInfo(t, a, id).Allocated[0].Kind != KindStatic {
		t.Error("changing a snapshot changed the allocator")
	}
	if ps := a.Pools(); len(ps) != 2 || ps[0].ID != id || ps[1].ID != id6 || !ps[1].V6 || ps[1].Gateway.IsValid() {
		t.Errorf("pools %+v", ps)
	}
	mustRelease(t, a, id, "10.1.0.128")
	if poolInfo(t, a, id).Gateway.IsValid() {
		t.Error("gateway still reported after its release")
	}
}

func TestBigV6PoolStaysCheap(t *testing.T) {
	a := newMem(t, Config{})
	id := mustPool(t, a, "fd00:1::/64", "", nil)
	seen := map[string]bool{}
	for range 3000 {
		got := mustAddr(t, a, id, "", nil)
		if seen[got] {
			t.Fatalf("%s handed out twice", got)
		}
		seen[got] = true
	}
	// A whole /64 range of dynamic addresses starting at the top.
	id2 := mustPool(t, a, "fd00:2::/48", "fd00:2:0:ffff::/64", map[string]string{OptSerial: "true"})
	mustAddr(t, a, id2, "fd00:2:0:ffff:ffff:ffff:ffff:ffff", nil)
	if got := mustAddr(t, a, id2, "", nil); got != "fd00:2:0:ffff::/48" {
		t.Errorf("got %s", got)
	}
}

// A replay of a call whose address was saved (its reply lost to a crash)
// gets that address again: the gateway stays the first address, an --ip
// is not refused as in use, a dynamic address is not handed out twice;
// and after a restart too. Another call gets another address.
func TestReplayedCallGetsItsAddress(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	st, a := start(t, path)
	id := mustPool(t, a, "198.18.60.0/24", "", nil)
	in := func(a *Allocator, call, addr string, opts map[string]string) string {
		t.Helper()
		res, err := a.RequestAddressIn(call, &api.RequestAddressRequest{PoolID: id, Address: addr, Options: opts})
		if err != nil {
			t.Fatalf("RequestAddressIn(%s, %q): %v", call, addr, err)
		}
		return res.Address
	}
	steps := []struct {
		call, addr string
		opts       map[string]string
		want       string
	}{
		{"c1", "", gwOpts, "198.18.60.1/24"},
		{"c2", "198.18.60.9", nil, "198.18.60.9/24"},
		{"c3", "", nil, "198.18.60.2/24"},
	}
	for _, s := range steps {
		if got := in(a, s.call, s.addr, s.opts); got != s.want {
			t.Fatalf("%s: %s, want %s", s.call, got, s.want)
		}
	}
	st.Close()
	st, a = start(t, path) // the plugin restarts, and dockerd's retries come
	defer st.Close()
	for _, s := range steps {
		if got := in(a, s.call, s.addr, s.opts); got != s.want {
			t.Fatalf("replay of %s: %s, want %s", s.call, got, s.want)
		}
	}
	if got := in(a, "c4", "", nil); got != "198.18.60.3/24" {
		t.Fatalf("another call: %s, want 198.18.60.3/24", got)
	}
	if n := len(a.pools[id].Addrs); n != 4 {
		t.Fatalf("%d addresses held, want 4: %+v", n, a.pools[id].Addrs)
	}
}
