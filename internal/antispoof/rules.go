package antispoof

import (
	"encoding/binary"
	"net/netip"

	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Header values the rules compare against, in network byte order.
var (
	etherIPv4   = be16(unix.ETH_P_IP)
	etherARP    = be16(unix.ETH_P_ARP)
	etherIPv6   = be16(unix.ETH_P_IPV6)
	ether8021Q  = be16(unix.ETH_P_8021Q)
	ether8021AD = be16(unix.ETH_P_8021AD)

	// ARP for IPv4 over Ethernet: htype 1, ptype 0x0800, hlen 6, plen 4.
	// Only this shape has the sender fields at the offsets checked below.
	// Each field has a rule of its own so that nft lists them as they mean.
	arpEthernetIPv4 = []byte{0, 1, 0x08, 0x00, 6, 4}

	ipv4Zero = make([]byte, 4)
	ipv6Zero = make([]byte, 16)

	// fe80::/10, compared on the first two bytes after masking.
	linkLocalMask   = []byte{0xff, 0xc0}
	linkLocalPrefix = []byte{0xfe, 0x80}
)

// ICMPv6 types and UDP ports a container must not send as a source.
const (
	icmpv6RouterAdvert = 134 // would give peers (and the host) routes and prefixes
	icmpv6NeighAdvert  = 136 // checked: only for addresses the endpoint owns
	icmpv6Redirect     = 137 // would reroute a peer's traffic through the sender
	udpDHCPServer      = 67
	udpDHCPv6Server    = 547
)

func be16(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }

// Registers: NFT_REG_1 holds the header field under test, NFT_REG_2 the
// masked prefix of an IPv6 address.
const (
	reg1 = 1
	reg2 = 2
)

func load(base expr.PayloadBase, reg, off, n uint32) expr.Any {
	return &expr.Payload{DestRegister: reg, Base: base, Offset: off, Len: n}
}
func ll(off, n uint32) expr.Any { return load(expr.PayloadBaseLLHeader, reg1, off, n) }
func nh(off, n uint32) expr.Any { return load(expr.PayloadBaseNetworkHeader, reg1, off, n) }
func th(off, n uint32) expr.Any { return load(expr.PayloadBaseTransportHeader, reg1, off, n) }

func cmp(op expr.CmpOp, reg uint32, data []byte) expr.Any {
	return &expr.Cmp{Op: op, Register: reg, Data: data}
}
func eq(data []byte) expr.Any  { return cmp(expr.CmpOpEq, reg1, data) }
func neq(data []byte) expr.Any { return cmp(expr.CmpOpNeq, reg1, data) }

var drop = &expr.Verdict{Kind: expr.VerdictDrop}

// etherType matches frames of one EtherType. It reads the frame's header
// (the bridge family rebuilds an offloaded VLAN tag there), so a tagged
// frame never passes for the protocol it carries.
func etherType(t []byte) []expr.Any { return []expr.Any{ll(12, 2), eq(t)} }

// l4 matches IPv4 or IPv6 packets of one transport protocol; the kernel
// finds it past IPv6 extension headers, so they cannot hide an RA.
func l4(proto byte) []expr.Any {
	return []expr.Any{&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1}, eq([]byte{proto})}
}

// notLinkLocal matches when the 16-byte address at off from base is outside
// fe80::/10 (reading its first two bytes into reg2).
func notLinkLocal(base expr.PayloadBase, off uint32) []expr.Any {
	return []expr.Any{
		load(base, reg2, off, 2),
		&expr.Bitwise{SourceRegister: reg2, DestRegister: reg2, Len: 2, Mask: linkLocalMask, Xor: []byte{0, 0}},
		cmp(expr.CmpOpNeq, reg2, linkLocalPrefix),
	}
}

// notOwn matches when the address in reg1 is not a (zero Addr: none).
func notOwn(a netip.Addr) []expr.Any {
	if !a.IsValid() {
		return nil
	}
	return []expr.Any{neq(a.AsSlice())}
}

func rule(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return append(out, drop)
}

func one(e ...expr.Any) []expr.Any { return e }

