package overlay

// A kernel test: two hosts (network namespaces) on an underlay bridge in a
// namespace of its own, each with a bridge holding the same gateway and a
// container; ournet's VXLAN device and peer entries carry packets between
// the containers, and nothing else does. Only addresses inside these
// namespaces are used (198.51.100.0/24, 10.50.0.0/24 with no route out).

import (
	"fmt"
	"math/rand"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

func sh(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

type lab struct {
	t               *testing.T
	u, a, b, ca, cb string
	macA, macB      net.HardwareAddr
	ma, mb          *Manager
}

func newLab(t *testing.T) *lab {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("kernel test: must run as root (make test does)")
	}
	r := fmt.Sprintf("%04x", rand.Intn(1<<16))
	l := &lab{t: t, u: "oxu" + r, a: "oxa" + r, b: "oxb" + r, ca: "oxca" + r, cb: "oxcb" + r,
		macA: net.HardwareAddr{0x02, 0x42, 10, 50, 0, 10}, macB: net.HardwareAddr{0x02, 0x42, 10, 50, 0, 20}}
	for _, ns := range []string{l.u, l.a, l.b, l.ca, l.cb} {
		sh(t, "ip", "netns", "add", ns)
		ns := ns
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
		sh(t, "ip", "-n", ns, "link", "set", "lo", "up")
	}
	sh(t, "ip", "-n", l.u, "link", "add", "ul", "type", "bridge")
	sh(t, "ip", "-n", l.u, "link", "set", "ul", "up")
	for i, h := range []string{l.a, l.b} {
		sh(t, "ip", "-n", l.u, "link", "add", "p"+h, "type", "veth", "peer", "name", "eth0", "netns", h)
		sh(t, "ip", "-n", l.u, "link", "set", "p"+h, "master", "ul", "up")
		sh(t, "ip", "-n", h, "addr", "add", fmt.Sprintf("198.51.100.%d/24", i+1), "dev", "eth0")
		sh(t, "ip", "-n", h, "link", "set", "eth0", "up")
		sh(t, "ip", "-n", h, "link", "add", "br0", "type", "bridge")
		sh(t, "ip", "-n", h, "addr", "add", "10.50.0.1/24", "dev", "br0") // the same gateway on every host
		sh(t, "ip", "-n", h, "link", "set", "br0", "up")
		c, mac, ip := l.ca, l.macA, "10.50.0.10/24"
		if i == 1 {
			c, mac, ip = l.cb, l.macB, "10.50.0.20/24"
		}
		sh(t, "ip", "-n", h, "link", "add", "v"+c, "type", "veth", "peer", "name", "eth0", "netns", c)
		sh(t, "ip", "-n", h, "link", "set", "v"+c, "master", "br0", "up")
		sh(t, "ip", "-n", c, "link", "set", "eth0", "address", mac.String(), "mtu", "1450", "up")
		sh(t, "ip", "-n", c, "addr", "add", ip, "dev", "eth0")
		sh(t, "ip", "-n", c, "route", "add", "default", "via", "10.50.0.1")
	}
	l.ma, l.mb = l.manager(l.a), l.manager(l.b)
	return l
}

func (l *lab) manager(ns string) *Manager {
	l.t.Helper()
	h, err := netns.GetFromName(ns)
	if err != nil {
		l.t.Fatal(err)
	}
	nh, err := netlink.NewHandleAt(h)
	h.Close()
	if err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(nh.Close)
	return New(nh)
}

// ping sends one ping, for a check that nothing gets through.
func (l *lab) ping(from, to string) error { return l.ping1(from, to, "2") }

// reach is a check that to answers: up to three pings, so that an ARP
// resolution a failed ping left pending (its next probe up to a second
// away) does not fail it.
func (l *lab) reach(from, to string) (err error) {
	for range 3 {
		if err = l.ping1(from, to, "1"); err == nil {
			return nil
		}
	}
	return err
}

// ping1 sends one ping and waits wait seconds for its answer.
func (l *lab) ping1(from, to, wait string) error {
	out, err := exec.Command("ip", "netns", "exec", from, "busybox", "ping", "-c", "1", "-W", wait, to).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ping %s from %s: %v %s", to, from, err, out)
	}
	return nil
}

