package driver

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/ournet/ournet/internal/netdev"
)

// Option names, the same as Docker's bridge driver where they exist there.
const (
	optGeneric       = "com.docker.network.generic"
	optEnableIPv4    = "com.docker.network.enable_ipv4"
	optEnableIPv6    = "com.docker.network.enable_ipv6"
	optInternal      = "com.docker.network.internal"
	optBridgeName    = "com.docker.network.bridge.name"
	optICC           = "com.docker.network.bridge.enable_icc"
	optMasquerade    = "com.docker.network.bridge.enable_ip_masquerade"
	optHostBindingV4 = "com.docker.network.bridge.host_binding_ipv4"
	optInhibitIPv4   = "com.docker.network.bridge.inhibit_ipv4"
	optGwModeV4      = "com.docker.network.bridge.gateway_mode_ipv4"
	optGwModeV6      = "com.docker.network.bridge.gateway_mode_ipv6"
	optDefaultBridge = "com.docker.network.bridge.default_bridge"
	optTrusted       = "com.docker.network.bridge.trusted_host_interfaces"
	optMTU           = "com.docker.network.driver.mtu"
	optIfacePrefix   = "com.docker.network.container_iface_prefix"
	optAntiSpoofing  = "ournet.anti_spoofing"
	optCluster       = "ournet.cluster"
	// Docker's fixed source address for a network's outgoing traffic
	// (an SNAT instead of the masquerade): refused, saying what to do.
	optHostIPv4 = "com.docker.network.host_ipv4"
	optHostIPv6 = "com.docker.network.host_ipv6"

	bridgeOptPrefix = "com.docker.network.bridge."
	ournetOptPrefix = "ournet."

	// Gateway modes (gateway_mode_ipv4/ipv6), with the bridge driver's
	// meaning: nat masquerades and lets nothing reach a container from
	// outside but its published ports; nat-unprotected masquerades and
	// lets the outside reach every port; routed does not masquerade and
	// opens only published ports; isolated (internal networks only) puts
	// no gateway address on the bridge.
	gwNAT         = "nat"
	gwUnprotected = "nat-unprotected"
	gwRouted      = "routed"
	gwIsolated    = "isolated"

	// BridgePrefix starts the name of every bridge ournet names itself.
	BridgePrefix = "ournet-"
)

// NetworkOptions are a network's settings, parsed and validated.
type NetworkOptions struct {
	BridgeName string
	ICC        bool
	Masquerade bool
	Internal   bool
	EnableIPv6 bool
	// IPv4Off is an IPv6-only network (engine 28+: --ipv4=false, or
	// com.docker.network.enable_ipv4=false). Stored negated so that a
	// record saved before the option existed keeps IPv4.
	IPv4Off       bool `json:",omitempty"`
	InhibitIPv4   bool
	HostBindingV4 netip.Addr
	GwModeV4      string // nat, nat-unprotected, routed or isolated
	GwModeV6      string
	MTU           int
	IfacePrefix   string
	// AntiSpoofingOff is ournet.anti_spoofing=false. Stored negated so that
	// the zero value, and a record saved before the option existed, keeps
	// the checks on.
	AntiSpoofingOff bool
	// Cluster is the cluster network this network is this host's part of
	// (ournet.cluster, cluster.go); "" for a network of this host alone.
	Cluster string `json:",omitempty"`
	// TrustedIfaces (trusted_host_interfaces, Docker 28+: names joined by
	// ':') are the host's interfaces from which published ports are
	// reached directly at the containers' addresses, as from the bridge.
	// Sorted, each once. This host's own: not part of a cluster
	// network's spec.
	TrustedIfaces []string `json:",omitempty"`
}

// knownOptions lists every -o key ournet accepts in the namespaces it owns.
var knownOptions = map[string]bool{
	optBridgeName: true, optICC: true, optMasquerade: true, optHostBindingV4: true,
	optInhibitIPv4: true, optGwModeV4: true, optGwModeV6: true, optDefaultBridge: true,
	optMTU: true, optIfacePrefix: true, optEnableIPv4: true, optEnableIPv6: true, optInternal: true,
	optAntiSpoofing: true, optCluster: true, optTrusted: true,
}

