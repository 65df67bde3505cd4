package overlay

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// IPv4 between a local container and a remote one takes the fast path, past
// the bridge: with both bridges dropping every frame they forward, the
// containers still talk, but only with their own
// addresses; without the fast path they do not. Neighbour entries are
// static here: ARP takes the bridge, as it always does.
func TestFastPathSkipsTheBridge(t *testing.T) {
	l := newLab(t)
	a, b := l.overlay()
	if err := l.reach(l.ca, "10.50.0.20"); err != nil {
		t.Fatalf("through the bridges: %v", err)
	}
	bridges := func(verdict string) { // what both bridges do with every frame they would forward
		for _, ns := range []string{l.a, l.b} {
			sh(t, "ip", "netns", "exec", ns, "nft", "add table bridge t { chain f { type filter hook forward priority 0; policy "+verdict+"; }; }")
		}
	}
	bridges("drop")
	if err := l.ping(l.ca, "10.50.0.20"); err == nil {
		t.Fatal("the containers talk with the bridges dropping everything: the test proves nothing")
	}
	var filters [2]string
	for try := 0; try < 2; try++ { // idempotent: the second run changes nothing
		if err := l.ma.SetFastPath("ov-4096", []Local{a}, []net.HardwareAddr{b.MAC}); err != nil {
			t.Fatal(err)
		}
		if err := l.mb.SetFastPath("ov-4096", []Local{b}, []net.HardwareAddr{a.MAC}); err != nil {
			t.Fatal(err)
		}
		// Each filter's mirred action has an index of its own: a filter
		// made again has a new one.
		filters[try] = sh(t, "tc", "-n", l.a, "filter", "show", "dev", a.Veth, "ingress") + sh(t, "tc", "-n", l.a, "filter", "show", "dev", "ov-4096", "ingress")
	}
	if filters[0] != filters[1] {
		t.Fatalf("the second run made the filters again:\n%s\nthen\n%s", filters[0], filters[1])
	}
	// Two root hash tables (one per priority), the pass and the link to
	// the MAC table, and in it one redirect, in the bucket of the
	// remote MAC's last byte; nothing else.
	out := sh(t, "tc", "-n", l.a, "filter", "show", "dev", a.Veth, "ingress")
	bucket := fmt.Sprintf("fh 1:%x:800 ", b.MAC[5])
	if strings.Count(out, "fh 8") != 4 || strings.Count(out, "fh 1:") != 2 || !strings.Contains(out, "fh 1: ht divisor 256") ||
		!strings.Contains(out, bucket) || !strings.Contains(out, "link 1:") || strings.Count(out, "mirred") != 1 {
		t.Fatalf("u32 entries on %s after two runs, want 4 in the roots, the MAC table and one redirect (%s):\n%s", a.Veth, bucket, out)
	}
	if err := l.reach(l.ca, "10.50.0.20"); err != nil {
		t.Fatalf("over the fast path: %v", err)
	}
	if err := l.reach(l.cb, "10.50.0.10"); err != nil {
		t.Fatalf("over the fast path, back: %v", err)
	}
	// Another source address takes the bridge, where anti-spoofing would
	// judge it; here the bridge drops it.
	sh(t, "ip", "-n", l.ca, "addr", "add", "10.50.0.99/24", "dev", "eth0")
	if out, err := l.pingFrom(l.ca, "10.50.0.99", "10.50.0.20"); err == nil {
		t.Fatalf("a spoofed source took the fast path: %s", out)
	}
	// A DHCP server's reply (UDP from port 67) takes the bridge, where
	// anti-spoofing drops it; from another port, UDP takes the fast path.
	if !l.udpArrives(l.ca, 68, l.cb, "10.50.0.20") {
		t.Fatal("UDP from port 68 did not take the fast path")
	}
	if l.udpArrives(l.ca, 67, l.cb, "10.50.0.20") {
		t.Fatal("UDP from port 67 (a DHCP server's) took the fast path")
	}
	// A remote endpoint gone: the frames for it take the bridge again.
	if err := l.ma.SetFastPath("ov-4096", []Local{a}, nil); err != nil {
		t.Fatal(err)
	}
	if err := l.ping(l.ca, "10.50.0.20"); err == nil {
		t.Fatal("the fast path outlived the remote endpoints")
	}
	if out := sh(t, "tc", "-n", l.a, "qdisc", "show", "dev", a.Veth); strings.Contains(out, "clsact") {
		t.Fatalf("a veth with no fast path keeps its qdisc: %s", out)
	}
	if err := l.mb.SetFastPath("ov-4096", nil, nil); err != nil {
		t.Fatal(err)
	}
	for _, dev := range []string{"ov-4096", b.Veth} {
		if out := sh(t, "tc", "-n", l.b, "qdisc", "show", "dev", dev); strings.Contains(out, "clsact") {
			t.Fatalf("%s keeps its qdisc with no fast path: %s", dev, out)
		}
	}
	bridges("accept")
	if err := l.reach(l.cb, "10.50.0.10"); err != nil {
		t.Fatalf("through the bridges again: %v", err)
	}
}

