package firewall

import (
	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"

	"github.com/ournet/ournet/internal/iptables"
	"github.com/ournet/ournet/internal/nft"
)

const reg = 1

// Conntrack bits as the kernel keeps them (host order): ct state
// established and related; ct status dnat.
const (
	ctEstablished = 1 << 1
	ctRelated     = 1 << 2
	ctStatusDNAT  = 1 << 5 // IPS_DST_NAT
)

var (
	accept = &expr.Verdict{Kind: expr.VerdictAccept}
	drop   = &expr.Verdict{Kind: expr.VerdictDrop}
)

func native32(v uint32) []byte { return binaryutil.NativeEndian.PutUint32(v) }

func meta(k expr.MetaKey) expr.Any { return &expr.Meta{Key: k, Register: reg} }

func eq(b []byte) expr.Any  { return &expr.Cmp{Op: expr.CmpOpEq, Register: reg, Data: b} }
func neq(b []byte) expr.Any { return &expr.Cmp{Op: expr.CmpOpNeq, Register: reg, Data: b} }

// ctAny matches a packet whose conntrack key (state or status) has any of
// bits; ctNone one that has none of them.
func ctAny(key expr.CtKey, bits uint32) []expr.Any  { return ctBits(key, bits, neq) }
func ctNone(key expr.CtKey, bits uint32) []expr.Any { return ctBits(key, bits, eq) }

func ctBits(key expr.CtKey, bits uint32, cmp func([]byte) expr.Any) []expr.Any {
	return []expr.Any{
		&expr.Ct{Key: key, Register: reg},
		&expr.Bitwise{SourceRegister: reg, DestRegister: reg, Len: 4, Mask: native32(bits), Xor: native32(0)},
		cmp(native32(0)),
	}
}

// metaOIFKind is the kind of the device a packet leaves by ("bridge",
// "veth", ...; the kernel's NFT_META_OIFKIND, Linux 5.2, which the
// library does not name). A device with no kind (a physical NIC) matches
// no kind.
const metaOIFKind expr.MetaKey = 27

// family matches packets of one family (an inet table sees both).
func family(f iptables.Family) []expr.Any {
	p := byte(unix.NFPROTO_IPV4)
	if f == iptables.IPv6 {
		p = unix.NFPROTO_IPV6
	}
	return []expr.Any{meta(expr.MetaKeyNFPROTO), eq([]byte{p})}
}

func famName(f iptables.Family) string {
	if f == iptables.IPv6 {
		return "IPv6"
	}
	return "IPv4"
}

func join(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func one(e ...expr.Any) []expr.Any { return e }

// The 32-bit registers a concatenation is loaded into, field after field
// (each field padded to 4 bytes); reg (16 bytes) starts where reg32 does.
const reg32 = 8 // NFT_REG32_00

// ifPair loads "<in>" . "<out>" (the devices' names) for the sets of
// interface pairs.
func ifPair() []expr.Any {
	return one(&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: reg32}, &expr.Meta{Key: expr.MetaKeyOIFNAME, Register: reg32 + 4})
}

// lookup matches when the key in register r is in set d (invert: is not).
func lookup(d *setDef, r uint32, invert bool) expr.Any {
	return &expr.Lookup{SourceRegister: r, SetName: d.name, SetID: d.id, Invert: invert}
}