func TestVXLANCarriesOnlyWhatTheStoreSays(t *testing.T) {
	l := newLab(t)
	dev := func(local string) Device {
		return Device{Name: "ov-4096", VNI: 4096, Local: netip.MustParseAddr(local), Bridge: "br0", MTU: 1500 - Overhead, Owner: "net1"}
	}
	for i, m := range []*Manager{l.ma, l.mb} {
		for try := 0; try < 2; try++ { // idempotent
			if err := m.Ensure(dev(fmt.Sprintf("198.51.100.%d", i+1))); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := l.ping(l.ca, "10.50.0.20"); err == nil {
		t.Fatal("the containers talk before any peer is programmed: something floods")
	}
	peerB := Peer{Addr: netip.MustParseAddr("10.50.0.20"), MAC: l.macB, VTEP: netip.MustParseAddr("198.51.100.2")}
	peerA := Peer{Addr: netip.MustParseAddr("10.50.0.10"), MAC: l.macA, VTEP: netip.MustParseAddr("198.51.100.1")}
	if a, r, err := l.ma.SetPeers("ov-4096", []Peer{peerB}); err != nil || a != 2 || r != 0 {
		t.Fatalf("SetPeers on A: +%d -%d %v", a, r, err)
	}
	if _, _, err := l.mb.SetPeers("ov-4096", []Peer{peerA}); err != nil {
		t.Fatal(err)
	}
	if err := l.reach(l.ca, "10.50.0.20"); err != nil {
		t.Fatalf("across the overlay: %v", err)
	}
	if err := l.reach(l.cb, "10.50.0.10"); err != nil {
		t.Fatalf("across the overlay, back: %v", err)
	}
	// ARP for the remote container is answered on host A (proxy): the
	// neighbour entry is the one ournet set, permanent.
	if out := sh(t, "ip", "-n", l.a, "neigh", "show", "dev", "ov-4096"); !strings.Contains(out, "10.50.0.20 lladdr 02:42:0a:32:00:14 PERMANENT") {
		t.Fatalf("neighbour entries on A: %s", out)
	}
	if out := sh(t, "ip", "-d", "-n", l.a, "link", "show", "ov-4096"); !strings.Contains(out, "nolearning") || !strings.Contains(out, "proxy") || !strings.Contains(out, "mtu 1450") {
		t.Fatalf("device on A: %s", out)
	}
	// The same list again changes nothing.
	if a, r, err := l.ma.SetPeers("ov-4096", []Peer{peerB}); err != nil || a+r != 0 {
		t.Fatalf("SetPeers again: +%d -%d %v", a, r, err)
	}
	// The endpoint moved to another host (a stale entry): replaced.
	moved := peerB
	moved.VTEP = netip.MustParseAddr("198.51.100.3")
	if a, r, err := l.ma.SetPeers("ov-4096", []Peer{moved}); err != nil || a != 1 || r != 1 {
		t.Fatalf("SetPeers with the peer moved: +%d -%d %v", a, r, err)
	}
	if err := l.ping(l.ca, "10.50.0.20"); err == nil {
		t.Fatal("packets still reach the endpoint's old host")
	}
	// The endpoint gone: nothing of it is left on A.
	if _, r, err := l.ma.SetPeers("ov-4096", nil); err != nil || r != 2 {
		t.Fatalf("SetPeers with none: -%d %v", r, err)
	}
	if out := sh(t, "ip", "-n", l.a, "neigh", "show", "dev", "ov-4096"); strings.Contains(out, "10.50.0.20") {
		t.Fatalf("stale neighbour left: %s", out)
	}
	// (The bridge's own learnt entry for the MAC, "master br0", points at
	// the tunnel port whatever the remote host is, and ages out.)
	for _, line := range strings.Split(sh(t, "bridge", "-n", l.a, "fdb", "show", "dev", "ov-4096"), "\n") {
		if strings.Contains(line, "02:42:0a:32:00:14") && strings.Contains(line, " dst ") {
			t.Fatalf("stale forwarding entry left: %s", line)
		}
	}
	if err := l.ma.Delete("ov-4096", "other-net"); err == nil {
		t.Fatal("deleted a device of another owner")
	}
	if err := l.ma.Delete("ov-4096", "net1"); err != nil {
		t.Fatal(err)
	}
	if err := l.ma.Delete("ov-4096", "net1"); err != nil {
		t.Fatalf("deleting a gone device: %v", err)
	}
}
