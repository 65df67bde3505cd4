package portmap

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/ournet/ournet/internal/iptables"
)

// Base chains, each reached by jumps from the built-in chains:
//
//	nat PREROUTING  ! -d 127.0.0.0/8 (::1) -m addrtype --dst-type LOCAL -> OURNET-DNAT
//	nat OUTPUT      -m addrtype --dst-type LOCAL (! -d ::1)             -> OURNET-DNAT
//	nat POSTROUTING                                                     -> OURNET-DNAT-MASQ
//	raw PREROUTING  (first)                                             -> OURNET-LOCALHOST
//
// and two chains per endpoint (ID cut to 12 characters), each jumped to
// from its base chain:
//
//	nat OURNET-P-<eid>   its DNAT rules
//	nat OURNET-PM-<eid>  masquerade of the container's connections to its
//	                     own published ports (hairpin to itself)
//
// A port published on 127.0.0.1 has a "-d 127.0.0.1" DNAT rule, and
// PREROUTING never sends 127.0.0.0/8 to OURNET-DNAT, so such a port is
// DNATed only for connections made on the host (OUTPUT). Those leave with a
// loopback source, which the kernel routes out of the bridge only with
// route_localnet=1 there; OURNET-DNAT-MASQ then masquerades them to the
// bridge's address, so the container can answer. route_localnet would also
// let packets addressed to 127.0.0.0/8 come in through the bridge from a
// container and reach the host's loopback services (CVE-2020-8558):
// OURNET-LOCALHOST drops every packet to 127.0.0.0/8 (or ::1) that did not
// arrive on lo, before conntrack or routing see it.
const (
	DNATChain  = iptables.DNATChain
	MasqChain  = iptables.DNATMasqChain
	GuardChain = iptables.LocalhostChain
)

// Per-endpoint chain names.
func dnatChain(id string) string { return iptables.PortsPrefix + iptables.Short(id) }
func masqChain(id string) string { return iptables.PortsMasqPrefix + iptables.Short(id) }

func loopbackNet(f iptables.Family) string {
	if f == iptables.IPv6 {
		return "::1/128"
	}
	return "127.0.0.0/8"
}

// baseJumps are the jumps into the base chains, per table, exactly as
// iptables-save prints them.
func baseJumps(f iptables.Family) map[string][]string {
	lo := loopbackNet(f)
	output := "-A OUTPUT -m addrtype --dst-type LOCAL -j " + DNATChain
	if f == iptables.IPv6 {
		// ::1 cannot be DNATed out of the host (no route_localnet in IPv6):
		// leave it alone rather than send it to a container it cannot reach.
		output = "-A OUTPUT ! -d ::1/128 -m addrtype --dst-type LOCAL -j " + DNATChain
	}
	return map[string][]string{
		"nat": {
			"-A PREROUTING ! -d " + lo + " -m addrtype --dst-type LOCAL -j " + DNATChain,
			output,
			"-A POSTROUTING -j " + MasqChain,
		},
		"raw": {"-A PREROUTING -j " + GuardChain},
	}
}

// baseRules are the rules the base chains start with.
func baseRules(f iptables.Family) map[string][]string {
	guard := []string{"-A " + GuardChain + " -d " + loopbackNet(f) + " ! -i lo -j DROP"}
	masq := []string{}
	if f == iptables.IPv4 {
		masq = []string{"-A " + MasqChain + " -s 127.0.0.0/8 ! -o lo -m conntrack --ctstate DNAT -j MASQUERADE"}
	}
	return map[string][]string{GuardChain: guard, MasqChain: masq}
}

// BaseScript is the iptables-restore input that creates what is missing of
// the base chains, their first rules and their jumps; "" if nothing is.
// OURNET-LOCALHOST is ournet's alone and is rewritten whole when it differs;
// OURNET-DNAT and OURNET-DNAT-MASQ hold endpoints' jumps and are only added to.
func BaseScript(f iptables.Family, s iptables.Tables) string {
	var b strings.Builder
	jumps, rules := baseJumps(f), baseRules(f)
	for _, table := range []string{"raw", "nat"} {
		var body strings.Builder
		have := s[table]
		if table == "raw" {
			if got, ok := have[GuardChain]; !ok || !slices.Equal(got, rules[GuardChain]) {
				fmt.Fprintf(&body, ":%s - [0:0]\n", GuardChain)
				for _, r := range rules[GuardChain] {
					body.WriteString(r + "\n")
				}
			}
		} else {
			for _, c := range []string{DNATChain, MasqChain} {
				if _, ok := have[c]; !ok {
					fmt.Fprintf(&body, ":%s - [0:0]\n", c)
				}
			}
			for _, r := range rules[MasqChain] {
				if !slices.Contains(have[MasqChain], r) {
					body.WriteString(iptables.InsertLine(r, 1) + "\n")
				}
			}
		}
		for _, j := range jumps[table] {
			if slices.Contains(have[iptables.ChainOf(j)], j) {
				continue
			}
			if table == "raw" {
				j = iptables.InsertLine(j, 1) // the guard goes before anyone's rules
			}
			body.WriteString(j + "\n")
		}
		if body.Len() > 0 {
			fmt.Fprintf(&b, "*%s\n%sCOMMIT\n", table, body.String())
		}
	}
	return b.String()
}