// forwardBaseRules is all the forward chain holds. A packet bound for a
// network's bridge is judged by that network's elements alone, whoever
// sent it: replies, published ports (connections ournet's DNAT sent
// there), same-network traffic (icc), for a nat-unprotected network what
// does not come from a container bridge (ournet's group, docker0, br-*),
// for a routed one its ICMP and its published ports at the containers'
// addresses, the same ports from the network's trusted host interfaces,
// and nothing else: no other direct routing to container addresses,
// whatever FORWARD's policy, and no traffic between networks. A packet that
// leaves an internal network's bridge for anywhere but that bridge is
// dropped first, before any of those ways into another network. A bridge
// of ournet's without a network (it can only be drift) gets nothing
// through. Then a packet that leaves any ournet bridge for a bridge of the
// engine's own networks (docker0, and br-* as the bridge driver names
// them), unless it is a connection DNATed to a port published there: the
// bridge driver's networks are as isolated from ournet's as ournet's from
// each other, by the names it gives its bridges, so that no bridge has to
// be listed. Any other bridge is the host's (its uplink may be one: br0,
// vmbr0, virbr0), and a way out, as with the bridge driver. Sets only: a new
// network adds elements, never a rule or a jump, so that a commit costs
// the same with 500 networks as with one.
func forwardBaseRules() []nftRule {
	oif := one(meta(expr.MetaKeyOIFNAME))
	rs := []nftRule{
		{"ournet base: replies", join(oif, one(lookup(setNets, reg, false)), ctAny(expr.CtKeySTATE, ctEstablished|ctRelated), one(accept))},
		{"ournet base: icc", join(ifPair(), one(lookup(setICC, reg32, false), accept))},
		// Before any way into another network (a port published there,
		// DNATed at the internal network's own gateway address, or open
		// on a routed network): nothing leaves an internal network but
		// to its own bridge, with icc.
		{"ournet base: out of an internal network", join(one(meta(expr.MetaKeyIIFNAME), lookup(setInternal, reg, false)), one(drop))},
		{"ournet base: published ports", join(oif, one(lookup(setPublished, reg, false)), ctAny(expr.CtKeySTATUS, ctStatusDNAT), one(accept))},
	}
	notFromContainers := one(
		meta(expr.MetaKeyIIFGROUP), neq(native32(BridgeGroup)),
		meta(expr.MetaKeyIIFNAME), neq(nft.IfName("docker0")),
		// A prefix: cmp compares only the bytes given.
		meta(expr.MetaKeyIIFNAME), neq([]byte("br-")))
	// Into the engine's bridges: a connection DNATed to a port published
	// there, or a reply to one that came from there (to a port published
	// on a routed network).
	notPublishedNorReply := join(ctNone(expr.CtKeySTATUS, ctStatusDNAT), ctNone(expr.CtKeySTATE, ctEstablished|ctRelated))
	// Bridged inside the network, with br_netfilter, a packet comes in and
	// leaves by the bridge, and icc alone judges it, as the bridge
	// driver's "! -i <bridge>" does.
	notFromOwnBridge := join(ifPair(), one(lookup(setRoutedOwn, reg32, true)))
	for _, f := range []iptables.Family{iptables.IPv4, iptables.IPv6} {
		icmp := byte(unix.IPPROTO_ICMP)
		if f == iptables.IPv6 {
			icmp = unix.IPPROTO_ICMPV6
		}
		rs = append(rs,
			nftRule{"ournet base: " + famName(f) + " nat-unprotected, not from container bridges", join(family(f), oif,
				one(lookup(unprotSet(f), reg, false)), notFromContainers, one(accept))},
			nftRule{"ournet base: " + famName(f) + " routed, ICMP not from container bridges", join(family(f), oif,
				one(lookup(routedSet(f), reg, false), meta(expr.MetaKeyL4PROTO), eq([]byte{icmp})), notFromContainers, one(accept))},
			nftRule{"ournet base: " + famName(f) + " routed, published ports, not from the network's own bridge", join(family(f), oif,
				one(lookup(routedSet(f), reg, false)), notFromOwnBridge, openPort(f), one(accept))},
			nftRule{"ournet base: " + famName(f) + " published ports, from a trusted host interface", join(family(f), ifPair(),
				one(lookup(setTrusted, reg32, false)), openPort(f), one(accept))})
	}
	return append(rs,
		nftRule{"ournet base: nothing else into a network", join(oif, one(lookup(setNets, reg, false), drop))},
		nftRule{"ournet base: into an ournet bridge that has no network", join(one(meta(expr.MetaKeyOIFGROUP), eq(native32(BridgeGroup))), one(drop))},
		nftRule{"ournet base: into docker0, unless published there or a reply", join(
			one(meta(expr.MetaKeyIIFGROUP), eq(native32(BridgeGroup)), meta(expr.MetaKeyOIFNAME), eq(nft.IfName("docker0"))),
			notPublishedNorReply, one(drop))},
		nftRule{"ournet base: into a br- bridge (the engine's), unless published there or a reply", join(
			one(meta(expr.MetaKeyIIFGROUP), eq(native32(BridgeGroup)), meta(metaOIFKind), eq(nft.IfName("bridge")),
				// A prefix: cmp compares only the bytes given.
				meta(expr.MetaKeyOIFNAME), eq([]byte("br-"))),
			notPublishedNorReply, one(drop))},
	)
}

