package antispoof

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/ournet/ournet/internal/testns"
)

const (
	passWait = 2 * time.Second        // a frame that passes arrives in microseconds
	dropWait = 300 * time.Millisecond // how long a dropped frame is waited for
)

var (
	allNodes    = netip.MustParseAddr("ff02::1")
	linkLocal   = netip.MustParseAddr("fe80::42:c6ff:fe12:5a0a")
	foreignV6   = netip.MustParseAddr("2001:db8:90:ff::1")
	unspecified = netip.IPv6Unspecified()
	zero4       = netip.IPv4Unspecified()
)

type frameCase struct {
	name  string
	frame []byte
	pass  bool // with the checks on
}

// cases are frames a (the sender) writes, about b (its neighbour) and c
// (the observer). Every spoofed frame has a legitimate twin that passes.
func cases(a, b, c *peer) []frameCase {
	m, mb := a.mac, b.mac
	u4 := func(src netip.Addr, sport uint16) []byte { return ipv4(src, c.v4, 17, udp(sport, 9, []byte("x"))) }
	u6 := func(src netip.Addr, sport uint16) []byte { return ipv6(src, c.v6, 17, udp(sport, 9, []byte("x"))) }
	e4 := func(src net.HardwareAddr, p []byte) []byte { return ether(broadcast, src, 0x0800, p) }
	e6 := func(p []byte) []byte { return ether(broadcast, m, 0x86dd, p) }
	arpFrame := func(sha net.HardwareAddr, spa netip.Addr) []byte {
		return ether(broadcast, m, 0x0806, arp(1, sha, spa, c.v4))
	}
	weirdARP := arp(1, m, a.v4, c.v4)
	weirdARP[2], weirdARP[3] = 0x86, 0xdd // protocol IPv6: sender fields elsewhere
	return []frameCase{
		{"ipv4 own source", e4(m, u4(a.v4, 1234)), true},
		{"ipv4 neighbour's MAC", e4(mb, u4(a.v4, 1234)), false},
		{"ipv4 neighbour's address", e4(m, u4(b.v4, 1234)), false},
		{"ipv4 unspecified source", e4(m, u4(zero4, 1234)), false},
		{"dhcp client port", e4(m, u4(a.v4, 68)), true},
		{"dhcp server reply", e4(m, u4(a.v4, udpDHCPServer)), false},
		{"vlan tagged own source", vlanTagged(e4(m, u4(a.v4, 1234))), false},
		{"arp own sender", arpFrame(m, a.v4), true},
		{"arp probe", arpFrame(m, zero4), true},
		{"arp neighbour's address", arpFrame(m, b.v4), false},
		{"arp neighbour's MAC", arpFrame(mb, a.v4), false},
		{"arp not ethernet/ipv4", ether(broadcast, m, 0x0806, weirdARP), false},
		{"ipv6 own source", e6(u6(a.v6, 1234)), true},
		{"ipv6 link-local source", e6(u6(linkLocal, 1234)), true},
		{"ipv6 unspecified source", e6(u6(unspecified, 1234)), true},
		{"ipv6 neighbour's address", e6(u6(b.v6, 1234)), false},
		{"ipv6 foreign address", e6(u6(foreignV6, 1234)), false},
		{"dhcpv6 server reply", e6(u6(linkLocal, udpDHCPv6Server)), false},
		{"router advertisement", e6(ipv6(linkLocal, allNodes, 58, routerAdvert())), false},
		{"router advertisement behind ext header", e6(ipv6(linkLocal, allNodes, 60, destOpts(58, routerAdvert()))), false},
		{"redirect", e6(ipv6(linkLocal, c.v6, 58, redirect(linkLocal, foreignV6))), false},
		{"na own address", e6(ipv6(a.v6, allNodes, 58, neighAdvert(a.v6, m))), true},
		{"na own link-local", e6(ipv6(linkLocal, allNodes, 58, neighAdvert(linkLocal, m))), true},
		{"na neighbour's address", e6(ipv6(linkLocal, allNodes, 58, neighAdvert(b.v6, m))), false},
		{"ipv4 other MAC, other port", nil, true}, // filled in by the test
	}
}

