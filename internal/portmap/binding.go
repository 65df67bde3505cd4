package portmap

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	log "github.com/sirupsen/logrus"
)

// Options the engine sends with CreateEndpoint and ProgramExternalConnectivity.
const (
	OptPortMap      = "com.docker.network.portmap"
	OptExposedPorts = "com.docker.network.endpoint.exposedports"
)

// Proto is an IP protocol number, as the engine sends it.
type Proto uint8

// The protocols Docker publishes.
const (
	TCP  Proto = 6
	UDP  Proto = 17
	SCTP Proto = 132
)

func (p Proto) String() string {
	switch p {
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	case SCTP:
		return "sctp"
	}
	return fmt.Sprintf("proto-%d", uint8(p))
}

// MarshalText stores the name, so that the state file reads "tcp", not 6.
func (p Proto) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText reads a name written by MarshalText.
func (p *Proto) UnmarshalText(b []byte) error {
	for _, q := range []Proto{TCP, UDP, SCTP} {
		if string(b) == q.String() {
			*p = q
			return nil
		}
	}
	return fmt.Errorf("unknown protocol %q", b)
}

// Binding is one port the engine asks to publish (one entry of
// com.docker.network.portmap), as validated.
type Binding struct {
	Proto       Proto
	Port        uint16     // the container's port
	HostIP      netip.Addr // invalid: none given, use the network's default
	HostPort    uint16     // 0: pick a free port from the ephemeral range
	HostPortEnd uint16     // > HostPort: pick one free port of HostPort..HostPortEnd
}

func (b Binding) String() string {
	host := "*"
	if b.HostIP.IsValid() {
		host = b.HostIP.String()
	}
	hp := fmt.Sprint(b.HostPort)
	if b.HostPortEnd > b.HostPort {
		hp += fmt.Sprintf("-%d", b.HostPortEnd)
	}
	return fmt.Sprintf("%s:%s->%d/%s", host, hp, b.Port, b.Proto)
}

// engineBinding is the JSON of libnetwork's types.PortBinding: net.IP
// fields are strings ("" for none), numbers are numbers.
type engineBinding struct {
	Proto       int
	IP          string
	Port        int
	HostIP      string
	HostPort    int
	HostPortEnd int
}

// Parse reads the port bindings out of an endpoint's options. found tells
// "no portmap option" (keep what is known) from an empty list (publish
// nothing).
func Parse(opts map[string]any) (bindings []Binding, found bool, err error) {
	raw, found := opts[OptPortMap]
	if !found || raw == nil {
		return nil, found, nil
	}
	// The helper decoded the body into interface{} values: encode them
	// again and decode into the engine's shape.
	b, err := json.Marshal(raw)
	if err != nil {
		return nil, true, fmt.Errorf("ournet: reading %s: %w", OptPortMap, err)
	}
	var list []engineBinding
	if err := json.Unmarshal(b, &list); err != nil {
		return nil, true, fmt.Errorf("ournet: %s from the engine is not a list of port bindings: %w", OptPortMap, err)
	}
	for _, e := range list {
		pb, err := e.validate()
		if err != nil {
			return nil, true, err
		}
		bindings = append(bindings, pb)
	}
	return bindings, true, nil
}

