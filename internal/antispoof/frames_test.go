package antispoof

// Builders of raw Ethernet frames for the kernel tests: each case writes a
// frame on a container's interface and looks for it on a peer's.

import (
	"encoding/binary"
	"net"
	"net/netip"
)

var broadcast = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

func ether(dst, src net.HardwareAddr, typ uint16, payload []byte) []byte {
	b := append(append(append([]byte{}, dst...), src...), be16(typ)...)
	return append(b, payload...)
}

// vlanTagged puts an 802.1Q tag (VLAN 10) in front of the frame's type.
func vlanTagged(frame []byte) []byte {
	out := append([]byte{}, frame[:12]...)
	out = append(out, 0x81, 0x00, 0x00, 0x0a)
	return append(out, frame[12:]...)
}

func checksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

func ipv4(src, dst netip.Addr, proto byte, payload []byte) []byte {
	h := make([]byte, 20)
	h[0] = 0x45
	binary.BigEndian.PutUint16(h[2:], uint16(20+len(payload)))
	h[8] = 64
	h[9] = proto
	copy(h[12:], src.AsSlice())
	copy(h[16:], dst.AsSlice())
	binary.BigEndian.PutUint16(h[10:], checksum(h))
	return append(h, payload...)
}

// udp leaves the checksum zero: nothing on the path checks it.
func udp(sport, dport uint16, payload []byte) []byte {
	h := make([]byte, 8)
	binary.BigEndian.PutUint16(h[0:], sport)
	binary.BigEndian.PutUint16(h[2:], dport)
	binary.BigEndian.PutUint16(h[4:], uint16(8+len(payload)))
	return append(h, payload...)
}

func arp(op uint16, sha net.HardwareAddr, spa netip.Addr, tpa netip.Addr) []byte {
	b := []byte{0, 1, 0x08, 0x00, 6, 4}
	b = append(b, be16(op)...)
	b = append(append(b, sha...), spa.AsSlice()...)
	b = append(append(b, make([]byte, 6)...), tpa.AsSlice()...)
	return b
}

func ipv6(src, dst netip.Addr, next byte, payload []byte) []byte {
	h := make([]byte, 40)
	h[0] = 0x60
	binary.BigEndian.PutUint16(h[4:], uint16(len(payload)))
	h[6] = next
	h[7] = 255
	copy(h[8:], src.AsSlice())
	copy(h[24:], dst.AsSlice())
	return append(h, payload...)
}

// destOpts wraps payload in an empty destination options header.
func destOpts(next byte, payload []byte) []byte {
	return append([]byte{next, 0, 1, 4, 0, 0, 0, 0}, payload...)
}

func icmpv6(typ byte, body []byte) []byte {
	return append([]byte{typ, 0, 0, 0}, body...)
}

// routerAdvert: hop limit 64, lifetime 1800 s, no options.
func routerAdvert() []byte {
	return icmpv6(icmpv6RouterAdvert, []byte{64, 0, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0})
}

// neighAdvert: override flag, target, and a target link-layer address option.
func neighAdvert(target netip.Addr, mac net.HardwareAddr) []byte {
	body := append([]byte{0x20, 0, 0, 0}, target.AsSlice()...)
	body = append(append(body, 2, 1), mac...)
	return icmpv6(icmpv6NeighAdvert, body)
}

func redirect(target, dst netip.Addr) []byte {
	body := append(append(make([]byte, 4), target.AsSlice()...), dst.AsSlice()...)
	return icmpv6(icmpv6Redirect, body)
}