// endpointRules are the checks of one endpoint's chain. Each rule drops,
// except the returns that end a protocol's checks: IPv4, the bulk of the
// traffic, is through after four rules, IPv6 after seven more. Whatever no
// rule drops returns to the base chain and is accepted.
func endpointRules(ep Endpoint) [][]expr.Any {
	mac := []byte(ep.MAC)
	// ether saddr != MAC: the MAC is the endpoint's identity at layer 2.
	rules := [][]expr.Any{rule(one(ll(6, 6), neq(mac)))}
	rules = append(rules, ipv4Rules(ep)...)
	rules = append(rules, ipv6Rules(ep)...)
	rules = append(rules, arpRules(ep, mac)...)
	return append(rules,
		// A VLAN tag would carry an inner header no rule reads.
		rule(etherType(ether8021Q)),
		rule(etherType(ether8021AD)),
	)
}

var ret = &expr.Verdict{Kind: expr.VerdictReturn}

// done ends the checks of one EtherType.
func done(t []byte) []expr.Any { return append(etherType(t), ret) }

// udpFrom matches UDP from a source port (containers are DHCP clients, so
// replies from the server ports are never theirs to send).
func udpFrom(port uint16) []expr.Any {
	return append(l4(unix.IPPROTO_UDP), th(0, 2), eq(be16(port)))
}

// ipv4Rules: ip saddr != the endpoint's address (with no IPv4 address, no
// IPv4 at all); no DHCP server replies.
func ipv4Rules(ep Endpoint) [][]expr.Any {
	if !ep.IPv4.IsValid() {
		return [][]expr.Any{rule(etherType(etherIPv4))}
	}
	return [][]expr.Any{
		rule(etherType(etherIPv4), one(nh(12, 4)), notOwn(ep.IPv4)),
		rule(etherType(etherIPv4), udpFrom(udpDHCPServer)),
		done(etherIPv4),
	}
}

// arpRules: only Ethernet/IPv4 ARP whose sender MAC is the endpoint's and
// whose sender IP is its address, or 0.0.0.0 (an RFC 5227 probe, which
// updates no cache).
func arpRules(ep Endpoint, mac []byte) [][]expr.Any {
	return [][]expr.Any{
		rule(etherType(etherARP), one(nh(0, 2), neq(arpEthernetIPv4[0:2]))),
		rule(etherType(etherARP), one(nh(2, 2), neq(arpEthernetIPv4[2:4]))),
		rule(etherType(etherARP), one(nh(4, 1), neq(arpEthernetIPv4[4:5]))),
		rule(etherType(etherARP), one(nh(5, 1), neq(arpEthernetIPv4[5:6]))),
		rule(etherType(etherARP), one(nh(8, 6), neq(mac))),
		rule(etherType(etherARP), one(nh(14, 4)), notOwn(ep.IPv4), one(neq(ipv4Zero))),
	}
}

// ipv6Rules: the source is the endpoint's address, a link-local one or ::
// (duplicate address detection, MLD before an address is ready); no router
// advertisements or redirects; neighbour advertisements only for the
// endpoint's address or a link-local one; no DHCPv6 server replies.
func ipv6Rules(ep Endpoint) [][]expr.Any {
	icmp6 := func(typ byte) []expr.Any {
		return append(l4(unix.IPPROTO_ICMPV6), th(0, 1), eq([]byte{typ}))
	}
	return [][]expr.Any{
		rule(etherType(etherIPv6), one(nh(8, 16)), notOwn(ep.IPv6), one(neq(ipv6Zero)),
			notLinkLocal(expr.PayloadBaseNetworkHeader, 8)),
		rule(etherType(etherIPv6), icmp6(icmpv6RouterAdvert)),
		rule(etherType(etherIPv6), icmp6(icmpv6Redirect)),
		// The target address follows type, code, checksum and flags.
		rule(etherType(etherIPv6), icmp6(icmpv6NeighAdvert), one(th(8, 16)), notOwn(ep.IPv6),
			notLinkLocal(expr.PayloadBaseTransportHeader, 8)),
		rule(etherType(etherIPv6), udpFrom(udpDHCPv6Server)),
		done(etherIPv6),
	}
}
