package firewall

import (
	"maps"
	"net/netip"
	"slices"

	"github.com/ournet/ournet/internal/iptables"
)

// Network is what the firewall needs to know about one network.
type Network struct {
	ID       string
	Bridge   string
	Subnets  []netip.Prefix // both families; each family's rules use its own
	ICC      bool
	Internal bool
	// Masquerade per family: off for a family whose gateway mode is routed
	// or when enable_ip_masquerade is false.
	Masquerade map[iptables.Family]bool
	// Unprotected per family (gateway mode nat-unprotected): anything that
	// does not come from a container bridge may reach any port.
	Unprotected map[iptables.Family]bool
	// Routed per family (gateway mode routed): ICMP that does not come
	// from a container bridge may reach the containers, and so may the
	// ports in Open from anywhere but the network's own bridge (where icc
	// decides), as with the bridge driver.
	Routed map[iptables.Family]bool
	// Open are the ports the network's containers publish at their own
	// addresses: on a routed family (no host port, no DNAT), open to
	// direct routing from anywhere but the network's own bridge; on any
	// family, open from the Trusted interfaces. Those of a family that is
	// not routed, when there are no Trusted interfaces, are ignored. In a
	// fixed order (same compares them in order).
	Open []Opening
	// Trusted are the host's interfaces (trusted_host_interfaces) from
	// which the Open ports are reached directly at the containers'
	// addresses, as from the bridge itself. Ignored on an internal
	// network. In a fixed order.
	Trusted []string
}

// Opening is one container port open to direct routing.
type Opening struct {
	Proto uint8 // an IP protocol number: TCP, UDP, SCTP
	Addr  netip.Addr
	Port  uint16
}

func (n Network) subnets(f iptables.Family) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range n.Subnets {
		if p.Addr().Is6() == (f == iptables.IPv6) {
			out = append(out, p.Masked())
		}
	}
	return out
}

// same reports whether n and o make the same rules.
func (n Network) same(o Network) bool {
	return n.ID == o.ID && n.Bridge == o.Bridge && slices.Equal(n.Subnets, o.Subnets) &&
		n.ICC == o.ICC && n.Internal == o.Internal &&
		maps.Equal(n.Masquerade, o.Masquerade) && maps.Equal(n.Unprotected, o.Unprotected) &&
		maps.Equal(n.Routed, o.Routed) && slices.Equal(n.Open, o.Open) && slices.Equal(n.Trusted, o.Trusted)
}
