package subnet

import (
	"net/netip"
	"strings"
	"testing"
)

func TestCheck(t *testing.T) {
	host := []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24"), netip.MustParsePrefix("2001:db8:51::/64"),
		netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("fe80::/64")}
	for _, tc := range []struct{ subnet, err string }{
		{"198.18.1.0/24", ""},
		{"198.18.1.0/31", ""},
		{"2001:db8:1::/127", ""},
		{"2001:db8:1::/64", ""},
		{"198.51.100.0/24", ""}, // the same as a route: not covering it (the bridge driver allows this too)
		{"0.0.0.0/0", "subnet 0.0.0.0/0 is every IPv4 address"},
		{"::/0", "subnet ::/0 is every IPv6 address"},
		{"198.18.1.7/32", "subnet 198.18.1.7/32 holds a single address"},
		{"2001:db8::7/128", "give at least a /127"},
		{"198.51.0.0/16", "subnet 198.51.0.0/16 covers 198.51.100.0/24, a route of this host"},
		{"2001:db8::/32", "covers 2001:db8:51::/64"},
		{"127.0.0.0/8", "not a unicast range"},
		{"169.254.0.0/16", "not a unicast range"},
		{"224.0.0.0/4", "not a unicast range"},
		{"fe80::/10", "not a unicast range"},
	} {
		idx := NewIndex()
		for _, h := range host {
			idx.Add(h)
		}
		for _, routes := range []Routes{List(host), idx} {
			err := Check(netip.MustParsePrefix(tc.subnet), routes)
			if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
				t.Errorf("Check(%s) with %T = %v, want %q", tc.subnet, routes, err, tc.err)
			}
		}
	}
}