// openPort matches a packet for a port open at a container's address:
// the key, a field per 32-bit register, is the bridge the packet leaves
// by, its destination address, protocol and port.
func openPort(f iptables.Family) []expr.Any {
	daddr, n := uint32(16), uint32(4) // IPv4 header: daddr
	if f == iptables.IPv6 {
		daddr, n = 24, 16
	}
	const addr = reg32 + unix.IFNAMSIZ/4
	return one(
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: reg32},
		&expr.Payload{DestRegister: addr, Base: expr.PayloadBaseNetworkHeader, Offset: daddr, Len: n},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: addr + n/4},
		&expr.Payload{DestRegister: addr + n/4 + 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		lookup(openSet(f), reg32, false))
}

// natBaseRules is all the nat chain holds: a packet from a subnet that
// masquerades is masqueraded when it leaves by a device that is not an
// ournet bridge, and when it is routed into an ournet bridge from another
// device than that bridge (a port published on another network); not when
// it goes back into the bridge it came from (a port published on its own
// network: the hairpin set), nor when it has no input device (bridged
// inside a network, with br_netfilter; or the host's own). Which is, for
// every packet that can get this far, "unless it leaves by its subnet's
// own bridge", with plain hash sets: a set of ranges concatenated with a
// name (the kernel's pipapo) copies its whole lookup table at every
// commit that adds an element, a cost that grows with the networks.
func natBaseRules() []nftRule {
	var rs []nftRule
	for _, f := range []iptables.Family{iptables.IPv4, iptables.IPv6} {
		off, n := uint32(12), uint32(4) // IPv4 header: saddr
		if f == iptables.IPv6 {
			off, n = 8, 16
		}
		from := join(family(f), one(&expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n},
			lookup(masqSet(f), reg, false), meta(expr.MetaKeyOIFGROUP)))
		rs = append(rs,
			nftRule{"ournet base: " + famName(f) + " masquerade, out of ournet's bridges", join(from, one(neq(native32(BridgeGroup)), &expr.Masq{}))},
			nftRule{"ournet base: " + famName(f) + " masquerade, routed into another bridge of ournet's", join(from, one(eq(native32(BridgeGroup)),
				// No input device: bridged, or the host's own (older
				// kernels end the rule at the load itself). Not as
				// iifname != "", which nft lists but cannot load again.
				meta(expr.MetaKeyIIF), neq(native32(0)),
			), ifPair(), one(lookup(setHairpin, reg32, true), &expr.Masq{}))})
	}
	return rs
}

// comment is a rule's userdata: the comment nft prints. The base chains'
// drift is judged on these: a rule edited, added or removed by hand
// changes them.
func comment(s string) []byte { return userdata.AppendString(nil, userdata.TypeComment, s) }

func commentOf(r *nftables.Rule) string {
	s, _ := userdata.GetString(r.UserData, userdata.TypeComment)
	return s
}

// nftRule is one rule as ournet writes it.
type nftRule struct {
	comment string
	exprs   []expr.Any
}

func (r nftRule) in(ch *nftables.Chain) *nftables.Rule {
	return &nftables.Rule{Table: table, Chain: ch, Exprs: r.exprs, UserData: comment(r.comment)}
}
