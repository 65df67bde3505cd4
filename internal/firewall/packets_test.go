package firewall

// Real packets through the table, in a throwaway namespace that plays the
// host: two ournet networks and a bridge of someone else's, each with
// "containers" (namespaces of their own on veths), and an outside host on
// an uplink; FORWARD's policy is DROP, as dockerd leaves it, and
// br_netfilter passes bridged traffic through the hooks, as on a host
// with dockerd.

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/ournet/ournet/internal/iptables"
	"github.com/ournet/ournet/internal/testns"
)

// box is a namespace joined to the host by a veth: a container on a
// bridge, or the outside host on the uplink.
type box struct {
	name string
	ns   netns.NsHandle
	addr netip.Addr
}

// in runs fn with this thread in b's namespace: sockets made there are b's.
func (b *box) in(t *testing.T, fn func()) {
	t.Helper()
	testns.In(t, b.ns, fn)
}

// newBox makes a namespace with eth0 at addr (its gateway gw), whose veth's
// host end is port, attached to bridge master if not nil; it must run on
// the locked thread of testns.Do, in the host's namespace.
func newBox(t *testing.T, name, port string, master netlink.Link, addr, gw netip.Prefix) *box {
	t.Helper()
	home, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer home.Close()
	ns, err := netns.New() // and this thread is in it
	if err != nil {
		t.Fatal(err)
	}
	if err := netns.Set(home); err != nil {
		t.Fatal(err)
	}
	b := &box{name: name, ns: ns, addr: addr.Addr()}
	t.Cleanup(func() { ns.Close() })
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: port}, PeerName: "eth0"}
	if master != nil {
		veth.MasterIndex = master.Attrs().Index
	}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	peer, err := netlink.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetNsFd(peer, int(ns)); err != nil {
		t.Fatal(err)
	}
	host, _ := netlink.LinkByName(port)
	if err := netlink.LinkSetUp(host); err != nil {
		t.Fatal(err)
	}
	if master == nil {
		if err := netlink.AddrAdd(host, &netlink.Addr{IPNet: ipNet(gw)}); err != nil {
			t.Fatal(err)
		}
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	for _, n := range []string{"lo", "eth0"} {
		l, err := h.LinkByName(n)
		if err != nil {
			t.Fatal(err)
		}
		if n == "eth0" {
			if err := h.AddrAdd(l, &netlink.Addr{IPNet: ipNet(addr)}); err != nil {
				t.Fatal(err)
			}
		}
		if err := h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
		if n == "eth0" {
			if err := h.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: gw.Addr().AsSlice()}); err != nil {
				t.Fatal(err)
			}
		}
	}
	return b
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// serve answers every TCP connection on port with the address it came
// from, until the test ends.
func (b *box) serve(t *testing.T, port int) {
	t.Helper()
	var l net.Listener
	b.in(t, func() {
		var err error
		if l, err = net.Listen("tcp4", fmt.Sprintf(":%d", port)); err != nil {
			t.Fatal(err)
		}
	})
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
			_, _ = io.WriteString(c, host)
			c.Close()
		}
	}()
}

// seenAs connects from b to addr:port and returns the source address the
// server saw; an error if nothing answered within a second.
func (b *box) seenAs(t *testing.T, addr string, port int) (string, error) {
	t.Helper()
	var c net.Conn
	var err error
	b.in(t, func() { c, err = net.DialTimeout("tcp4", fmt.Sprintf("%s:%d", addr, port), time.Second) })
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	got, err := io.ReadAll(c)
	return string(got), err
}

// pings says whether b gets an answer to one ping of addr within a second.
func (b *box) pings(t *testing.T, addr string) bool {
	t.Helper()
	var err error
	b.in(t, func() { err = exec.Command("busybox", "ping", "-c", "1", "-W", "1", addr).Run() })
	return err == nil
}

