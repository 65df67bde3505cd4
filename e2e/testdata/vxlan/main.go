// Command vxlan is the cluster suite's (e2e/cluster_test.go) UDP tool,
// static so that it runs in the busybox containers, in a host's namespace
// and in the uplink alike. It needs no privilege: a VXLAN packet is a UDP
// datagram (an 8-byte header, then an Ethernet frame), so an ordinary
// socket sends one, which is exactly what a container must not be able to
// get through to another host (the CVE-2023-28840 class). Every mode is
// bounded in time.
//
//	vxlan send [-from IP] -to IP:PORT -vni N -smac MAC -dmac MAC -src IP -dst IP -dport PORT MESSAGE
//	     one VXLAN packet whose inner frame is IPv4/UDP from src to dst:dport carrying MESSAGE
//	vxlan udp [-from IP] HOST:PORT MESSAGE
//	     one plain datagram (from the local address IP if given)
//	vxlan listen [-t DURATION] PORT
//	     print "SOURCE MESSAGE" for every datagram received on PORT, for DURATION (default 10m)
//	vxlan arp -i IFACE -dmac MAC -smac MAC -src IP -dst IP
//	     one unicast ARP reply "src is at smac" to dmac/dst, from a packet socket
//	     (CAP_NET_RAW, which containers have by default)
package main

import (
	"encoding/binary"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fail(fmt.Errorf("usage: vxlan send|udp|listen ..."))
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	from := fs.String("from", "", "local source address")
	to := fs.String("to", "", "outer destination IP:PORT")
	vni := fs.Int("vni", 0, "VXLAN network identifier")
	smac := fs.String("smac", "", "inner source MAC")
	dmac := fs.String("dmac", "", "inner destination MAC")
	src := fs.String("src", "", "inner source IPv4")
	dst := fs.String("dst", "", "inner destination IPv4")
	dport := fs.Int("dport", 0, "inner UDP destination port")
	dur := fs.Duration("t", 10*time.Minute, "how long listen runs")
	iface := fs.String("i", "eth0", "interface of arp")
	_ = fs.Parse(os.Args[2:])
	args := fs.Args()
	var err error
	switch os.Args[1] {
	case "send":
		if len(args) != 1 {
			fail(fmt.Errorf("send: one MESSAGE"))
		}
		var pkt []byte
		if pkt, err = vxlanPacket(*vni, *smac, *dmac, *src, *dst, *dport, []byte(args[0])); err == nil {
			err = sendUDP(*from, *to, pkt)
		}
	case "udp":
		if len(args) != 2 {
			fail(fmt.Errorf("udp: HOST:PORT MESSAGE"))
		}
		err = sendUDP(*from, args[0], []byte(args[1]))
	case "arp":
		err = arpReply(*iface, *smac, *dmac, *src, *dst)
	case "listen":
		if len(args) != 1 {
			fail(fmt.Errorf("listen: PORT"))
		}
		err = listen(args[0], *dur)
	default:
		err = fmt.Errorf("unknown mode %q", os.Args[1])
	}
	if err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "vxlan:", err)
	os.Exit(1)
}

func sendUDP(from, to string, payload []byte) error {
	raddr, err := net.ResolveUDPAddr("udp4", to)
	if err != nil {
		return err
	}
	var laddr *net.UDPAddr
	if from != "" {
		if laddr, err = net.ResolveUDPAddr("udp4", net.JoinHostPort(from, "0")); err != nil {
			return err
		}
	}
	c, err := net.DialUDP("udp4", laddr, raddr)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetWriteDeadline(time.Now().Add(3 * time.Second))
	_, err = c.Write(payload)
	return err
}

