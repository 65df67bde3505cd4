package ipam

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	api "github.com/docker/go-plugins-helpers/ipam"
)

func TestRequestPoolExplicit(t *testing.T) {
	held := []string{"198.18.0.0/16", "fd00:1::/64"}
	tests := []struct {
		name          string
		space         string
		pool, sub     string
		v6            bool
		wantID        string
		wantErr       error
		words         []string
		wantPoolField string
	}{
		{name: "v4 subnet", pool: "10.1.0.0/24", wantID: "ournet-local/10.1.0.0/24"},
		{name: "empty space means local", space: "-", pool: "10.1.0.0/24", wantID: "ournet-local/10.1.0.0/24"},
		{name: "global space", space: GlobalAddressSpace, pool: "10.1.0.0/24", wantID: "ournet-global/10.1.0.0/24"},
		{name: "with ip-range", pool: "10.1.0.0/24", sub: "10.1.0.128/25", wantID: "ournet-local/10.1.0.0/24/10.1.0.128/25"},
		{name: "ip-range equal to subnet is no range", pool: "10.1.0.0/24", sub: "10.1.0.0/24", wantID: "ournet-local/10.1.0.0/24"},
		{name: "v6 subnet", pool: "fd00:2::/64", v6: true, wantID: "ournet-local/fd00:2::/64"},
		{name: "v6 with range", pool: "fd00:2::/64", sub: "fd00:2::100/120", v6: true, wantID: "ournet-local/fd00:2::/64/fd00:2::100/120"},
		{name: "/31", pool: "10.1.0.6/31", wantID: "ournet-local/10.1.0.6/31"},
		{name: "/32 refused", pool: "10.1.0.7/32", wantErr: ErrInvalid, words: []string{"10.1.0.7/32", "single address", "at least a /31"}},
		{name: "/128 refused", pool: "fd00:1::7/128", v6: true, wantErr: ErrInvalid, words: []string{"at least a /127"}},
		{name: "everything refused", pool: "0.0.0.0/0", wantErr: ErrInvalid, words: []string{"0.0.0.0/0 is every IPv4 address"}},

		{name: "malformed", pool: "10.1.0.0/33", wantErr: ErrInvalid, words: []string{`subnet "10.1.0.0/33"`, "not a valid CIDR", "e.g."}},
		{name: "garbage", pool: "banana", wantErr: ErrInvalid, words: []string{"banana", "not a valid CIDR"}},
		{name: "bare address", pool: "10.1.0.0", wantErr: ErrInvalid, words: []string{"not a valid CIDR"}},
		{name: "host bits", pool: "10.1.0.5/24", wantErr: ErrInvalid, words: []string{"10.1.0.5/24", "host bits", "use 10.1.0.0/24"}},
		{name: "v6 host bits", pool: "fd00:3::1/64", v6: true, wantErr: ErrInvalid, words: []string{"host bits", "fd00:3::/64"}},
		{name: "mapped", pool: "::ffff:10.1.0.0/120", v6: true, wantErr: ErrInvalid, words: []string{"IPv4-mapped"}},
		{name: "family flag mismatch", pool: "10.1.0.0/24", v6: true, wantErr: ErrInvalid, words: []string{"IPv4 subnet", "IPv6 addresses"}},
		{name: "range without subnet", sub: "10.1.0.0/25", wantErr: ErrInvalid, words: []string{"ip-range", "--subnet"}},
		{name: "range outside", pool: "10.1.0.0/24", sub: "10.2.0.0/25", wantErr: ErrInvalid, words: []string{"10.2.0.0/25", "not inside subnet 10.1.0.0/24"}},
		{name: "range bigger", pool: "10.1.0.0/24", sub: "10.1.0.0/23", wantErr: ErrInvalid, words: []string{"not inside"}},
		{name: "range family", pool: "10.1.0.0/24", sub: "fd00::/120", wantErr: ErrInvalid, words: []string{"IPv6", "IPv4"}},
		{name: "range host bits", pool: "10.1.0.0/24", sub: "10.1.0.1/25", wantErr: ErrInvalid, words: []string{"ip-range 10.1.0.1/25", "host bits"}},
		{name: "range malformed", pool: "10.1.0.0/24", sub: "x", wantErr: ErrInvalid, words: []string{`ip-range "x"`}},
		{name: "unknown space", space: "LocalDefault", pool: "10.1.0.0/24", wantErr: ErrInvalid, words: []string{`"LocalDefault"`, LocalAddressSpace}},
		{name: "overlap inside held", pool: "198.18.1.0/24", wantErr: ErrOverlap,
			words: []string{"subnet 198.18.1.0/24 overlaps 198.18.0.0/16", "already uses", "choose a subnet that does not overlap"}},
		{name: "overlap containing held", pool: "198.0.0.0/8", wantErr: ErrOverlap, words: []string{"overlaps 198.18.0.0/16"}},
		{name: "same subnet", pool: "198.18.0.0/16", wantErr: ErrOverlap},
		{name: "same subnet other range", pool: "198.18.0.0/16", sub: "198.18.1.0/24", wantErr: ErrOverlap},
		{name: "overlap in other space", space: GlobalAddressSpace, pool: "198.18.0.0/24", wantErr: ErrOverlap},
		{name: "v6 overlap", pool: "fd00:1::/48", v6: true, wantErr: ErrOverlap, words: []string{"fd00:1::/64"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a := newMem(t, Config{DefaultPools: DefaultV4Pools()})
			for _, h := range held {
				mustPool(t, a, h, "", nil)
			}
			space := LocalAddressSpace
			switch tc.space {
			case "-":
				space = ""
			case "":
			default:
				space = tc.space
			}
			res, err := a.RequestPool(&api.RequestPoolRequest{AddressSpace: space, Pool: tc.pool, SubPool: tc.sub, V6: tc.v6})
			if tc.wantErr != nil {
				checkErr(t, err, tc.wantErr, tc.words...)
				if len(a.Pools()) != len(held) {
					t.Errorf("a failed request left %d pools, want %d", len(a.Pools()), len(held))
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if res.PoolID != tc.wantID || res.Pool != tc.pool {
				t.Errorf("got %q %q, want %q %q", res.PoolID, res.Pool, tc.wantID, tc.pool)
			}
			info := poolInfo(t, a, res.PoolID)
			if info.Pool.String() != tc.pool || info.V6 != tc.v6 {
				t.Errorf("snapshot %+v does not match the request", info)
			}
			if _, err := a.RequestPool(&api.RequestPoolRequest{AddressSpace: space, Pool: tc.pool, SubPool: tc.sub, V6: tc.v6}); !errors.Is(err, ErrOverlap) {
				t.Errorf("asking twice for %s: got %v, want an overlap error", tc.pool, err)
			}
		})
	}
}

func TestRequestPoolDefaults(t *testing.T) {
	v4 := []DefaultPool{{Base: pfx("10.9.0.0/22"), Size: 24}, {Base: pfx("10.50.0.0/24"), Size: 26}}
	tests := []struct {
		name    string
		cfg     Config
		held    []string
		v6      bool
		want    []string // successive answers while holding the previous ones
		wantErr error
		words   []string
	}{
		{name: "first subnets in order", cfg: Config{DefaultPools: v4},
			want: []string{"10.9.0.0/24", "10.9.1.0/24", "10.9.2.0/24", "10.9.3.0/24", "10.50.0.0/26", "10.50.0.64/26"}},
		{name: "skips held pools", cfg: Config{DefaultPools: v4}, held: []string{"10.9.0.0/23", "10.9.2.128/25"},
			want: []string{"10.9.3.0/24", "10.50.0.0/26"}},
		{name: "skips host networks", cfg: Config{DefaultPools: v4, HostNetworks: hosts("10.9.0.0/23", "10.9.2.7/32", "0.0.0.0/0", "fd00::/8")},
			want: []string{"10.9.3.0/24", "10.50.0.0/26"}},
		{name: "host network bigger than base", cfg: Config{DefaultPools: v4, HostNetworks: hosts("10.0.0.0/8")},
			wantErr: ErrNoFreeSubnet, words: []string{"every default IPv4 subnet", "10.9.0.0/22 split into /24", "--subnet", "DEFAULT_POOLS"}},
		{name: "host network listing fails", cfg: Config{DefaultPools: v4, HostNetworks: func() ([]netip.Prefix, error) {
			return nil, errors.New("netlink says no")
		}}, want: []string{"10.9.0.0/24"}},
		{name: "v6 default", cfg: Config{DefaultPoolsV6: DefaultV6Pools()}, v6: true,
			want: []string{"fd6f:7572:6e65::/64", "fd6f:7572:6e65:1::/64"}},
		{name: "v6 entry in v4 list is used for v6", cfg: Config{DefaultPools: append(v4, DefaultPool{Base: pfx("fd00:9::/63"), Size: 64})}, v6: true,
			want: []string{"fd00:9::/64", "fd00:9:0:1::/64"}},
		{name: "huge v6 base jumps over blockers", cfg: Config{DefaultPoolsV6: []DefaultPool{{Base: pfx("fd00::/16"), Size: 64}},
			HostNetworks: hosts("fd00::/17", "fd00:8000::/48")}, v6: true, want: []string{"fd00:8000:1::/64"}},
		{name: "v6 not configured", cfg: Config{DefaultPools: v4}, v6: true,
			wantErr: ErrNoFreeSubnet, words: []string{"no default IPv6 pools", "--subnet", "DEFAULT_POOLS_V6"}},
		{name: "v4 not configured", cfg: Config{}, wantErr: ErrNoFreeSubnet, words: []string{"no default IPv4 pools"}},
		{name: "top of the address space", cfg: Config{DefaultPools: []DefaultPool{{Base: pfx("255.255.255.248/29"), Size: 30}}},
			held: []string{"255.255.255.248/30"}, want: []string{"255.255.255.252/30"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a := newMem(t, tc.cfg)
			for _, h := range tc.held {
				mustPool(t, a, h, "", nil)
			}
			// Stepping subnet by subnet through 2^47 candidates would never end.
			timer := time.AfterFunc(10*time.Second, func() { panic("RequestPool takes too long: it does not jump over blockers") })
			defer timer.Stop()
			for _, want := range tc.want {
				res, err := a.RequestPool(&api.RequestPoolRequest{AddressSpace: LocalAddressSpace, V6: tc.v6})
				if err != nil {
					t.Fatalf("want %s: %v", want, err)
				}
				if res.Pool != want || res.PoolID != LocalAddressSpace+"/"+want {
					t.Fatalf("got %s (%s), want %s", res.Pool, res.PoolID, want)
				}
			}
			if tc.wantErr != nil {
				_, err := a.RequestPool(&api.RequestPoolRequest{AddressSpace: LocalAddressSpace, V6: tc.v6})
				checkErr(t, err, tc.wantErr, tc.words...)
			}
		})
	}
}

func TestDefaultPoolsExhaustedThenReleased(t *testing.T) {
	a := newMem(t, Config{DefaultPools: []DefaultPool{{Base: pfx("10.9.0.0/29"), Size: 30}}})
	var ids []string
	for range 2 {
		res, err := a.RequestPool(&api.RequestPoolRequest{AddressSpace: LocalAddressSpace})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, res.PoolID)
	}
	_, err := a.RequestPool(&api.RequestPoolRequest{AddressSpace: LocalAddressSpace})
	checkErr(t, err, ErrNoFreeSubnet, "docker network prune")
	if err := a.ReleasePool(&api.ReleasePoolRequest{PoolID: ids[0]}); err != nil {
		t.Fatal(err)
	}
	res, err := a.RequestPool(&api.RequestPoolRequest{AddressSpace: LocalAddressSpace})
	if err != nil || res.Pool != "10.9.0.0/30" {
		t.Fatalf("after a release got %v %v, want 10.9.0.0/30 again", res, err)
	}
}

func TestReleasePool(t *testing.T) {
	a := newMem(t, Config{})
	id := mustPool(t, a, "10.1.0.0/24", "", nil)
	mustAddr(t, a, id, "", gwOpts)
	mustAddr(t, a, id, "", nil)
	for _, unknown := range []string{"", "nope", "ournet-local/10.2.0.0/24"} {
		if err := a.ReleasePool(&api.ReleasePoolRequest{PoolID: unknown}); err != nil {
			t.Errorf("releasing unknown pool %q: %v", unknown, err)
		}
	}
	if len(a.Pools()) != 1 {
		t.Fatal("releasing unknown pools changed the held ones")
	}
	if err := a.ReleasePool(&api.ReleasePoolRequest{PoolID: id}); err != nil {
		t.Fatal(err)
	}
	if len(a.Pools()) != 0 {
		t.Fatal("pool still held after ReleasePool")
	}
	if err := a.ReleasePool(&api.ReleasePoolRequest{PoolID: id}); err != nil {
		t.Errorf("second release: %v", err)
	}
	_, err := reqAddr(a, id, "", nil)
	checkErr(t, err, ErrUnknownPool, id, "create it again")
	// The subnet is free again, with none of its old addresses.
	id = mustPool(t, a, "10.1.0.0/24", "", nil)
	if got := mustAddr(t, a, id, "", gwOpts); got != "10.1.0.1/24" {
		t.Errorf("gateway of the re-created pool is %s, want 10.1.0.1/24", got)
	}
}

func TestAddressSpacesAndCapabilities(t *testing.T) {
	a := newMem(t, Config{})
	sp, err := a.GetDefaultAddressSpaces()
	if err != nil || sp.LocalDefaultAddressSpace != LocalAddressSpace || sp.GlobalDefaultAddressSpace != GlobalAddressSpace {
		t.Errorf("GetDefaultAddressSpaces = %+v, %v", sp, err)
	}
	c, err := a.GetCapabilities()
	if err != nil || c.RequiresMACAddress {
		t.Errorf("GetCapabilities = %+v, %v", c, err)
	}
	if a.Capabilities() != (Capabilities{}) {
		t.Errorf("Capabilities = %+v, want neither MAC nor replay", a.Capabilities())
	}
}

func hosts(ps ...string) func() ([]netip.Prefix, error) {
	return func() ([]netip.Prefix, error) {
		var out []netip.Prefix
		for _, p := range ps {
			out = append(out, netip.MustParsePrefix(p))
		}
		return out, nil
	}
}
