package firewall

import (
	"net/netip"

	log "github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// closedOpenings are the openings among have (a network's elements as
// read) that want no longer holds: their flows are forgotten once the
// change is in. TCP is left alone, as with published ports: its entries
// die with their connections, and a revoke (the container's gateway
// moving) does not cut them.
func closedOpenings(have map[string]elem, want []elem) []Opening {
	keep := map[string]bool{}
	for _, e := range want {
		keep[e.id()] = true
	}
	var out []Opening
	for id, e := range have {
		if keep[id] || (e.set != setOpen4 && e.set != setOpen6) {
			continue
		}
		if o, ok := openingOf(e.key); ok && o.Proto != unix.IPPROTO_TCP {
			out = append(out, o)
		}
	}
	return out
}

// openingOf reads an open4/open6 key back (openElems writes it: the
// bridge's name, the address, then protocol and port padded to 4 bytes).
func openingOf(key []byte) (Opening, bool) {
	if len(key) < unix.IFNAMSIZ+12 {
		return Opening{}, false
	}
	key = key[unix.IFNAMSIZ:]
	n := len(key) - 8
	a, ok := netip.AddrFromSlice(key[:n])
	if !ok || (n != 4 && n != 16) {
		return Opening{}, false
	}
	return Opening{Proto: key[n], Addr: a, Port: uint16(key[n+4])<<8 | uint16(key[n+5])}, true
}

// openFlow matches the conntrack entries of flows to one opening.
type openFlow Opening

func (o openFlow) MatchConntrackFlow(f *netlink.ConntrackFlow) bool {
	fw := f.Forward
	if fw.Protocol != o.Proto || !fw.DstIP.Equal(o.Addr.AsSlice()) {
		return false
	}
	// The library reads the ports of TCP and UDP entries only: an SCTP
	// entry's are 0, and every SCTP flow to the address goes.
	return o.Proto == unix.IPPROTO_SCTP || fw.DstPort == o.Port
}

// forgetOpenings deletes the conntrack entries of flows to closed
// openings: a UDP client that keeps sending would otherwise keep getting
// in as a reply ("ournet base: replies"), to the container or to the next
// one given its address. Best effort, as for published ports.
func forgetOpenings(closed []Opening) {
	filters := map[netlink.InetFamily][]netlink.CustomConntrackFilter{}
	for _, o := range closed {
		fam := netlink.InetFamily(unix.AF_INET)
		if o.Addr.Is6() {
			fam = unix.AF_INET6
		}
		filters[fam] = append(filters[fam], openFlow(o))
	}
	for fam, fs := range filters {
		if _, err := netlink.ConntrackDeleteFilters(netlink.ConntrackTable, fam, fs...); err != nil {
			log.WithError(err).Debug("firewall: clearing the conntrack entries of closed openings")
		}
	}
}