// vxlanPacket is a VXLAN header (RFC 7348: flags with I set, VNI) and an
// inner Ethernet frame carrying IPv4/UDP (UDP checksum 0: none, valid over
// IPv4).
func vxlanPacket(vni int, smac, dmac, src, dst string, dport int, payload []byte) ([]byte, error) {
	sm, err := net.ParseMAC(smac)
	if err != nil {
		return nil, fmt.Errorf("-smac: %w", err)
	}
	dm, err := net.ParseMAC(dmac)
	if err != nil {
		return nil, fmt.Errorf("-dmac: %w", err)
	}
	s, err := netip.ParseAddr(src)
	if err != nil || !s.Is4() {
		return nil, fmt.Errorf("-src %q: not IPv4", src)
	}
	d, err := netip.ParseAddr(dst)
	if err != nil || !d.Is4() {
		return nil, fmt.Errorf("-dst %q: not IPv4", dst)
	}
	if vni <= 0 || vni >= 1<<24 || dport <= 0 || dport > 65535 {
		return nil, fmt.Errorf("-vni %d / -dport %d out of range", vni, dport)
	}
	udpLen := 8 + len(payload)
	ipLen := 20 + udpLen
	pkt := make([]byte, 0, 8+14+ipLen)
	// VXLAN
	pkt = append(pkt, 0x08, 0, 0, 0)
	pkt = binary.BigEndian.AppendUint32(pkt, uint32(vni)<<8)
	// Ethernet
	pkt = append(pkt, dm...)
	pkt = append(pkt, sm...)
	pkt = append(pkt, 0x08, 0x00)
	// IPv4
	ip := make([]byte, 20)
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(ipLen))
	binary.BigEndian.PutUint16(ip[4:], uint16(time.Now().UnixNano()))
	ip[8] = 64
	ip[9] = 17
	s4, d4 := s.As4(), d.As4()
	copy(ip[12:], s4[:])
	copy(ip[16:], d4[:])
	binary.BigEndian.PutUint16(ip[10:], checksum(ip))
	pkt = append(pkt, ip...)
	// UDP
	pkt = binary.BigEndian.AppendUint16(pkt, 40000)
	pkt = binary.BigEndian.AppendUint16(pkt, uint16(dport))
	pkt = binary.BigEndian.AppendUint16(pkt, uint16(udpLen))
	pkt = append(pkt, 0, 0)
	return append(pkt, payload...), nil
}

func checksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

func listen(port string, dur time.Duration) error {
	c, err := net.ListenPacket("udp4", ":"+port)
	if err != nil {
		return err
	}
	defer c.Close()
	end := time.Now().Add(dur)
	buf := make([]byte, 65536)
	for {
		_ = c.SetReadDeadline(end)
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			if time.Now().After(end) {
				return nil
			}
			return err
		}
		host, _, _ := net.SplitHostPort(from.String())
		fmt.Printf("%s %s\n", host, buf[:n])
	}
}

// arpReply sends, on iface, an Ethernet frame from smac to dmac holding
// the ARP reply "src is at smac" addressed to dst.
func arpReply(iface, smac, dmac, src, dst string) error {
	ifi, err := net.InterfaceByName(iface)
	if err != nil {
		return err
	}
	sm, err := net.ParseMAC(smac)
	if err != nil {
		return fmt.Errorf("-smac: %w", err)
	}
	dm, err := net.ParseMAC(dmac)
	if err != nil {
		return fmt.Errorf("-dmac: %w", err)
	}
	s, err := netip.ParseAddr(src)
	if err != nil || !s.Is4() {
		return fmt.Errorf("-src %q: not IPv4", src)
	}
	d, err := netip.ParseAddr(dst)
	if err != nil || !d.Is4() {
		return fmt.Errorf("-dst %q: not IPv4", dst)
	}
	s4, d4 := s.As4(), d.As4()
	frame := append(append(append([]byte{}, dm...), sm...), 0x08, 0x06)
	frame = append(frame, 0, 1, 0x08, 0, 6, 4, 0, 2) // Ethernet, IPv4, reply
	frame = append(append(append(append(frame, sm...), s4[:]...), dm...), d4[:]...)
	const ethPARP = 0x0806
	fd, err := syscall.Socket(syscall.AF_PACKET, syscall.SOCK_RAW, int(htons(ethPARP)))
	if err != nil {
		return fmt.Errorf("packet socket: %w", err)
	}
	defer syscall.Close(fd)
	var addr [8]byte
	copy(addr[:], dm)
	return syscall.Sendto(fd, frame, 0, &syscall.SockaddrLinklayer{Protocol: htons(ethPARP), Ifindex: ifi.Index, Halen: 6, Addr: addr})
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