// TestChecksDropSpoofedFrames sends each case from a filtered port and
// watches a peer: with the checks on, exactly the spoofed frames vanish;
// with them off, every frame arrives, so each case can fail.
func TestChecksDropSpoofedFrames(t *testing.T) {
	testns.Do(t, func() {
		l := newLab(t, 3)
		a, b, c := l.peers[0], l.peers[1], l.peers[2]
		f := New()
		for _, p := range []*peer{a, b} { // c has no checks
			if err := f.Add(p.endpoint()); err != nil {
				t.Fatal(err)
			}
		}
		run := func(on bool) {
			for _, tc := range cases(a, b, c) {
				from, to, frame := a, c, tc.frame
				if frame == nil { // a port without checks may send anything
					from, to, frame = c, b, ether(broadcast, a.mac, 0x0800, ipv4(a.v4, b.v4, 17, udp(1, 9, nil)))
				}
				want := tc.pass || !on
				wait := map[bool]time.Duration{true: passWait, false: dropWait}[want]
				if got := l.delivered(from, to, frame, wait); got != want {
					t.Errorf("checks on=%v: %s: delivered=%v, want %v", on, tc.name, got, want)
				}
			}
		}
		run(true)
		if err := f.Del(a.port); err != nil {
			t.Fatal(err)
		}
		if err := f.Settle(); err != nil {
			t.Fatal(err)
		}
		run(false)
	})
}

// TestEndpointWithoutAddresses: no IPv4 address means no IPv4 and only ARP
// probes; no IPv6 address means only link-local and :: sources.
func TestEndpointWithoutAddresses(t *testing.T) {
	testns.Do(t, func() {
		l := newLab(t, 2)
		a, c := l.peers[0], l.peers[1]
		if err := New().Add(Endpoint{Port: a.port, MAC: a.mac}); err != nil {
			t.Fatal(err)
		}
		for _, tc := range []frameCase{
			{"ipv4", ether(broadcast, a.mac, 0x0800, ipv4(a.v4, c.v4, 17, udp(1, 9, nil))), false},
			{"arp", ether(broadcast, a.mac, 0x0806, arp(1, a.mac, a.v4, c.v4)), false},
			{"arp probe", ether(broadcast, a.mac, 0x0806, arp(1, a.mac, zero4, c.v4)), true},
			{"ipv6 global", ether(broadcast, a.mac, 0x86dd, ipv6(a.v6, c.v6, 17, udp(1, 9, nil))), false},
			{"ipv6 link-local", ether(broadcast, a.mac, 0x86dd, ipv6(linkLocal, c.v6, 17, udp(1, 9, nil))), true},
			{"na global", ether(broadcast, a.mac, 0x86dd, ipv6(linkLocal, allNodes, 58, neighAdvert(a.v6, a.mac))), false},
		} {
			wait := map[bool]time.Duration{true: passWait, false: dropWait}[tc.pass]
			if got := l.delivered(a, c, tc.frame, wait); got != tc.pass {
				t.Errorf("%s: delivered=%v, want %v", tc.name, got, tc.pass)
			}
		}
	})
}

// TestAddRewritesDelRemoves: Add twice is one chain; a second Add with a
// new address replaces the old one; Del removes everything of the port and
// is success when repeated or for a port never added.
// TestAddRewritesDelRemoves, with a new Filter (every Add rewrites the table
// whole) and with one that has synced (a new port's Add only creates).
func TestAddRewritesDelRemoves(t *testing.T) {
	for _, synced := range []bool{false, true} {
		t.Run(fmt.Sprintf("synced=%v", synced), func(t *testing.T) { addRewritesDelRemoves(t, synced) })
	}
}