// overlay joins the lab's two hosts with a VXLAN device each, each
// knowing the other's container as a peer, and gives the containers
// static neighbour entries (ARP takes the bridge, as it always does); it
// returns the two containers as local endpoints.
func (l *lab) overlay() (a, b Local) {
	t := l.t
	t.Helper()
	for i, m := range []*Manager{l.ma, l.mb} {
		d := Device{Name: "ov-4096", VNI: 4096, Local: netip.MustParseAddr([]string{"198.51.100.1", "198.51.100.2"}[i]),
			Bridge: "br0", MTU: 1500 - Overhead, Owner: "net1"}
		if err := m.Ensure(d); err != nil {
			t.Fatal(err)
		}
	}
	a = Local{Veth: "v" + l.ca, MAC: l.macA, IPv4: netip.MustParseAddr("10.50.0.10")}
	b = Local{Veth: "v" + l.cb, MAC: l.macB, IPv4: netip.MustParseAddr("10.50.0.20")}
	if _, _, err := l.ma.SetPeers("ov-4096", []Peer{{Addr: b.IPv4, MAC: b.MAC, VTEP: netip.MustParseAddr("198.51.100.2")}}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := l.mb.SetPeers("ov-4096", []Peer{{Addr: a.IPv4, MAC: a.MAC, VTEP: netip.MustParseAddr("198.51.100.1")}}); err != nil {
		t.Fatal(err)
	}
	sh(t, "ip", "-n", l.ca, "neigh", "replace", "10.50.0.20", "lladdr", l.macB.String(), "dev", "eth0", "nud", "permanent")
	sh(t, "ip", "-n", l.cb, "neigh", "replace", "10.50.0.10", "lladdr", l.macA.String(), "dev", "eth0", "nud", "permanent")
	return a, b
}

func (l *lab) pingFrom(ns, src, to string) (string, error) {
	out, err := exec.Command("ip", "netns", "exec", ns, "busybox", "ping", "-c", "1", "-W", "2", "-I", src, to).CombinedOutput()
	return string(out), err
}

// udpArrives sends one datagram from port sport in ns to dst:9999, and says
// whether a listener in dstNS got it within a second.
func (l *lab) udpArrives(ns string, sport int, dstNS, dst string) bool {
	l.t.Helper()
	recv := exec.Command("ip", "netns", "exec", dstNS, "python3", "-c",
		"import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('',9999))\nprint('ready',flush=True)\ns.settimeout(1)\n"+
			"try:\n  print(s.recv(100).decode(),flush=True)\nexcept socket.timeout:\n  pass\n")
	out, err := recv.StdoutPipe()
	if err != nil {
		l.t.Fatal(err)
	}
	if err := recv.Start(); err != nil {
		l.t.Fatal(err)
	}
	buf := make([]byte, 100)
	n, _ := out.Read(buf) // "ready"
	if !strings.HasPrefix(string(buf[:n]), "ready") {
		l.t.Fatalf("UDP listener in %s: %q", dstNS, buf[:n])
	}
	sh(l.t, "ip", "netns", "exec", ns, "python3", "-c", fmt.Sprintf(
		"import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('',%d))\ns.sendto(b'dgram',(%q,9999))", sport, dst))
	rest, _ := io.ReadAll(out)
	_ = recv.Wait()
	return strings.Contains(string(buf[:n])+string(rest), "dgram")
}

// With many remote endpoints, each veth's redirects are spread over a
// hash table by the last byte of their MAC, and so are the VXLAN device's
// to many local ones: the one for an endpoint whose bucket it shares with
// others still forwards, frames for MACs not listed do not take the fast
// path, and the linear redirects of an older version are replaced. The
// bridges drop every frame they would forward, so only the fast path
// carries anything.
func TestFastPathManyRemotes(t *testing.T) {
	l := newLab(t)
	a, b := l.overlay()
	for _, ns := range []string{l.a, l.b} {
		sh(t, "ip", "netns", "exec", ns, "nft", "add table bridge t { chain f { type filter hook forward priority 0; policy drop; }; }")
	}
	// Host b has three more local endpoints in b's bucket, on veths of
	// their own.
	locals := []Local{b}
	for i := range 3 {
		name := fmt.Sprintf("vmore%d", i)
		sh(t, "ip", "-n", l.b, "link", "add", name, "type", "veth", "peer", "name", name+"p")
		sh(t, "ip", "-n", l.b, "link", "set", name, "master", "br0", "up")
		locals = append(locals, Local{Veth: name, MAC: net.HardwareAddr{0x02, 0x42, 0x0c, 0, byte(i), b.MAC[5]}, IPv4: netip.AddrFrom4([4]byte{10, 50, 1, byte(i)})})
	}
	if err := l.mb.SetFastPath("ov-4096", locals, []net.HardwareAddr{a.MAC}); err != nil {
		t.Fatal(err)
	}
	if out := sh(t, "tc", "-n", l.b, "filter", "show", "dev", "ov-4096", "ingress"); strings.Count(out, "mirred") != 4 ||
		strings.Count(out, fmt.Sprintf("key ht 1 bkt %x ", b.MAC[5])) != 4 {
		t.Fatalf("the VXLAN device's redirects, want 4 in bucket %x:\n%s", b.MAC[5], out)
	}
	// An older version's layout on a's veth: linear redirects in the root.
	sh(t, "tc", "-n", l.a, "qdisc", "add", "dev", a.Veth, "clsact")
	sh(t, "tc", "-n", l.a, "filter", "add", "dev", a.Veth, "ingress", "prio", "2", "protocol", "ip", "u32",
		"match", "ether", "dst", b.MAC.String(), "action", "mirred", "egress", "redirect", "dev", "ov-4096")
	var others, sameBucket []net.HardwareAddr
	for i := range 300 {
		mac := net.HardwareAddr{0x02, 0x42, 0x0b, 0, byte(i >> 8), byte(i)}
		others = append(others, mac)
		if mac[5] == b.MAC[5] {
			sameBucket = append(sameBucket, mac)
		}
	}
	if len(sameBucket) < 2 {
		t.Fatalf("%d other remotes in %s's bucket: the test proves nothing", len(sameBucket), b.MAC)
	}
	redirects := func(want int) {
		t.Helper()
		out := sh(t, "tc", "-n", l.a, "filter", "show", "dev", a.Veth, "ingress")
		if n, in := strings.Count(out, "mirred"), strings.Count(out, "key ht 1 bkt"); n != want || in != want {
			t.Fatalf("%d redirects on %s, %d of them in the MAC table; want %d in it", n, a.Veth, in, want)
		}
	}
	if err := l.ma.SetFastPath("ov-4096", []Local{a}, append(slices.Clone(others), b.MAC)); err != nil {
		t.Fatal(err)
	}
	redirects(len(others) + 1)
	if err := l.reach(l.ca, "10.50.0.20"); err != nil {
		t.Fatalf("to a remote sharing its bucket with %d others: %v", len(sameBucket), err)
	}
	if err := l.ma.SetFastPath("ov-4096", []Local{a}, others); err != nil { // b gone, the others stay
		t.Fatal(err)
	}
	redirects(len(others))
	if err := l.ping(l.ca, "10.50.0.20"); err == nil {
		t.Fatal("frames for a remote no longer listed took the fast path")
	}
	if err := l.ma.SetFastPath("ov-4096", []Local{a}, []net.HardwareAddr{b.MAC}); err != nil {
		t.Fatal(err)
	}
	redirects(1)
	if err := l.reach(l.ca, "10.50.0.20"); err != nil {
		t.Fatalf("to the one remote left: %v", err)
	}
}
