package ipam

import (
	"encoding/binary"
	"math/bits"
	"net/netip"
)

// u128 is an address as a number, so that IPv4 and IPv6 share one
// arithmetic and stepping through a /48 in /64s cannot overflow an int.
type u128 struct{ hi, lo uint64 }

func fromAddr(a netip.Addr) u128 {
	if a.Is4() {
		b := a.As4()
		return u128{lo: uint64(binary.BigEndian.Uint32(b[:]))}
	}
	b := a.As16()
	return u128{hi: binary.BigEndian.Uint64(b[:8]), lo: binary.BigEndian.Uint64(b[8:])}
}

func (u u128) toAddr(v4 bool) netip.Addr {
	if v4 {
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], uint32(u.lo))
		return netip.AddrFrom4(b)
	}
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], u.hi)
	binary.BigEndian.PutUint64(b[8:], u.lo)
	return netip.AddrFrom16(b)
}

func (u u128) cmp(v u128) int {
	switch {
	case u.hi < v.hi:
		return -1
	case u.hi > v.hi:
		return 1
	case u.lo < v.lo:
		return -1
	case u.lo > v.lo:
		return 1
	}
	return 0
}

// add returns u+v and false when the sum leaves the address family's range.
func (u u128) add(v u128, v4 bool) (u128, bool) {
	lo, carry := bits.Add64(u.lo, v.lo, 0)
	hi, over := bits.Add64(u.hi, v.hi, carry)
	if over != 0 || (v4 && (hi != 0 || lo > 0xffffffff)) {
		return u128{}, false
	}
	return u128{hi, lo}, true
}

// pow2 is 2^n for 0 <= n < 128.
func pow2(n int) u128 {
	if n >= 64 {
		return u128{hi: 1 << (n - 64)}
	}
	return u128{lo: 1 << n}
}

// lowMask has the n lowest bits set, 0 <= n <= 128.
func lowMask(n int) u128 {
	switch {
	case n >= 128:
		return u128{^uint64(0), ^uint64(0)}
	case n >= 64:
		return u128{hi: 1<<(n-64) - 1, lo: ^uint64(0)}
	}
	return u128{lo: 1<<n - 1}
}

func hostBits(p netip.Prefix) int { return p.Addr().BitLen() - p.Bits() }

// lastAddr is the highest address of p (the IPv4 broadcast address).
func lastAddr(p netip.Prefix) netip.Addr {
	u, m := fromAddr(p.Masked().Addr()), lowMask(hostBits(p))
	return u128{u.hi | m.hi, u.lo | m.lo}.toAddr(p.Addr().Is4())
}

// afterPrefix is the first address past p; false when p ends the address space.
func afterPrefix(p netip.Prefix) (u128, bool) {
	return fromAddr(lastAddr(p)).add(u128{lo: 1}, p.Addr().Is4())
}