func (e engineBinding) validate() (Binding, error) {
	b := Binding{Proto: Proto(e.Proto)}
	switch {
	case b.Proto != TCP && b.Proto != UDP && b.Proto != SCTP:
		return b, fmt.Errorf("ournet: cannot publish protocol number %d; ournet publishes tcp, udp and sctp", e.Proto)
	case e.Port < 1 || e.Port > 65535:
		return b, fmt.Errorf("ournet: container port %d is not valid; give a port from 1 to 65535", e.Port)
	case e.HostPort < 0 || e.HostPort > 65535 || e.HostPortEnd < 0 || e.HostPortEnd > 65535:
		return b, fmt.Errorf("ournet: host port %d-%d is not valid; give ports from 1 to 65535", e.HostPort, e.HostPortEnd)
	case e.HostPort == 0 && e.HostPortEnd != 0:
		return b, fmt.Errorf("ournet: host port range 0-%d is not valid; give its first port", e.HostPortEnd)
	case e.HostPortEnd != 0 && e.HostPortEnd < e.HostPort:
		return b, fmt.Errorf("ournet: host port range %d-%d is backwards; give the lower port first", e.HostPort, e.HostPortEnd)
	}
	b.Port, b.HostPort, b.HostPortEnd = uint16(e.Port), uint16(e.HostPort), uint16(e.HostPortEnd)
	if b.HostPortEnd == b.HostPort {
		b.HostPortEnd = 0 // one port: keep a single spelling, for comparisons
	}
	if s := strings.Trim(e.HostIP, "[]"); s != "" {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return b, fmt.Errorf("ournet: host address %q of port %d/%s is not an IP address", e.HostIP, e.Port, b.Proto)
		}
		b.HostIP = a.Unmap()
	}
	return b, nil
}

// Mapping is one installed publication: one host address and port of one
// family, DNATed to the container's address and port; or, on a family
// whose gateway mode is routed (Direct), no host port at all: the
// container's address and port, open to direct routing (the firewall's
// job), as the bridge driver's routed mode.
type Mapping struct {
	Proto         Proto
	HostIP        netip.Addr // 0.0.0.0 or :: for every address of the family
	HostPort      uint16
	ContainerIP   netip.Addr
	ContainerPort uint16
}

func (m Mapping) String() string {
	if m.Direct() {
		return fmt.Sprintf("%s/%s (routed: no host port)", netip.AddrPortFrom(m.ContainerIP, m.ContainerPort), m.Proto)
	}
	return fmt.Sprintf("%s->%s/%s", netip.AddrPortFrom(m.HostIP, m.HostPort),
		netip.AddrPortFrom(m.ContainerIP, m.ContainerPort), m.Proto)
}

// Direct reports whether the mapping is a routed family's: no host port, no
// DNAT, nothing of the mapper's in the kernel.
func (m Mapping) Direct() bool { return m.HostPort == 0 }

// Is4 reports whether the mapping is IPv4 (iptables) rather than IPv6.
func (m Mapping) Is4() bool { return m.HostIP.Is4() }

// loopback reports whether the mapping is reachable only from the host.
func (m Mapping) loopback() bool { return m.HostIP.IsLoopback() }

// Endpoint is what the mapper needs to know of an endpoint.
type Endpoint struct {
	ID       string
	Bridge   string     // route_localnet is set here
	HostVeth string     // the bridge port, put in hairpin mode
	IPv4     netip.Addr // the container's addresses; invalid if none
	IPv6     netip.Addr
	// DefaultHostIPv4 is com.docker.network.bridge.host_binding_ipv4,
	// used when a binding gives no host address; invalid means 0.0.0.0.
	DefaultHostIPv4 netip.Addr
	// RoutedV4 and RoutedV6: the network's gateway mode for the family is
	// routed, where a binding gets no host port but a Direct mapping.
	RoutedV4, RoutedV6 bool
}

func (ep Endpoint) routed(a netip.Addr) bool {
	if a.Is4() {
		return ep.RoutedV4
	}
	return ep.RoutedV6
}

// want is one binding resolved against the endpoint: the host addresses it
// is published on (all with the same port number) and the ports to try;
// and the families it opens directly instead (routed: an unspecified
// address each).
type want struct {
	b          Binding
	hostIPs    []netip.Addr
	direct     []netip.Addr
	first, end uint16 // candidate host ports; 0,0: the ephemeral range
}

