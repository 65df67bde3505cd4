package iptables

import "strings"

// The registry of ournet's chains: every chain ournet makes starts with
// Prefix, which is what Teardown and the orphan scan look for; a chain
// that belongs to one network or endpoint is one of the per-ID prefixes
// below followed by its ID cut to 12 characters.
const Prefix = "OURNET-"

// Base chains of the network firewall (internal/firewall), whose
// per-network rules are in nftables (table inet ournet).
const (
	ForwardChain = "OURNET-FORWARD" // filter FORWARD, after DOCKER-USER
	VXLANChain   = "OURNET-VXLAN"   // raw PREROUTING: who may send VXLAN
)

// Base chains of published ports (internal/portmap).
const (
	DNATChain      = "OURNET-DNAT"      // nat PREROUTING and OUTPUT
	DNATMasqChain  = "OURNET-DNAT-MASQ" // nat POSTROUTING
	LocalhostChain = "OURNET-LOCALHOST" // raw PREROUTING, first
)

// Per-ID chain prefixes.
const (
	PortsPrefix     = "OURNET-P-"  // nat: an endpoint's DNAT rules
	PortsMasqPrefix = "OURNET-PM-" // nat: an endpoint's hairpin masquerade
)

// Legacy are the chains of older layouts of the network firewall, per
// table, removed by its cleaner: exact names, and prefixes (ending in "-")
// of per-network chains. Before 7 rules per network: four chains per
// network (OURNET-O-, -G-, -N-<id>); before the nftables table: one filter
// chain per network (OURNET-I-<id>) and the base chains that held each
// network's lines; before the table's rule for other bridges: the chain
// that listed them (OURNET-FOREIGN).
var Legacy = map[string][]string{
	"filter": {"OURNET-O-", "OURNET-I-", "OURNET-INTO", "OURNET-OUTOF", "OURNET-BRIDGES", "OURNET-FOREIGN"},
	"mangle": {"OURNET-G-", "OURNET-GUARD"},
	"nat":    {"OURNET-N-", "OURNET-POSTROUTING"},
}

// Short cuts an ID to the 12 characters chain names and tags use.
func Short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// Ours reports whether chain is one of ournet's.
func Ours(chain string) bool { return strings.HasPrefix(chain, Prefix) }
