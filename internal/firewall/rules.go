package firewall

import (
	"net/netip"
	"strings"

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

// inChain is the chain of one network.
func inChain(id string) string { return iptables.NetworkPrefix + iptables.Short(id) }

// tag is the comment on every line a network has in a base chain, as
// iptables-save prints it.
func tag(id string) string { return `-m comment --comment "ournet:` + iptables.Short(id) + `"` }

// basesOf lists the shared chains of a table where networks have lines.
func basesOf(table string) []string {
	switch table {
	case "filter":
		return []string{IntoChain, OutofChain}
	case "mangle":
		return []string{GuardChain}
	}
	return []string{PostroutingChain}
}

// ownedIn returns network id's lines in the shared chains of one table, in
// chain order.
func ownedIn(chains iptables.Chains, table, id string) []string {
	var out []string
	own := ownedBy(id)
	for _, b := range basesOf(table) {
		for _, l := range chains[b] {
			if own(l) {
				out = append(out, l)
			}
		}
	}
	return out
}

// ownedBy reports whether a line belongs to network id: tagged with its
// comment.
func ownedBy(id string) func(line string) bool {
	t := " " + tag(id) + " "
	return func(l string) bool { return strings.Contains(l, t) }
}

// tableRules is what ournet wants in one table for one network: the rules of
// the chains it owns, and its tagged lines in the table's base chain (jumps
// and rules), as iptables-save prints them ("-A CHAIN ...").
type tableRules struct {
	chains iptables.Chains
	jumps  []string
}

// rules computes network n's rules for family f, per table.
func rules(f iptables.Family, n Network) map[string]*tableRules {
	br, in, t := n.Bridge, inChain(n.ID), tag(n.ID)

	// Into the bridge: replies, published ports (connections ournet's own
	// DNAT rules sent here), same-network traffic, and nothing else: no
	// direct routing to container addresses, whatever FORWARD's policy.
	states := "RELATED,ESTABLISHED,DNAT"
	if n.Internal {
		states = "RELATED,ESTABLISHED"
	}
	inRules := []string{"-A " + in + " -m conntrack --ctstate " + states + " -j ACCEPT"}
	if n.ICC {
		inRules = append(inRules, "-A "+in+" -i "+br+" -j ACCEPT")
	}
	unprotected := n.Unprotected[f] && !n.Internal
	if unprotected {
		inRules = append(inRules, "-A "+in+" -j "+BridgesChain)
	}
	inRules = append(inRules, "-A "+in+" -j DROP")
	// The guard repeats the I chain's DROP where dockerd cannot reorder
	// it; a network open to the outside has none to repeat.
	guard := []string{"-A " + GuardChain + " ! -i " + br + " -o " + br + " -m conntrack ! --ctstate " + states + " " + t + " -j DROP"}
	if unprotected {
		guard = nil
	}

	// Out of the bridge to anywhere that is not an ournet bridge (those are
	// judged by their own I chain, first): OURNET-FOREIGN keeps it out of
	// the engine's bridges and accepts the rest.
	out := "-A " + OutofChain + " -i " + br + " " + t + " -j " + ForeignChain
	if n.Internal {
		out = "-A " + OutofChain + " -i " + br + " " + t + " -j DROP"
	}

	var natRules []string
	if n.Masquerade[f] && !n.Internal {
		for _, s := range n.subnets(f) {
			natRules = append(natRules, "-A "+PostroutingChain+" -s "+s.String()+" ! -o "+br+" "+t+" -j MASQUERADE")
		}
	}
	return map[string]*tableRules{
		"filter": {
			chains: iptables.Chains{in: inRules},
			jumps:  []string{"-A " + IntoChain + " -o " + br + " " + t + " -j " + in, out},
		},
		"mangle": {jumps: guard},
		"nat":    {jumps: natRules},
	}
}
