package firewall

import (
	"fmt"

	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
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
// bits.
func ctAny(key expr.CtKey, bits uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Key: key, Register: reg},
		&expr.Bitwise{SourceRegister: reg, DestRegister: reg, Len: 4, Mask: native32(bits), Xor: native32(0)},
		neq(native32(0)),
	}
}

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

// forwardBaseRules is all the forward chain holds. A packet bound for an
// ournet bridge is judged by the destination network's chain alone,
// whoever sent it, and every such chain ends in a verdict: that alone
// isolates networks from each other with one map lookup per packet. A
// bridge of ournet's without an element (it can only be drift) gets
// nothing through. Then a packet that leaves an internal network's bridge
// for anywhere else is dropped.
func forwardBaseRules() []nftRule {
	return []nftRule{
		{"ournet base: into a bridge, judged by its network", join(one(meta(expr.MetaKeyOIFNAME)),
			one(&expr.Lookup{SourceRegister: reg, IsDestRegSet: true, SetName: IntoMap, SetID: intoMap().ID}))},
		{"ournet base: into an ournet bridge that has no network", join(one(meta(expr.MetaKeyOIFGROUP), eq(native32(BridgeGroup))), one(drop))},
		{"ournet base: out of an internal network", join(one(meta(expr.MetaKeyIIFNAME)),
			one(&expr.Lookup{SourceRegister: reg, IsDestRegSet: true, SetName: OutofMap, SetID: outofMap().ID}))},
	}
}

// netRules is network n's chain: every packet that leaves through its
// bridge (into the network): replies, published ports (connections that
// ournet's DNAT sent here), same-network traffic (icc), and nothing else:
// no direct routing to container addresses, whatever FORWARD's policy.
func netRules(n Network) []nftRule {
	t := "ournet:" + iptables.Short(n.ID)
	rs := []nftRule{{t + " replies", join(ctAny(expr.CtKeySTATE, ctEstablished|ctRelated), one(accept))}}
	if !n.Internal {
		rs = append(rs, nftRule{t + " published ports", join(ctAny(expr.CtKeySTATUS, ctStatusDNAT), one(accept))})
	}
	if n.ICC {
		rs = append(rs, nftRule{t + " icc on " + n.Bridge, join(one(meta(expr.MetaKeyIIFNAME), eq(nft.IfName(n.Bridge))), one(accept))})
	}
	// nat-unprotected: anything that does not come from a container
	// bridge (ournet's, the engine's docker0 and br-*) may reach any port.
	for _, f := range []iptables.Family{iptables.IPv4, iptables.IPv6} {
		if !n.Unprotected[f] || n.Internal {
			continue
		}
		rs = append(rs,
			nftRule{fmt.Sprintf("%s %s not from ournet bridges", t, famName(f)), join(family(f), one(meta(expr.MetaKeyIIFGROUP), eq(native32(BridgeGroup)), drop))},
			nftRule{fmt.Sprintf("%s %s not from docker0", t, famName(f)), join(family(f), one(meta(expr.MetaKeyIIFNAME), eq(nft.IfName("docker0")), drop))},
			// A prefix: cmp compares only the bytes given.
			nftRule{fmt.Sprintf("%s %s not from br-*", t, famName(f)), join(family(f), one(meta(expr.MetaKeyIIFNAME), eq([]byte("br-")), drop))},
			nftRule{fmt.Sprintf("%s %s unprotected", t, famName(f)), join(family(f), one(accept))},
		)
	}
	return append(rs, nftRule{t + " drop", one(drop)})
}

// natBaseRules is all the nat chain holds: a packet from one of a
// network's subnets goes to that network's nat chain.
func natBaseRules() []nftRule {
	var rs []nftRule
	for _, f := range []iptables.Family{iptables.IPv4, iptables.IPv6} {
		off, n := uint32(12), uint32(4) // IPv4 header: saddr
		if f == iptables.IPv6 {
			off, n = 8, 16
		}
		m := masqMap(f == iptables.IPv6)
		rs = append(rs, nftRule{"ournet base: " + famName(f) + " masquerade, by the source's network", join(family(f),
			one(&expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n},
				&expr.Lookup{SourceRegister: reg, IsDestRegSet: true, SetName: m.Name, SetID: m.ID}))})
	}
	return rs
}

// natRules is network n's nat chain: masquerade of what leaves by another
// way than its own bridge (the nat map sends only its masqueraded
// subnets here).
func natRules(n Network) []nftRule {
	if len(masqIntervals(n)) == 0 {
		return nil
	}
	return []nftRule{{
		fmt.Sprintf("ournet:%s masquerade not to %s", iptables.Short(n.ID), n.Bridge),
		one(meta(expr.MetaKeyOIFNAME), neq(nft.IfName(n.Bridge)), &expr.Masq{}),
	}}
}
