package firewall

import (
	"fmt"
	"net/netip"

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

// from matches a source address in prefix p.
func from(p netip.Prefix) []expr.Any {
	off, n := uint32(12), uint32(4) // IPv4 header: saddr
	if p.Addr().Is6() {
		off, n = 8, 16
	}
	mask := make([]byte, n)
	for i := 0; i < p.Bits(); i++ {
		mask[i/8] |= 0x80 >> (i % 8)
	}
	return []expr.Any{
		&expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n},
		&expr.Bitwise{SourceRegister: reg, DestRegister: reg, Len: n, Mask: mask, Xor: make([]byte, n)},
		eq(p.Masked().Addr().AsSlice()),
	}
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

// natRules are network n's lines in the nat chain: masquerade of each of
// its subnets, for what leaves by another way than its own bridge.
func natRules(n Network) []nftRule {
	if n.Internal {
		return nil
	}
	var rs []nftRule
	for _, f := range []iptables.Family{iptables.IPv4, iptables.IPv6} {
		if !n.Masquerade[f] {
			continue
		}
		for _, s := range n.subnets(f) {
			rs = append(rs, nftRule{
				fmt.Sprintf("ournet:%s masquerade %s not to %s", iptables.Short(n.ID), s, n.Bridge),
				join(family(f), from(s), one(meta(expr.MetaKeyOIFNAME), neq(nft.IfName(n.Bridge)), &expr.Masq{})),
			})
		}
	}
	return rs
}