// resolve turns bindings into wants, as Docker's bridge driver does: no host
// address means the network's default for IPv4 and, when that default is
// 0.0.0.0, :: for IPv6 as well; an explicit address publishes on it alone.
// On a routed family the host address and port are ignored, as there.
func resolve(ep Endpoint, bs []Binding) ([]want, error) {
	def := ep.DefaultHostIPv4
	if !def.IsValid() {
		def = netip.IPv4Unspecified()
	}
	var out []want
	for _, b := range bs {
		w := want{b: b, first: b.HostPort, end: b.HostPortEnd}
		if w.end == 0 {
			w.end = w.first
		}
		switch {
		case !b.HostIP.IsValid():
			if ep.IPv4.IsValid() {
				w.hostIPs = append(w.hostIPs, def)
			}
			if ep.IPv6.IsValid() && def.IsUnspecified() {
				w.hostIPs = append(w.hostIPs, netip.IPv6Unspecified())
			}
			if len(w.hostIPs) == 0 {
				return nil, fmt.Errorf("ournet: cannot publish port %d/%s: the container has no address on this network", b.Port, b.Proto)
			}
		case b.HostIP == netip.IPv6Loopback() && !ep.RoutedV6:
			return nil, fmt.Errorf("ournet: cannot publish %s on ::1 (to container port %d/%s): the kernel does not forward IPv6 loopback traffic to containers and ournet runs no userland proxy; publish on 127.0.0.1 or on one of the host's IPv6 addresses", hostPortText(b), b.Port, b.Proto)
		case b.HostIP.Is4() && !ep.IPv4.IsValid():
			return nil, fmt.Errorf("ournet: cannot publish port %d/%s on %s: the container has no IPv4 address on this network; publish on an IPv6 host address", b.Port, b.Proto, b.HostIP)
		case b.HostIP.Is6() && !ep.IPv6.IsValid():
			return nil, fmt.Errorf("ournet: cannot publish port %d/%s on %s: the container has no IPv6 address on this network; use an --ipv6 network or an IPv4 host address", b.Port, b.Proto, b.HostIP)
		default:
			w.hostIPs = []netip.Addr{b.HostIP}
		}
		w.hostIPs = slices.DeleteFunc(w.hostIPs, func(h netip.Addr) bool {
			if !ep.routed(h) {
				return false
			}
			if !h.IsUnspecified() || b.HostPort != 0 {
				log.WithField("binding", b.String()).Info("the network is routed: the port is opened at the container's address, the host address and port are ignored")
			}
			w.direct = append(w.direct, unspecified(h))
			return true
		})
		out = append(out, w)
	}
	return out, nil
}

func unspecified(a netip.Addr) netip.Addr {
	if a.Is4() {
		return netip.IPv4Unspecified()
	}
	return netip.IPv6Unspecified()
}

// directMappings are w's routed families' mappings.
func (w want) directMappings(ep Endpoint) []Mapping {
	var out []Mapping
	for _, h := range w.direct {
		out = append(out, w.mapping(ep, h, 0))
	}
	return out
}

// mappings are w's mappings once host port port is chosen.
func (w want) mappings(ep Endpoint, port uint16) []Mapping {
	var out []Mapping
	for _, h := range w.hostIPs {
		out = append(out, w.mapping(ep, h, port))
	}
	return out
}

func (w want) mapping(ep Endpoint, h netip.Addr, port uint16) Mapping {
	c := ep.IPv4
	if h.Is6() {
		c = ep.IPv6
	}
	return Mapping{Proto: w.b.Proto, HostIP: h, HostPort: port, ContainerIP: c, ContainerPort: w.b.Port}
}

// hostPortText is the host side of b as the user wrote it: host port
// 8080/tcp, host ports 8000-8010/tcp, or a free one for -p CONTAINER and -P.
func hostPortText(b Binding) string {
	switch {
	case b.HostPort == 0:
		return "a free host port"
	case b.HostPortEnd > b.HostPort:
		return fmt.Sprintf("host ports %d-%d/%s", b.HostPort, b.HostPortEnd, b.Proto)
	}
	return fmt.Sprintf("host port %d/%s", b.HostPort, b.Proto)
}
