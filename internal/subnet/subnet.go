// Package subnet decides whether a prefix can be a container network's
// subnet at all, whichever IPAM driver chose it: pure logic, no kernel.
package subnet

import (
	"fmt"
	"net/netip"
)

// Check refuses, with a message that names the subnet and says what to do,
// a prefix that no container network can use:
//   - the default route (0.0.0.0/0, ::/0) or any prefix that strictly covers
//     one of the host's routes (hostRoutes, without the default route): its
//     masquerade rule would rewrite the host's own traffic and other
//     networks' (ournet's networks' own subnets are checked apart, and named);
//   - loopback, link-local, multicast and unspecified ranges;
//   - a /32 (IPv6 /128), which holds no container besides its gateway.
//
// A /31 (IPv6 /127) is a real network on Docker 26+ (RFC 3021): the gateway
// and one container.
func Check(p netip.Prefix, hostRoutes Routes) error {
	if err := Usable(p); err != nil {
		return err
	}
	p = p.Masked()
	all, fam := "0.0.0.0/0", "IPv4"
	if p.Addr().Is6() {
		all, fam = "::/0", "IPv6"
	}
	if hostRoutes == nil {
		return nil
	}
	if r, ok := hostRoutes.Inside(p); ok {
		return fmt.Errorf("subnet %s covers %s, a route of this host: containers would capture the host's traffic for it and its masquerade rule would rewrite it; give a subnet that leaves %s out (%s is the whole %s space)", p, r, r, all, fam)
	}
	return nil
}

// Usable is Check without the host's routes: what no host can use.
func Usable(p netip.Prefix) error {
	p = p.Masked()
	a := p.Addr()
	fam := "IPv4"
	if a.Is6() {
		fam = "IPv6"
	}
	switch {
	case p.Bits() == 0:
		return fmt.Errorf("subnet %s is every %s address: its masquerade rule would rewrite all of the host's traffic; give a subnet of its own, such as %s", p, fam, example(a.Is6()))
	case a.IsLoopback() || a.IsMulticast() || a.IsLinkLocalUnicast() || a.IsUnspecified() || (a.Is4() && a.As4()[0] == 0):
		return fmt.Errorf("subnet %s is not a unicast range a network can use (loopback, link-local, multicast or unspecified); give one such as %s", p, example(a.Is6()))
	case p.Bits() == a.BitLen():
		return fmt.Errorf("subnet %s holds a single address, which leaves none for a container besides the gateway; give at least a /%d (the gateway and one container)", p, a.BitLen()-1)
	}
	return nil
}

func example(v6 bool) string {
	if v6 {
		return "fd00:1::/64"
	}
	return "10.1.0.0/24"
}
