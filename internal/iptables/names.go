package iptables

import "strings"

// The registry of ournet's chains: every chain ournet makes starts with
// Prefix, which is what Teardown and the orphan scan look for; a chain
// that belongs to one network or endpoint is one of the per-ID prefixes
// below followed by its ID cut to 12 characters.
const Prefix = "OURNET-"

// Base chains of the network firewall (internal/firewall).
const (
	ForwardChain     = "OURNET-FORWARD"     // filter FORWARD, after DOCKER-USER
	IntoChain        = "OURNET-INTO"        // from ForwardChain: -o <bridge> lines
	OutofChain       = "OURNET-OUTOF"       // from ForwardChain: -i <bridge> lines
	GuardChain       = "OURNET-GUARD"       // mangle FORWARD, first
	PostroutingChain = "OURNET-POSTROUTING" // nat POSTROUTING
	ForeignChain     = "OURNET-FOREIGN"     // every network's way out
	BridgesChain     = "OURNET-BRIDGES"     // the container bridges (nat-unprotected)
	VXLANChain       = "OURNET-VXLAN"       // raw PREROUTING: who may send VXLAN
)

// Base chains of published ports (internal/portmap).
const (
	DNATChain      = "OURNET-DNAT"      // nat PREROUTING and OUTPUT
	DNATMasqChain  = "OURNET-DNAT-MASQ" // nat POSTROUTING
	LocalhostChain = "OURNET-LOCALHOST" // raw PREROUTING, first
)

// Per-ID chain prefixes.
const (
	NetworkPrefix   = "OURNET-I-"  // filter: what may enter a network's bridge
	PortsPrefix     = "OURNET-P-"  // nat: an endpoint's DNAT rules
	PortsMasqPrefix = "OURNET-PM-" // nat: an endpoint's hairpin masquerade
)

// LegacyNetworkPrefixes are the per-network chains of versions before 7
// rules per network, per table: removed by the firewall's cleaner.
var LegacyNetworkPrefixes = map[string]string{
	"filter": "OURNET-O-",
	"mangle": "OURNET-G-",
	"nat":    "OURNET-N-",
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