// ParseOptions reads CreateNetwork's options. It refuses unknown keys in
// Docker's bridge namespace and in ournet's, and bad values, with a message
// that names the option and says what would be accepted.
func ParseOptions(networkID string, opts map[string]any) (NetworkOptions, error) {
	o := NetworkOptions{
		BridgeName:  BridgePrefix + short8(networkID),
		ICC:         true,
		Masquerade:  true,
		GwModeV4:    gwNAT,
		GwModeV6:    gwNAT,
		IfacePrefix: "eth",
	}
	var err error
	if o.EnableIPv6, err = boolOf(opts[optEnableIPv6], optEnableIPv6, false); err != nil {
		return o, err
	}
	var ipv4 bool
	if ipv4, err = boolOf(opts[optEnableIPv4], optEnableIPv4, true); err != nil {
		return o, err
	}
	if o.Internal, err = boolOf(opts[optInternal], optInternal, false); err != nil {
		return o, err
	}
	generic, _ := opts[optGeneric].(map[string]any)
	keys := make([]string, 0, len(generic))
	for k := range generic {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := generic[k]
		if (strings.HasPrefix(k, bridgeOptPrefix) || strings.HasPrefix(k, ournetOptPrefix)) && !knownOptions[k] {
			return o, fmt.Errorf("ournet: unknown option %q; ournet accepts %s", k, strings.Join(knownList(), ", "))
		}
		s := fmt.Sprint(v)
		switch k {
		case optHostIPv4, optHostIPv6:
			return o, fmt.Errorf("ournet: option %s (a fixed source address for the network's outgoing traffic) is not supported; remove it, and add an SNAT rule for the subnet to iptables' nat POSTROUTING chain instead: ournet masquerades after that chain", k)
		case optBridgeName:
			if err := netdev.CheckName(s); err != nil {
				return o, fmt.Errorf("ournet: option %s: %w", k, err)
			}
			o.BridgeName = s
		case optICC:
			o.ICC, err = boolOf(v, k, true)
		case optCluster:
			if s == "" || len(s) > 64 || strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.") != "" {
				err = fmt.Errorf("ournet: option %s=%q is not a valid cluster network name; use up to 64 letters, digits, '-', '_' or '.'", k, s)
			}
			o.Cluster = s
		case optAntiSpoofing:
			var on bool
			on, err = boolOf(v, k, true)
			o.AntiSpoofingOff = !on
		case optMasquerade:
			o.Masquerade, err = boolOf(v, k, true)
		case optInhibitIPv4:
			o.InhibitIPv4, err = boolOf(v, k, false)
		case optEnableIPv6:
			o.EnableIPv6, err = boolOf(v, k, o.EnableIPv6)
		case optEnableIPv4:
			ipv4, err = boolOf(v, k, ipv4)
		case optInternal:
			o.Internal, err = boolOf(v, k, o.Internal)
		case optDefaultBridge:
			var b bool
			if b, err = boolOf(v, k, false); err == nil && b {
				err = fmt.Errorf("ournet: option %s=true is for Docker's own default bridge; ournet networks are user-defined, remove the option", k)
			}
		case optTrusted:
			o.TrustedIfaces, err = ifaceList(k, s)
		case optHostBindingV4:
			a, perr := netip.ParseAddr(s)
			if perr != nil || !a.Is4() {
				err = fmt.Errorf("ournet: option %s=%q is not an IPv4 address; give one such as 127.0.0.1 or 0.0.0.0", k, s)
			}
			o.HostBindingV4 = a
		case optGwModeV4, optGwModeV6:
			switch s {
			case gwNAT, gwUnprotected, gwRouted, gwIsolated:
			default:
				err = fmt.Errorf("ournet: option %s=%q is not valid; use nat, nat-unprotected, routed or isolated", k, s)
			}
			if k == optGwModeV4 {
				o.GwModeV4 = s
			} else {
				o.GwModeV6 = s
			}
		case optMTU:
			n, perr := strconv.Atoi(s)
			if perr != nil || n < 68 || n > 65535 {
				err = fmt.Errorf("ournet: option %s=%q is not valid; give an MTU from 68 to 65535 (1500 is usual)", k, s)
			}
			o.MTU = n
		case optIfacePrefix:
			if err := netdev.CheckName(s + "0"); err != nil || len(s) > 10 {
				return o, fmt.Errorf("ournet: option %s=%q is not valid: give a short interface name prefix such as eth", k, s)
			}
			o.IfacePrefix = s
		}
		if err != nil {
			return o, err
		}
	}
	o.IPv4Off = !ipv4
	for k, m := range map[string]string{optGwModeV4: o.GwModeV4, optGwModeV6: o.GwModeV6} {
		if m == gwIsolated && !o.Internal {
			return o, fmt.Errorf("ournet: option %s=isolated is only for internal networks; add --internal or choose another gateway mode", k)
		}
	}
	if o.IPv4Off && !o.EnableIPv6 {
		return o, fmt.Errorf("ournet: a network with IPv4 disabled needs IPv6: add --ipv6 (and an IPv6 --subnet, or let ournet's IPAM pick one)")
	}
	return o, nil
}

// ifaceList reads a list of interface names joined by ':', as the bridge
// driver does (empty names are skipped); a name the kernel would refuse
// is refused.
func ifaceList(k, s string) ([]string, error) {
	names := strings.FieldsFunc(s, func(r rune) bool { return r == ':' })
	if len(names) == 0 {
		return nil, nil
	}
	for _, n := range names {
		if err := netdev.CheckName(n); err != nil {
			return nil, fmt.Errorf("ournet: option %s=%q: %w; give interface names joined by ':', such as eth1:vxlan0", k, s, err)
		}
	}
	slices.Sort(names)
	return slices.Compact(names), nil
}

func knownList() []string {
	out := make([]string, 0, len(knownOptions))
	for k := range knownOptions {
		if k != optEnableIPv4 && k != optEnableIPv6 && k != optInternal {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

// boolOf accepts what Docker's bridge driver accepts: a JSON bool or a string
// strconv.ParseBool understands.
func boolOf(v any, name string, def bool) (bool, error) {
	switch t := v.(type) {
	case nil:
		return def, nil
	case bool:
		return t, nil
	case string:
		b, err := strconv.ParseBool(t)
		if err != nil {
			return def, fmt.Errorf("ournet: option %s=%q is not a boolean; use true or false", name, t)
		}
		return b, nil
	}
	return def, fmt.Errorf("ournet: option %s=%v is not a boolean; use true or false", name, v)
}

func short8(id string) string {
	if len(id) > 8 {
		return id[:8]
	}
	return id
}

func short12(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