func addRewritesDelRemoves(t *testing.T, synced bool) {
	testns.Do(t, func() {
		l := newLab(t, 2)
		a, c := l.peers[0], l.peers[1]
		f := New()
		if synced {
			if err := f.Sync(nil); err != nil {
				t.Fatal(err)
			}
		}
		ep := a.endpoint()
		for range 2 {
			if err := f.Add(ep); err != nil {
				t.Fatal(err)
			}
		}
		wantPorts(t, f, a.port)
		if n := ruleCount(t, ChainPrefix+a.port); n != len(endpointRules(ep)) {
			t.Fatalf("after two Adds the chain has %d rules, want %d", n, len(endpointRules(ep)))
		}
		if n := ruleCount(t, BaseChain); n != 1 {
			t.Fatalf("base chain has %d rules, want 1", n)
		}
		moved := netip.MustParseAddr("198.18.90.99")
		ep.IPv4 = moved
		if err := f.Add(ep); err != nil {
			t.Fatal(err)
		}
		send := func(src netip.Addr, wait time.Duration) bool {
			return l.delivered(a, c, ether(broadcast, a.mac, 0x0800, ipv4(src, c.v4, 17, udp(1, 9, nil))), wait)
		}
		if !send(moved, passWait) || send(a.v4, dropWait) {
			t.Fatal("after Add with a new address, the new one must pass and the old one be dropped")
		}
		for range 2 {
			if err := f.Del(a.port); err != nil {
				t.Fatal(err)
			}
		}
		wantPorts(t, f)
		if err := f.Del("vp-never"); err != nil {
			t.Fatalf("Del of an unknown port: %v", err)
		}
		wantPorts(t, f)
		if !send(a.v4, passWait) {
			t.Fatal("after Del, the port's frames must pass unchecked")
		}
	})
}

// TestBaseChainAltered: a base chain flushed behind the Filter's back shows
// as no port in force (so the repair loop syncs), and the next Add rewrites
// it even where Add would only create.
func TestBaseChainAltered(t *testing.T) {
	testns.Do(t, func() {
		l := newLab(t, 3)
		a, b, c := l.peers[0], l.peers[1], l.peers[2]
		f := New()
		if err := f.Sync(nil); err != nil {
			t.Fatal(err)
		}
		if err := f.Add(a.endpoint()); err != nil {
			t.Fatal(err)
		}
		wantPorts(t, f, a.port)
		conn, err := nftables.New()
		if err != nil {
			t.Fatal(err)
		}
		conn.FlushChain(&nftables.Chain{Name: BaseChain, Table: table})
		if err := conn.Flush(); err != nil {
			t.Fatalf("flushing the base chain: %v", err)
		}
		wantPorts(t, f)
		if err := f.Add(b.endpoint()); err != nil {
			t.Fatal(err)
		}
		if n := ruleCount(t, BaseChain); n != 1 {
			t.Fatalf("base chain has %d rules after Add, want 1", n)
		}
		spoof := ether(broadcast, b.mac, 0x0800, ipv4(c.v4, c.v4, 17, udp(1, 9, nil)))
		if l.delivered(b, c, spoof, dropWait) {
			t.Fatal("after the base chain was rewritten, b's checks must drop")
		}
	})
}

// TestSyncReplacesEverything: Sync keeps the listed ports' checks and
// removes the others', including chains left without a map element.
func TestSyncReplacesEverything(t *testing.T) {
	testns.Do(t, func() {
		l := newLab(t, 3)
		a, b, c := l.peers[0], l.peers[1], l.peers[2]
		f := New()
		if err := f.Sync(nil); err != nil { // from nothing
			t.Fatal(err)
		}
		wantPorts(t, f)
		for _, p := range []*peer{a, b} {
			if err := f.Add(p.endpoint()); err != nil {
				t.Fatal(err)
			}
		}
		if err := f.Sync([]Endpoint{a.endpoint()}); err != nil {
			t.Fatal(err)
		}
		wantPorts(t, f, a.port)
		spoof := func(p *peer) []byte {
			return ether(broadcast, p.mac, 0x0800, ipv4(c.v4, c.v4, 17, udp(1, 9, nil)))
		}
		if l.delivered(a, c, spoof(a), dropWait) {
			t.Fatal("after Sync, the kept port's checks must still drop")
		}
		if !l.delivered(b, c, spoof(b), passWait) {
			t.Fatal("after Sync, the dropped port's checks must be gone")
		}
	})
}

