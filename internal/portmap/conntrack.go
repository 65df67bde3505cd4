package portmap

import (
	"fmt"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// flowFilter matches the conntrack entries of one mapping's host port.
type flowFilter struct {
	m           Mapping
	toContainer bool // DNATed to the mapping's container; else not DNATed at all
}

// MatchConntrackFlow implements netlink.CustomConntrackFilter.
func (f flowFilter) MatchConntrackFlow(fl *netlink.ConntrackFlow) bool {
	fw, rv := fl.Forward, fl.Reverse
	if fw.Protocol != uint8(f.m.Proto) || fw.DstPort != f.m.HostPort {
		return false
	}
	if !f.m.HostIP.IsUnspecified() && !fw.DstIP.Equal(f.m.HostIP.AsSlice()) {
		return false
	}
	if f.toContainer {
		return rv.SrcIP.Equal(f.m.ContainerIP.AsSlice()) && rv.SrcPort == f.m.ContainerPort
	}
	return rv.SrcIP.Equal(fw.DstIP) && rv.SrcPort == fw.DstPort
}

// forgetFlows deletes the conntrack entries of the mappings' host ports:
// those DNATed to their container (toContainer), or those that reached the
// host itself before the port was published, which would keep bypassing
// the DNAT rule for as long as the client keeps sending. One pass over the
// table per family, however many mappings.
func forgetFlows(ms []Mapping, toContainer bool) error {
	filters := map[netlink.InetFamily][]netlink.CustomConntrackFilter{}
	for _, m := range ms {
		family := netlink.InetFamily(unix.AF_INET)
		if !m.Is4() {
			family = netlink.InetFamily(unix.AF_INET6)
		}
		filters[family] = append(filters[family], flowFilter{m, toContainer})
	}
	for family, fs := range filters {
		if _, err := netlink.ConntrackDeleteFilters(netlink.ConntrackTable, family, fs...); err != nil {
			return fmt.Errorf("deleting conntrack entries of published ports: %w", err)
		}
	}
	return nil
}
