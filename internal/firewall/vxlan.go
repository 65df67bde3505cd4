package firewall

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/ournet/ournet/internal/iptables"
)

// VXLANChain guards the VXLAN port of cluster networks (issue #13). VXLAN
// carries no authentication: whoever can send UDP to a host's port 4789
// can put frames on its container networks (CVE-2023-28840). So, in the
// raw table's PREROUTING (before any other rule, for traffic to the host
// and through it alike), UDP to that port is accepted only when it arrives
// on the underlay interface from a cluster host's advertised address, and
// dropped otherwise: from a container (any network, any driver) to any
// host, and from anyone else.
const VXLANChain = iptables.VXLANChain

// vxlanJump is PREROUTING's jump, as iptables-save prints it.
func vxlanJump(port int) string {
	return fmt.Sprintf("-A PREROUTING -p udp -m udp --dport %d -j %s", port, VXLANChain)
}

// VXLANRules are the chain's lines, as iptables-save prints them.
func VXLANRules(iface string, hosts []netip.Addr) []string {
	var out []string
	sorted := slices.Clone(hosts)
	slices.SortFunc(sorted, netip.Addr.Compare)
	for _, h := range slices.Compact(sorted) {
		out = append(out, fmt.Sprintf("-A %s -s %s -i %s -j RETURN", VXLANChain, netip.PrefixFrom(h, h.BitLen()), iface))
	}
	return append(out, fmt.Sprintf("-A %s -j DROP", VXLANChain))
}

// EnsureVXLAN makes the guard admit exactly hosts on iface, in the family
// of local (this host's address on the underlay), rewriting the chain and
// its jump only where they differ from that. With keep, a guard that
// exists is left as it is (the host list is not known yet: a plugin
// starting while the store is down keeps what it had); one that does not
// is made with hosts.
func (fw *Firewall) EnsureVXLAN(port int, iface string, local netip.Addr, hosts []netip.Addr, keep bool) error {
	f := iptables.IPv4
	if local.Is6() {
		f = iptables.IPv6
	}
	if !slices.Contains(fw.families, f) {
		return fmt.Errorf("%s is not programmed on this host", f)
	}
	fw.mu.Lock()
	defer fw.mu.Unlock()
	sorted := slices.Clone(hosts)
	slices.SortFunc(sorted, netip.Addr.Compare)
	state := fmt.Sprintf("%d %s %s %v %v", port, iface, local, slices.Compact(sorted), keep)
	if fw.vxlan == state {
		return nil // as this firewall last made or found it, and no repair round since
	}
	dump, err := fw.run.Save(f, "raw")
	if err != nil {
		return fmt.Errorf("%s: reading table raw: %w", f, err)
	}
	chains := iptables.Parse(dump)
	want := VXLANRules(iface, hosts)
	jumps := iptables.Jumps(chains["PREROUTING"], VXLANChain)
	_, declared := chains[VXLANChain]
	if keep && declared && len(jumps) == 1 {
		fw.vxlan = state
		return nil
	}
	if declared && slices.Equal(chains[VXLANChain], want) && len(jumps) == 1 && jumps[0] == vxlanJump(port) {
		fw.vxlan = state
		return nil
	}
	fw.vxlan = ""
	var b strings.Builder
	fmt.Fprintf(&b, "*raw\n:%s - [0:0]\n", VXLANChain)
	for _, l := range jumps {
		b.WriteString(iptables.DeleteLine(l) + "\n")
	}
	fmt.Fprintf(&b, "-I PREROUTING 1 -p udp -m udp --dport %d -j %s\n", port, VXLANChain)
	for _, l := range want {
		b.WriteString(l + "\n")
	}
	b.WriteString("COMMIT\n")
	if err := fw.run.Restore(f, b.String()); err != nil {
		return fmt.Errorf("%s: guarding the VXLAN port: %w", f, err)
	}
	fw.vxlan = state
	return nil
}

// DelVXLAN removes the guard (no cluster network is left on this host);
// a guard already gone is success.
func (fw *Firewall) DelVXLAN() error {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	if fw.vxlan == vxlanGone {
		return nil
	}
	fw.vxlan = ""
	for _, f := range fw.families {
		dump, err := fw.run.Save(f, "raw")
		if err != nil {
			return fmt.Errorf("%s: reading table raw: %w", f, err)
		}
		chains := iptables.Parse(dump)
		if _, ok := chains[VXLANChain]; !ok {
			continue
		}
		var b strings.Builder
		b.WriteString("*raw\n")
		for _, l := range iptables.Jumps(chains["PREROUTING"], VXLANChain) {
			b.WriteString(iptables.DeleteLine(l) + "\n")
		}
		fmt.Fprintf(&b, "-F %s\n-X %s\nCOMMIT\n", VXLANChain, VXLANChain)
		if err := fw.run.Restore(f, b.String()); err != nil {
			return fmt.Errorf("%s: removing the VXLAN guard: %w", f, err)
		}
	}
	fw.vxlan = vxlanGone
	return nil
}

// vxlanGone is fw.vxlan once DelVXLAN removed the guard (or found none).
const vxlanGone = "gone"