// TestSyncScales: one transaction for many endpoints fits the netlink
// buffers, and Add still works on top of it.
func TestSyncScales(t *testing.T) {
	testns.Do(t, func() {
		var eps []Endpoint
		for i := range 500 {
			eps = append(eps, Endpoint{Port: "ovscale" + strconv.Itoa(i),
				MAC:  net.HardwareAddr{2, 0x42, 198, 18, byte(91 + i/256), byte(i)},
				IPv4: netip.AddrFrom4([4]byte{198, 18, byte(91 + i/256), byte(i)}),
				IPv6: netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, 0x90, 14: byte(i >> 8), 15: byte(i)})})
		}
		f := New()
		if err := f.Sync(eps); err != nil {
			t.Fatal(err)
		}
		if err := f.Add(Endpoint{Port: "ovextra", MAC: eps[0].MAC}); err != nil {
			t.Fatal(err)
		}
		got, _, err := f.Ports()
		if err != nil || len(got) != 501 {
			t.Fatalf("Ports() = %d ports, %v; want 501", len(got), err)
		}
	})
}

func TestEndpointCheckRefusesBadInput(t *testing.T) {
	mac := net.HardwareAddr{2, 0x42, 198, 18, 90, 2}
	for _, ep := range []Endpoint{
		{Port: "", MAC: mac},
		{Port: "a-name-far-too-long", MAC: mac},
		{Port: "ov1", MAC: mac[:4]},
		{Port: "ov1", MAC: mac, IPv4: netip.MustParseAddr("2001:db8:90::1")},
		{Port: "ov1", MAC: mac, IPv6: netip.MustParseAddr("198.18.90.1")},
	} {
		if err := New().Add(ep); err == nil {
			t.Errorf("Add(%+v) succeeded, want an error", ep)
		}
	}
}

func wantPorts(t *testing.T, f *Filter, want ...string) {
	t.Helper()
	got, _, err := f.Ports()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) && !(len(got) == 0 && len(want) == 0) {
		t.Fatalf("ports with checks = %v, want %v", got, want)
	}
}

func ruleCount(t *testing.T, chain string) int {
	t.Helper()
	c, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	rules, err := c.GetRules(table, &nftables.Chain{Name: chain, Table: table})
	if err != nil {
		t.Fatalf("listing rules of %s: %v", chain, err)
	}
	return len(rules)
}

// Del's goroutine removes the checks in the Filter's namespace, not in the
// one of whatever thread it runs on (here the host's: this test's thread
// is the only one in its namespace).
func TestDelInTheFiltersNamespace(t *testing.T) {
	testns.Do(t, func() {
		f := New()
		ep := Endpoint{Port: "vpreap", MAC: net.HardwareAddr{2, 0x42, 198, 18, 91, 9}, IPv4: netip.MustParseAddr("198.18.91.9")}
		if err := f.Add(ep); err != nil {
			t.Fatal(err)
		}
		reaped := make(chan struct{}, 1)
		f.reaped = reaped
		if err := f.Del(ep.Port); err != nil {
			t.Fatal(err)
		}
		select {
		case <-reaped:
		case <-time.After(10 * time.Second):
			t.Fatal("the reaper did not run within 10 s")
		}
		// Another Filter reads this namespace's kernel (f.Ports would
		// settle the queue itself, on this thread).
		if ports, _, err := New().Ports(); err != nil || len(ports) != 0 {
			t.Fatalf("after the reaper: ports with checks %v (%v), want none", ports, err)
		}
	})
}
