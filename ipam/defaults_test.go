package ipam

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func TestParseDefaultPools(t *testing.T) {
	tests := []struct {
		in    string
		want  []DefaultPool
		words []string // error words; nil when success
	}{
		{in: "base=10.10.0.0/16,size=24", want: []DefaultPool{{pfx("10.10.0.0/16"), 24}}},
		{in: " base = 10.10.0.0/16 , size = 24 ; BASE=fd00:1::/48,SIZE=64 ;", want: []DefaultPool{{pfx("10.10.0.0/16"), 24}, {pfx("fd00:1::/48"), 64}}},
		{in: "size=24,base=10.10.0.0/16;base=10.11.0.0/16,size=16", want: []DefaultPool{{pfx("10.10.0.0/16"), 24}, {pfx("10.11.0.0/16"), 16}}},

		{in: "", words: []string{"no default pool given", "base=10.10.0.0/16,size=24"}},
		{in: " ; ", words: []string{"no default pool given"}},
		{in: "base=10.10.0.0/16", words: []string{`"base=10.10.0.0/16"`, "size is missing", "base=10.10.0.0/16,size=24"}},
		{in: "size=24", words: []string{"base is missing"}},
		{in: "base=10.10.0.0,size=24", words: []string{`base "10.10.0.0" is not a CIDR prefix`}},
		{in: "base=10.10.0.0/16,size=big", words: []string{`size "big" is not a prefix length`}},
		{in: "base=10.10.0.1/16,size=24", words: []string{"host bits", "did you mean 10.10.0.0/16"}},
		{in: "base=10.10.0.0/16,size=8", words: []string{"size /8 is shorter than base 10.10.0.0/16"}},
		{in: "base=10.10.0.0/16,size=31", words: []string{"at most 30"}},
		{in: "base=fd00::/48,size=127", words: []string{"at most 126"}},
		{in: "base=10.10.0.0/16,size=24,color=red", words: []string{`unknown key "color"`}},
		{in: "base=10.10.0.0/16,size=24,size=25", words: []string{"size is given twice"}},
		{in: "base=10.10.0.0/16,size=24,base=10.11.0.0/16", words: []string{"base is given twice"}},
		{in: "base=10.10.0.0/16 size=24", words: []string{"is not a CIDR prefix"}},
		{in: "base=10.10.0.0/16,24", words: []string{`"24" is not key=value`}},
		{in: "base=10.10.0.0/16,size=24;base=10.10.128.0/17,size=24", words: []string{"overlaps base 10.10.0.0/16", "list each range once"}},
		{in: "base=::ffff:10.0.0.0/104,size=120", words: []string{"IPv4-mapped"}},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseDefaultPools(tc.in)
			if tc.words == nil {
				if err != nil || !slices.Equal(got, tc.want) {
					t.Fatalf("got %v, %v; want %v", got, err, tc.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("got %v, want an error", got)
			}
			for _, w := range tc.words {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestBuiltinDefaults(t *testing.T) {
	docker := []string{"172.17.0.0/16", "172.18.0.0/15", "172.20.0.0/14", "172.24.0.0/13", "192.168.0.0/16", "10.0.0.0/16"}
	for _, d := range append(DefaultV4Pools(), DefaultV6Pools()...) {
		if err := d.validate(); err != nil {
			t.Errorf("%v: %v", d, err)
		}
		for _, p := range docker {
			if d.Base.Overlaps(pfx(p)) {
				t.Errorf("default %v overlaps Docker's own default %s", d, p)
			}
		}
	}
	if !DefaultV6Pools()[0].Base.Addr().IsPrivate() {
		t.Error("the IPv6 default is not a unique local address")
	}
}

func TestNewRejectsBadDefaults(t *testing.T) {
	for _, d := range []DefaultPool{
		{Base: pfx("10.0.0.1/16"), Size: 24},
		{Base: pfx("10.0.0.0/16"), Size: 12},
		{Size: 24},
	} {
		if _, err := New(Config{DefaultPoolsV6: []DefaultPool{d}}, nil); !errors.Is(err, ErrInvalid) {
			t.Errorf("New with default %v: got %v, want ErrInvalid", d, err)
		}
	}
}

func TestAddrArithmetic(t *testing.T) {
	for _, tc := range []struct{ p, last string }{
		{"10.1.0.0/24", "10.1.0.255"},
		{"0.0.0.0/0", "255.255.255.255"},
		{"10.1.0.7/32", "10.1.0.7"},
		{"fd00::/64", "fd00::ffff:ffff:ffff:ffff"},
		{"::/0", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"},
		{"fd00::/72", "fd00::ff:ffff:ffff:ffff"},
	} {
		if got := lastAddr(pfx(tc.p)); got.String() != tc.last {
			t.Errorf("lastAddr(%s) = %s, want %s", tc.p, got, tc.last)
		}
	}
	if _, ok := afterPrefix(pfx("255.255.255.0/24")); ok {
		t.Error("nothing follows 255.255.255.0/24")
	}
	if _, ok := afterPrefix(pfx("ffff::/16")); ok {
		t.Error("nothing follows ffff::/16")
	}
	if a, ok := afterPrefix(pfx("fd00::/64")); !ok || a.toAddr(false) != netip.MustParseAddr("fd00:0:0:1::") {
		t.Errorf("after fd00::/64 = %v %v", a.toAddr(false), ok)
	}
	if a, ok := afterPrefix(pfx("10.0.0.0/8")); !ok || a.toAddr(true) != netip.MustParseAddr("11.0.0.0") {
		t.Errorf("after 10.0.0.0/8 = %v %v", a.toAddr(true), ok)
	}
	u := fromAddr(netip.MustParseAddr("::ffff:ffff:ffff:ffff"))
	if v, ok := u.add(u128{lo: 1}, false); !ok || v.toAddr(false) != netip.MustParseAddr("0:0:0:1::") {
		t.Errorf("carry into the high half: %v", v.toAddr(false))
	}
}
