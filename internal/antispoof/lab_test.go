package antispoof

// A small lab for the kernel tests: inside the throwaway namespace testns.Do
// gives, a bridge "br0" and peers, each a namespace of its own joined to the
// bridge by a veth (host end "vp<i>", inside "eth0"), with an AF_PACKET
// socket there to write and read raw frames.

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

type peer struct {
	port    string // host end, the bridge port
	mac     net.HardwareAddr
	v4, v6  netip.Addr
	ns      netns.NsHandle
	ifindex int // of eth0 inside ns
	fd      int // AF_PACKET socket in ns, bound to eth0
}

func (p *peer) endpoint() Endpoint {
	return Endpoint{Port: p.port, MAC: p.mac, IPv4: p.v4, IPv6: p.v6}
}

type lab struct {
	t     testing.TB
	home  netns.NsHandle
	peers []*peer
}

// Test addresses: 198.18.90.0/24 and 2001:db8:90::/64.
func peerAddrs(i int) (net.HardwareAddr, netip.Addr, netip.Addr) {
	mac := net.HardwareAddr{0x02, 0x42, 198, 18, 90, byte(10 + i)}
	return mac, netip.AddrFrom4([4]byte{198, 18, 90, byte(10 + i)}),
		netip.MustParseAddr(fmt.Sprintf("2001:db8:90::%x", 10+i))
}

// newLab must run inside testns.Do, on its locked thread.
func newLab(t testing.TB, n int) *lab {
	t.Helper()
	home, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	l := &lab{t: t, home: home}
	t.Cleanup(l.close)
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}
	if err := netlink.LinkAdd(br); err != nil {
		t.Fatalf("creating bridge: %v", err)
	}
	if err := netlink.LinkSetUp(br); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		l.peers = append(l.peers, l.addPeer(i, br))
	}
	return l
}

func (l *lab) addPeer(i int, br *netlink.Bridge) *peer {
	t := l.t
	t.Helper()
	p := &peer{port: fmt.Sprintf("vp%d", i)}
	p.mac, p.v4, p.v6 = peerAddrs(i)
	var err error
	// A socket belongs to the namespace it is made in: make it there.
	if p.ns, err = netns.New(); err != nil {
		t.Fatal(err)
	}
	p.fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(unix.ETH_P_ALL)))
	if serr := netns.Set(l.home); serr != nil {
		panic(serr) // this thread is lost; Do must not go on in the wrong namespace
	}
	if err != nil {
		t.Fatalf("packet socket: %v", err)
	}
	veth := &netlink.Veth{
		LinkAttrs: netlink.LinkAttrs{Name: p.port, MasterIndex: br.Attrs().Index},
		PeerName:  "eth0", PeerHardwareAddr: p.mac, PeerNamespace: netlink.NsFd(p.ns),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Fatalf("creating veth %s: %v", p.port, err)
	}
	if err := netlink.LinkSetUp(veth); err != nil {
		t.Fatal(err)
	}
	l.configure(p)
	return p
}

// configure gives eth0 its addresses (IPv6 without DAD, ready at once),
// brings it up and binds the packet socket to it.
func (l *lab) configure(p *peer) {
	t := l.t
	t.Helper()
	h, err := netlink.NewHandleAt(p.ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	eth, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []*netlink.Addr{
		{IPNet: &net.IPNet{IP: p.v4.AsSlice(), Mask: net.CIDRMask(24, 32)}},
		{IPNet: &net.IPNet{IP: p.v6.AsSlice(), Mask: net.CIDRMask(64, 128)}, Flags: unix.IFA_F_NODAD},
	} {
		if err := h.AddrAdd(eth, a); err != nil {
			t.Fatalf("address %s: %v", a.IPNet, err)
		}
	}
	if err := h.LinkSetUp(eth); err != nil {
		t.Fatal(err)
	}
	p.ifindex = eth.Attrs().Index
	if err := unix.Bind(p.fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: p.ifindex}); err != nil {
		t.Fatalf("binding packet socket: %v", err)
	}
}

func (l *lab) close() {
	for _, p := range l.peers {
		unix.Close(p.fd)
		p.ns.Close()
	}
	l.home.Close()
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// delivered writes frame, with a unique trailer, on from's eth0 and reports
// whether it shows up on to's eth0 within wait.
func (l *lab) delivered(from, to *peer, frame []byte, wait time.Duration) bool {
	l.t.Helper()
	mark := make([]byte, 12)
	_, _ = rand.Read(mark)
	frame = withTrailer(frame, mark)
	dst := &unix.SockaddrLinklayer{Ifindex: from.ifindex, Halen: 6}
	copy(dst.Addr[:], frame[:6])
	if err := unix.Sendto(from.fd, frame, 0, dst); err != nil {
		l.t.Fatalf("sending from %s: %v", from.port, err)
	}
	return seen(l.t, to.fd, mark, wait)
}

// withTrailer appends mark to frame and, for IP, grows the length field to
// cover it: br_netfilter trims whatever lies past an IP packet's length.
func withTrailer(frame, mark []byte) []byte {
	out := append(append([]byte{}, frame...), mark...)
	l3 := 14
	if binary.BigEndian.Uint16(out[12:]) == unix.ETH_P_8021Q {
		l3 = 18
	}
	ip, grow := out[l3:], uint16(len(mark))
	switch binary.BigEndian.Uint16(out[l3-2:]) {
	case unix.ETH_P_IP:
		binary.BigEndian.PutUint16(ip[2:], binary.BigEndian.Uint16(ip[2:])+grow)
		binary.BigEndian.PutUint16(ip[10:], 0)
		binary.BigEndian.PutUint16(ip[10:], checksum(ip[:20]))
	case unix.ETH_P_IPV6:
		binary.BigEndian.PutUint16(ip[4:], binary.BigEndian.Uint16(ip[4:])+grow)
	}
	return out
}

// seen reads fd until a frame holding mark arrives or wait has passed.
func seen(t testing.TB, fd int, mark []byte, wait time.Duration) bool {
	t.Helper()
	tv := unix.NsecToTimeval((50 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 65536)
	for deadline := time.Now().Add(wait); time.Now().Before(deadline); {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err == nil && bytes.Contains(buf[:n], mark) {
			return true
		}
	}
	return false
}