// hostNet is the -d match of a host address: none for 0.0.0.0 and ::.
func hostNet(a netip.Addr) string {
	if a.IsUnspecified() {
		return ""
	}
	return "-d " + netip.PrefixFrom(a, a.BitLen()).String() + " "
}

func target(a netip.Addr, port uint16) string {
	if a.Is6() {
		return fmt.Sprintf("[%s]:%d", a, port)
	}
	return fmt.Sprintf("%s:%d", a, port)
}

// endpointRules are the rules of an endpoint's two chains for family f, as
// iptables-save prints them.
func endpointRules(f iptables.Family, id string, ms []Mapping) (dnat, masq []string) {
	var containers []netip.Addr
	for _, m := range ms {
		if m.Is4() != (f == iptables.IPv4) || m.Direct() {
			continue
		}
		dnat = append(dnat, fmt.Sprintf("-A %s %s-p %s -m %s --dport %d -j DNAT --to-destination %s",
			dnatChain(id), hostNet(m.HostIP), m.Proto, m.Proto, m.HostPort, target(m.ContainerIP, m.ContainerPort)))
		if !slices.Contains(containers, m.ContainerIP) {
			containers = append(containers, m.ContainerIP)
		}
	}
	for _, c := range containers {
		p := netip.PrefixFrom(c, c.BitLen())
		masq = append(masq, fmt.Sprintf("-A %s -s %s -d %s -m conntrack --ctstate DNAT -j MASQUERADE", masqChain(id), p, p))
	}
	return dnat, masq
}

func endpointJumps(id string) []string {
	return []string{"-A " + DNATChain + " -j " + dnatChain(id), "-A " + MasqChain + " -j " + masqChain(id)}
}

// AddScript is the iptables-restore input that installs (or rewrites) the
// endpoint's rules of family f. Declaring a chain flushes it, so the
// endpoint's chains are replaced whole in one transaction. With no mapping
// of that family it is the DelScript.
func AddScript(f iptables.Family, id string, ms []Mapping, s iptables.Tables) string {
	dnat, masq := endpointRules(f, id, ms)
	if len(dnat) == 0 {
		return DelScript(id, s)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "*nat\n:%s - [0:0]\n:%s - [0:0]\n", dnatChain(id), masqChain(id))
	for _, r := range append(dnat, masq...) {
		b.WriteString(r + "\n")
	}
	for _, j := range endpointJumps(id) {
		if !slices.Contains(s["nat"][iptables.ChainOf(j)], j) {
			b.WriteString(j + "\n")
		}
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

// DelScript is the iptables-restore input that removes the endpoint's
// chains and the jumps to them; "" if there are none.
func DelScript(id string, s iptables.Tables) string {
	nat := s["nat"]
	var jumps []string
	for _, j := range endpointJumps(id) {
		for _, have := range nat[iptables.ChainOf(j)] {
			if have == j {
				jumps = append(jumps, j)
			}
		}
	}
	_, hasD := nat[dnatChain(id)]
	_, hasM := nat[masqChain(id)]
	if !hasD && !hasM && len(jumps) == 0 {
		return ""
	}
	var b strings.Builder
	// Declaring creates or flushes, so -X works whether or not it existed.
	fmt.Fprintf(&b, "*nat\n:%s - [0:0]\n:%s - [0:0]\n", dnatChain(id), masqChain(id))
	for _, j := range jumps {
		b.WriteString(iptables.DeleteLine(j) + "\n")
	}
	fmt.Fprintf(&b, "-X %s\n-X %s\nCOMMIT\n", dnatChain(id), masqChain(id))
	return b.String()
}

// installed reports whether the endpoint's rules of family f are in s
// exactly as AddScript writes them.
func installed(f iptables.Family, id string, ms []Mapping, s iptables.Tables) bool {
	dnat, masq := endpointRules(f, id, ms)
	nat := s["nat"]
	if len(dnat) == 0 {
		return DelScript(id, s) == ""
	}
	if !slices.Equal(nat[dnatChain(id)], dnat) || !slices.Equal(nat[masqChain(id)], masq) {
		return false
	}
	for _, j := range endpointJumps(id) {
		if !slices.Contains(nat[iptables.ChainOf(j)], j) {
			return false
		}
	}
	return true
}

// endpointIDs lists the short IDs of the endpoints that have chains in s.
func endpointIDs(s iptables.Tables) []string {
	var out []string
	for c := range s["nat"] {
		for _, p := range []string{iptables.PortsPrefix, iptables.PortsMasqPrefix} {
			if id, ok := strings.CutPrefix(c, p); ok && !slices.Contains(out, id) {
				out = append(out, id)
			}
		}
	}
	slices.Sort(out)
	return out
}