func run(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// forwardingFirewall turns on forwarding and br_netfilter's iptables
// calls in the test's (throwaway) namespace and returns a firewall set up
// there.
func forwardingFirewall(t *testing.T) *Firewall {
	t.Helper()
	run(t, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.bridge.bridge-nf-call-iptables=1")
	fw, _ := newKernelFirewall(t)
	if err := fw.Setup(); err != nil {
		t.Fatal(err)
	}
	return fw
}

// newBridge makes bridge name, up, with address gw; in ournet's group if
// ours. It must run in the test's (throwaway) namespace.
func newBridge(t *testing.T, name string, gw netip.Prefix, ours bool) netlink.Link {
	t.Helper()
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
	if err := netlink.LinkAdd(br); err != nil {
		t.Fatal(err)
	}
	if ours {
		if err := netlink.LinkSetGroup(br, int(BridgeGroup)); err != nil {
			t.Fatal(err)
		}
	}
	if err := netlink.AddrAdd(br, &netlink.Addr{IPNet: ipNet(gw)}); err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(br); err != nil {
		t.Fatal(err)
	}
	return br
}

// What leaves a network is masqueraded, except inside the network
// (bridged) and back into its own bridge; what leaves one for a bridge
// that is not ournet's is dropped unless DNATed there (published), and
// then masqueraded; a port published on another ournet network is
// reached, masqueraded; nothing from the other bridge gets in.
func TestPacketsInNetns(t *testing.T) {
	testns.Do(t, func() {
		if _, err := os.Stat("/proc/sys/net/bridge/bridge-nf-call-iptables"); err != nil {
			t.Fatalf("br_netfilter is needed (dockerd needs it too): %v", err)
		}
		fw := forwardingFirewall(t)
		run(t, "iptables", "-P", "FORWARD", "DROP")
		p := netip.MustParsePrefix
		masq := map[iptables.Family]bool{iptables.IPv4: true}
		br1 := newBridge(t, "ournet-p1", p("198.18.91.1/24"), true)
		br2 := newBridge(t, "ournet-p2", p("198.18.93.1/24"), true)
		other := newBridge(t, "br-0123456789ab", p("198.18.92.1/24"), false) // an engine network's
		dock := newBridge(t, "docker0", p("198.18.94.1/24"), false)
		hostbr := newBridge(t, "br0", p("198.18.95.1/24"), false) // the host's own: a LAN, an uplink
		br3 := newBridge(t, "ournet-p3", p("198.18.96.1/24"), true)
		br4 := newBridge(t, "ournet-p4", p("198.18.97.1/24"), true)
		br5 := newBridge(t, "ournet-p5", p("198.18.98.1/24"), true)
		br6 := newBridge(t, "ournet-p6", p("198.18.99.1/24"), true)
		tcp := uint8(6)
		for _, n := range []Network{
			{ID: "p10000000000", Bridge: "ournet-p1", Subnets: []netip.Prefix{p("198.18.91.0/24")}, ICC: true, Masquerade: masq},
			{ID: "p20000000000", Bridge: "ournet-p2", Subnets: []netip.Prefix{p("198.18.93.0/24")}, ICC: true, Masquerade: masq},
			// Gateway mode routed, r1's port 80 published (open), icc on;
			// and icc off, r3's port 80 published.
			{ID: "p30000000000", Bridge: "ournet-p3", Subnets: []netip.Prefix{p("198.18.96.0/24")}, ICC: true,
				Routed: map[iptables.Family]bool{iptables.IPv4: true}, Open: []Opening{{Proto: tcp, Addr: netip.MustParseAddr("198.18.96.10"), Port: 80}}},
			{ID: "p40000000000", Bridge: "ournet-p4", Subnets: []netip.Prefix{p("198.18.97.0/24")},
				Routed: map[iptables.Family]bool{iptables.IPv4: true}, Open: []Opening{{Proto: tcp, Addr: netip.MustParseAddr("198.18.97.10"), Port: 80}}},
			// Internal; its containers given a default route anyway (a
			// container with NET_ADMIN can add one).
			{ID: "p50000000000", Bridge: "ournet-p5", Subnets: []netip.Prefix{p("198.18.98.0/24")}, ICC: true, Internal: true},
			// nat, icc off, t1's port 80 published; the outside's uplink
			// (up0) trusted, and the network's own bridge listed too.
			{ID: "p60000000000", Bridge: "ournet-p6", Subnets: []netip.Prefix{p("198.18.99.0/24")}, Masquerade: masq,
				Open: []Opening{{Proto: tcp, Addr: netip.MustParseAddr("198.18.99.10"), Port: 80}}, Trusted: []string{"ournet-p6", "up0"}},
		} {
			if err := fw.AddNetwork(n); err != nil {
				t.Fatal(err)
			}
		}
		c1 := newBox(t, "c1", "vc1", br1, p("198.18.91.10/24"), p("198.18.91.1/24"))
		c2 := newBox(t, "c2", "vc2", br1, p("198.18.91.11/24"), p("198.18.91.1/24"))
		e1 := newBox(t, "e1", "ve1", br2, p("198.18.93.10/24"), p("198.18.93.1/24"))
		d1 := newBox(t, "d1", "vd1", other, p("198.18.92.10/24"), p("198.18.92.1/24"))
		k1 := newBox(t, "k1", "vk1", dock, p("198.18.94.10/24"), p("198.18.94.1/24"))
		h1 := newBox(t, "h1", "vh1", hostbr, p("198.18.95.10/24"), p("198.18.95.1/24"))
		r1 := newBox(t, "r1", "vr1", br3, p("198.18.96.10/24"), p("198.18.96.1/24"))
		r2 := newBox(t, "r2", "vr2", br3, p("198.18.96.11/24"), p("198.18.96.1/24"))
		r3 := newBox(t, "r3", "vr3", br4, p("198.18.97.10/24"), p("198.18.97.1/24"))
		r4 := newBox(t, "r4", "vr4", br4, p("198.18.97.11/24"), p("198.18.97.1/24"))
		i1 := newBox(t, "i1", "vi1", br5, p("198.18.98.10/24"), p("198.18.98.1/24"))
		i2 := newBox(t, "i2", "vi2", br5, p("198.18.98.11/24"), p("198.18.98.1/24"))
		t1 := newBox(t, "t1", "vt1", br6, p("198.18.99.10/24"), p("198.18.99.1/24"))
		t2 := newBox(t, "t2", "vt2", br6, p("198.18.99.11/24"), p("198.18.99.1/24"))
		out := newBox(t, "outside", "up0", nil, p("203.0.113.2/24"), p("203.0.113.1/24"))
		for _, b := range []*box{c1, c2, e1, d1, k1, h1, r1, r2, r3, r4, i2, t1, t2, out} {
			b.serve(t, 80)
		}
		r1.serve(t, 81)
		t1.serve(t, 81)
		// Ports published, DNAT as portmap's rules make it, at c1's
		// gateway: 8080 to d1 on the other bridge, 8082 to e1 on the other
		// network.
		nftLoad(t, "the published ports' DNAT", `table ip pub {
	chain pre {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr 198.18.91.1 tcp dport 8080 dnat to 198.18.92.10:80
		ip daddr 198.18.91.1 tcp dport 8082 dnat to 198.18.93.10:80
		ip daddr 198.18.98.1 tcp dport 8082 dnat to 198.18.93.10:80
	}
}`)
		for _, c := range []struct {
			what string
			from *box
			to   string
			port int
			want string // the source the server sees; "" nothing answers
		}{
			{"inside the network (bridged): not masqueraded", c1, "198.18.91.11", 80, "198.18.91.10"},
			{"out to the uplink: masqueraded", c1, "203.0.113.2", 80, "203.0.113.1"},
			{"into another network: dropped", c1, "198.18.93.10", 80, ""},
			{"into an engine network's bridge (br- and its ID): dropped", c1, "198.18.92.10", 80, ""},
			{"into docker0: dropped", c1, "198.18.94.10", 80, ""},
			{"into the host's own bridge: reached, masqueraded", c1, "198.18.95.10", 80, "198.18.95.1"},
			{"from a bridge not ournet's: dropped", d1, "198.18.91.10", 80, ""},
			{"from the host's own bridge: dropped", h1, "198.18.91.10", 80, ""},
			{"a port published on a bridge not ournet's: reached, masqueraded", c1, "198.18.91.1", 8080, "198.18.92.1"},
			{"a port published on another network: reached, masqueraded", c1, "198.18.91.1", 8082, "198.18.93.1"},
			{"the outside to a container: dropped", out, "198.18.91.10", 80, ""},
			{"the outside to a routed network's container, a port not published: dropped", out, "198.18.96.10", 81, ""},
			{"the outside to a routed network's container, another container's port: dropped", out, "198.18.96.11", 80, ""},
			{"the outside to a port published on a routed network: reached, not masqueraded", out, "198.18.96.10", 80, "203.0.113.2"},
			{"another network to a port published on a routed network: reached, masqueraded", c1, "198.18.96.10", 80, "198.18.96.1"},
			{"a bridge not ournet's to a port published on a routed network: reached", d1, "198.18.96.10", 80, "198.18.92.10"},
			{"icc on, inside a routed network: reached", r2, "198.18.96.10", 81, "198.18.96.11"},
			{"icc off, inside a routed network, to its published port: dropped", r4, "198.18.97.10", 80, ""},
			{"the outside to a port published on a routed, icc off network: reached", out, "198.18.97.10", 80, "203.0.113.2"},
			{"inside an internal network: reached", i1, "198.18.98.11", 80, "198.18.98.10"},
			{"an internal network to a port published on a routed network: dropped", i1, "198.18.96.10", 80, ""},
			{"an internal network to a port published on another network, at its own gateway: dropped", i1, "198.18.98.1", 8082, ""},
			{"an internal network to the uplink: dropped", i1, "203.0.113.2", 80, ""},
			{"out of a routed network: not masqueraded", r1, "203.0.113.2", 80, "198.18.96.10"},
			{"a trusted interface to a published port at the container's address: reached", out, "198.18.99.10", 80, "203.0.113.2"},
			{"a trusted interface to a port not published: dropped", out, "198.18.99.10", 81, ""},
			{"a trusted interface to another container's port: dropped", out, "198.18.99.11", 80, ""},
			{"an interface not trusted to a published port at the container's address: dropped", h1, "198.18.99.10", 80, ""},
			{"another network to a published port at the container's address: dropped", c1, "198.18.99.10", 80, ""},
			{"icc off, its own bridge listed as trusted, to its published port: dropped", t2, "198.18.99.10", 80, ""},
		} {
			got, err := c.from.seenAs(t, c.to, c.port)
			switch {
			case c.want == "" && err == nil:
				t.Errorf("%s: %s reached %s:%d (seen as %s)", c.what, c.from.name, c.to, c.port, got)
			case c.want != "" && (err != nil || got != c.want):
				t.Errorf("%s: %s to %s:%d seen as %q (%v), want %s", c.what, c.from.name, c.to, c.port, got, err, c.want)
			}
		}
		// ICMP reaches a routed network's containers from outside, as with
		// the bridge driver; not from another container network, and not a
		// nat network's.
		for _, c := range []struct {
			what string
			from *box
			to   string
			want bool
		}{
			{"the outside pings a routed network's container", out, "198.18.96.10", true},
			{"another network's container pings a routed network's", c1, "198.18.96.10", false},
			{"the outside pings a nat network's container", out, "198.18.91.10", false},
		} {
			if got := c.from.pings(t, c.to); got != c.want {
				t.Errorf("%s: answered %v, want %v", c.what, got, c.want)
			}
		}
	})
}

// A user's SNAT in iptables' nat POSTROUTING (the bridge driver's way to
// give a network a fixed source address outside: its MASQUERADE comes
// after) applies: ournet's masquerade runs after that chain.
func TestUserSNATComesFirstInNetns(t *testing.T) {
	testns.Do(t, func() {
		fw := forwardingFirewall(t)
		p := netip.MustParsePrefix
		br := newBridge(t, "ournet-s1", p("198.18.100.1/24"), true)
		if err := fw.AddNetwork(Network{ID: "s10000000000", Bridge: "ournet-s1", Subnets: []netip.Prefix{p("198.18.100.0/24")}, ICC: true,
			Masquerade: map[iptables.Family]bool{iptables.IPv4: true}}); err != nil {
			t.Fatal(err)
		}
		c1 := newBox(t, "c1", "vs1", br, p("198.18.100.10/24"), p("198.18.100.1/24"))
		out := newBox(t, "outside", "up0", nil, p("203.0.113.2/24"), p("203.0.113.1/24"))
		up, err := netlink.LinkByName("up0")
		if err != nil {
			t.Fatal(err)
		}
		if err := netlink.AddrAdd(up, &netlink.Addr{IPNet: ipNet(p("203.0.113.9/24"))}); err != nil {
			t.Fatal(err)
		}
		out.serve(t, 80)
		if got, err := c1.seenAs(t, "203.0.113.2", 80); err != nil || got != "203.0.113.1" {
			t.Fatalf("without the user's rule: seen as %q (%v), want the masquerade's 203.0.113.1", got, err)
		}
		run(t, "iptables", "-t", "nat", "-I", "POSTROUTING", "-s", "198.18.100.0/24", "-o", "up0", "-j", "SNAT", "--to-source", "203.0.113.9")
		if got, err := c1.seenAs(t, "203.0.113.2", 80); err != nil || got != "203.0.113.9" {
			t.Fatalf("with the user's SNAT: seen as %q (%v), want 203.0.113.9", got, err)
		}
	})
}

// A UDP client that keeps sending to a routed network's open port stops
// getting in once the opening is closed (the container's ports revoked,
// or the container gone and its address soon another's): the change
// forgets its conntrack entry, which the replies rule would accept.
func TestClosedOpeningForgetsUDPFlowsInNetns(t *testing.T) {
	testns.Do(t, func() {
		fw := forwardingFirewall(t)
		p := netip.MustParsePrefix
		br := newBridge(t, "ournet-u1", p("198.18.99.1/24"), true)
		n := Network{ID: "u10000000000", Bridge: "ournet-u1", Subnets: []netip.Prefix{p("198.18.99.0/24")}, ICC: true,
			Routed: map[iptables.Family]bool{iptables.IPv4: true}, Open: []Opening{{Proto: unix.IPPROTO_UDP, Addr: netip.MustParseAddr("198.18.99.10"), Port: 53}}}
		if err := fw.AddNetwork(n); err != nil {
			t.Fatal(err)
		}
		r1 := newBox(t, "r1", "vu1", br, p("198.18.99.10/24"), p("198.18.99.1/24"))
		out := newBox(t, "outside", "up0", nil, p("203.0.113.2/24"), p("203.0.113.1/24"))
		var srv, cl *net.UDPConn
		r1.in(t, func() {
			var err error
			if srv, err = net.ListenUDP("udp4", &net.UDPAddr{Port: 53}); err != nil {
				t.Fatal(err)
			}
		})
		defer srv.Close()
		go func() { // an echo
			b := make([]byte, 64)
			for {
				k, a, err := srv.ReadFromUDP(b)
				if err != nil {
					return
				}
				_, _ = srv.WriteToUDP(b[:k], a)
			}
		}()
		out.in(t, func() {
			var err error
			if cl, err = net.ListenUDP("udp4", &net.UDPAddr{Port: 40000}); err != nil {
				t.Fatal(err)
			}
		})
		defer cl.Close()
		// answered says whether one of three datagrams (the same flow) gets
		// its own echo (not a late one of an earlier datagram's).
		seq := 0
		answered := func() bool {
			for range 3 {
				seq++
				want := fmt.Sprint(seq)
				_, _ = cl.WriteToUDP([]byte(want), &net.UDPAddr{IP: net.IPv4(198, 18, 99, 10), Port: 53})
				_ = cl.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
				for {
					b := make([]byte, 64)
					k, _, err := cl.ReadFromUDP(b)
					if err != nil {
						break
					}
					if string(b[:k]) == want {
						return true
					}
				}
			}
			return false
		}
		if !answered() {
			t.Fatal("the open port does not answer, so the next check would prove nothing")
		}
		n.Open = nil
		if err := fw.AddNetwork(n); err != nil {
			t.Fatal(err)
		}
		if answered() {
			t.Error("after the opening closed, the client's flow still reaches the container")
		}
	})
}
