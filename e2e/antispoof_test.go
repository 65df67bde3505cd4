package e2e

// Issue #9: a container that takes a neighbour's addresses gets nowhere
// with them. Every case runs on a network with the checks on (the default)
// and on one with ournet.anti_spoofing=false, where the same attack must
// succeed: so each test can fail.

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/ournet/ournet/internal/antispoof"
)

// raPrefix is what the rogue router advertises; it lies in 2001:db8:90::/48.
const raPrefix = "2001:db8:90:ff::/64"

// spoofNet is one network with a victim (a), an attacker with NET_ADMIN
// (b) and a bystander (c).
type spoofNet struct {
	e                    *Engine
	name, bridge         string
	v4, v6               string // subnets
	a, b, c              string // container names
	ipA, ipB, ip6A, ip6B string
	macA, macB           string
	checksOn             bool
}

func newSpoofNet(t *testing.T, e *Engine, name, v4, v6 string, on bool) *spoofNet {
	t.Helper()
	s := &spoofNet{e: e, name: name, v4: v4, v6: v6, a: name + "-a", b: name + "-b", c: name + "-c", checksOn: on}
	args := []string{"-d", "ournet", "--ipv6", "--subnet", v4, "--subnet", v6,
		// Routed, so the uplink sees containers' own source addresses.
		"-o", "com.docker.network.bridge.enable_ip_masquerade=false"}
	if !on {
		args = append(args, "-o", "ournet.anti_spoofing=false")
	}
	id := Net(t, e, name, args...)
	s.bridge = "ournet-" + id[:8]
	Container(t, e, s.a, "--network", name)
	Container(t, e, s.b, "--network", name, "--cap-add", "NET_ADMIN")
	Container(t, e, s.c, "--network", name)
	s.ipA, s.ipB = e.IP(t, s.a, name), e.IP(t, s.b, name)
	s.ip6A, s.ip6B = s.inspect(t, s.a, "GlobalIPv6Address"), s.inspect(t, s.b, "GlobalIPv6Address")
	s.macA, s.macB = s.inspect(t, s.a, "MacAddress"), s.inspect(t, s.b, "MacAddress")
	for _, c := range []string{s.a, s.b, s.c} {
		linkLocalReady(t, e, c)
	}
	return s
}

// linkLocalReady waits until the container's link-local address has passed
// duplicate address detection: until then it neither sends from it (an RA
// from :: is invalid) nor accepts router advertisements.
func linkLocalReady(t *testing.T, e *Engine, container string) {
	t.Helper()
	waitFor(t, 10*time.Second, container+"'s link-local address ready", func() error {
		out, err := e.Exec(container, "cat", "/proc/net/if_inet6")
		if err != nil {
			return err
		}
		for _, line := range strings.Split(out, "\n") {
			// address ifindex prefixlen scope flags name; 0x40 is tentative
			if f := strings.Fields(line); len(f) == 6 && strings.HasPrefix(f[0], "fe80") && f[5] == "eth0" {
				if flags, _ := strconv.ParseUint(f[4], 16, 8); flags&0x40 == 0 {
					return nil
				}
			}
		}
		return fmt.Errorf("tentative or missing:\n%s", out)
	})
}

// take puts a's address on b's interface, as the attacker would, without
// duplicate address detection (which a's answer would fail). Idempotent.
func (s *spoofNet) take(t *testing.T, addr string) {
	t.Helper()
	bits := "/32"
	if strings.Contains(addr, ":") {
		bits = "/128"
	}
	s.must(t, s.b, "spoof", "addr", "eth0", addr+bits)
}

func (s *spoofNet) inspect(t *testing.T, container, field string) string {
	t.Helper()
	v := s.e.Run(t, "inspect", "-f", "{{(index .NetworkSettings.Networks \""+s.name+"\")."+field+"}}", container)
	if v == "" {
		t.Fatalf("%s has no %s on %s", container, field, s.name)
	}
	return v
}

// must runs a command in a container and fails the test if it fails.
func (s *spoofNet) must(t *testing.T, container string, cmd ...string) string {
	t.Helper()
	out, err := s.e.Exec(container, cmd...)
	if err != nil {
		t.Fatalf("%s: %v", container, err)
	}
	return out
}

// neighMAC is the MAC the neighbour entry for addr holds: in container c,
// or in the engine's host if c is "".
func (s *spoofNet) neighMAC(t *testing.T, c, addr string) string {
	t.Helper()
	args := []string{"ip", "neigh", "show", addr}
	if c == "" {
		out, _ := s.e.Sh(append(args, "dev", s.bridge)...)
		return lladdr(out)
	}
	out, _ := s.e.Exec(c, args...)
	return lladdr(out)
}

func lladdr(neigh string) string {
	f := strings.Fields(neigh)
	if i := slices.Index(f, "lladdr"); i >= 0 && i+1 < len(f) {
		return f[i+1]
	}
	return ""
}

// expect fails unless the attack succeeded exactly when the checks are off.
func (s *spoofNet) expect(t *testing.T, what string, succeeded bool, detail string) {
	t.Helper()
	if succeeded == s.checksOn {
		t.Errorf("anti_spoofing=%v: %s: attack succeeded=%v, want %v (%s)", s.checksOn, what, succeeded, !s.checksOn, detail)
	} else {
		t.Logf("anti_spoofing=%v: %s: attack succeeded=%v, as expected (%s)", s.checksOn, what, succeeded, detail)
	}
}

// learn makes c and the host hold a's true neighbour entries, then waits
// out the kernel's locktime (1 s), within which an update would be ignored
// for reasons other than the checks.
func (s *spoofNet) learn(t *testing.T, addr string) {
	t.Helper()
	ping := "ping"
	if strings.Contains(addr, ":") {
		ping = "ping6"
	}
	s.must(t, s.c, ping, "-c", "1", "-W", "2", addr)
	if out, err := s.e.Sh("busybox", ping, "-c", "1", "-W", "2", addr); err != nil {
		t.Fatalf("host cannot reach %s: %v %s", addr, err, out)
	}
	if got := s.neighMAC(t, s.c, addr); got != s.macA {
		t.Fatalf("%s's entry for %s = %q before the attack, want %s", s.c, addr, got, s.macA)
	}
	time.Sleep(1500 * time.Millisecond)
}

// arpPoison: b claims a's IPv4 address with unsolicited ARP.
func (s *spoofNet) arpPoison(t *testing.T) {
	s.learn(t, s.ipA)
	s.take(t, s.ipA)
	s.must(t, s.b, "arping", "-U", "-c", "2", "-w", "3", "-I", "eth0", "-s", s.ipA, s.ipA)
	time.Sleep(500 * time.Millisecond)
	peer, host := s.neighMAC(t, s.c, s.ipA), s.neighMAC(t, "", s.ipA)
	s.expect(t, "unsolicited ARP changes a third container's entry", peer == s.macB, "entry "+peer)
	s.expect(t, "unsolicited ARP changes the host's entry", host == s.macB, "entry "+host)
}

// naPoison: b claims a's IPv6 address with an unsolicited neighbour
// advertisement.
func (s *spoofNet) naPoison(t *testing.T) {
	s.learn(t, s.ip6A)
	s.must(t, s.b, "spoof", "na", "eth0", s.ip6A, s.macB)
	time.Sleep(500 * time.Millisecond)
	peer, host := s.neighMAC(t, s.c, s.ip6A), s.neighMAC(t, "", s.ip6A)
	s.expect(t, "unsolicited NA changes a third container's entry", peer == s.macB, "entry "+peer)
	s.expect(t, "unsolicited NA changes the host's entry", host == s.macB, "entry "+host)
}

// rogueRA: b advertises itself as a router with a prefix. Peers must get no
// route; the host never takes routes from RAs on ournet's bridges
// (accept_ra=0), so there the counter of RAs it received tells the checks
// apart.
func (s *spoofNet) rogueRA(t *testing.T) {
	hostBefore, _ := s.e.Sh("ip", "-6", "route")
	counter := []string{"INPUT", "-i", s.bridge, "-p", "icmpv6", "--icmpv6-type", "router-advertisement"}
	if out, err := s.e.Sh(append([]string{"ip6tables", "-I"}, counter...)...); err != nil {
		t.Fatalf("counting RAs: %v %s", err, out)
	}
	defer s.e.Sh(append([]string{"ip6tables", "-D"}, counter...)...)
	s.must(t, s.b, "spoof", "ra", "eth0", raPrefix)
	time.Sleep(time.Second)
	peer, _ := s.e.Exec(s.c, "ip", "-6", "route")
	hostAfter, _ := s.e.Sh("ip", "-6", "route")
	routed := func(r string) bool { return strings.Contains(r, "2001:db8:90:ff:") || strings.Contains(r, "proto ra") }
	s.expect(t, "a router advertisement gives a peer routes", routed(peer), "peer routes:\n"+peer)
	if routed(hostAfter) || hostAfter != hostBefore {
		t.Errorf("a router advertisement changed the host's routes:\nbefore\n%s\nafter\n%s", hostBefore, hostAfter)
	}
	n := s.ip6tablesCount(t, counter)
	s.expect(t, "a router advertisement reaches the host", n > 0, fmt.Sprintf("%d received", n))
}

func (s *spoofNet) ip6tablesCount(t *testing.T, rule []string) int {
	t.Helper()
	out, err := s.e.Sh("ip6tables", "-L", "INPUT", "-v", "-x", "-n")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 6 && strings.Contains(line, s.bridge) && strings.Contains(line, "ipv6-icmptype 134") {
			n, _ := strconv.Atoi(f[0])
			return n
		}
	}
	t.Fatalf("RA counter not found in:\n%s", out)
	return 0
}

// sourceSpoof: b sends to the uplink host from a's address (which it put
// on its own interface). The uplink counts echo requests from a's address;
// b's own address must get through either way.
func (s *spoofNet) sourceSpoof(t *testing.T, u *Uplink, ipt, ping, own, victim, uplinkIP string) {
	s.take(t, victim)
	rule := []string{"INPUT", "-s", victim, "-d", uplinkIP}
	if out, err := u.Exec(append([]string{ipt, "-I"}, rule...)...); err != nil {
		t.Fatalf("uplink counter: %v %s", err, out)
	}
	s.must(t, s.b, ping, "-c", "1", "-W", "2", "-I", own, uplinkIP) // the path works
	_, _ = s.e.Exec(s.b, ping, "-c", "3", "-W", "1", "-I", victim, uplinkIP)
	out, err := u.Exec(ipt, "-L", "INPUT", "-v", "-x", "-n")
	if err != nil {
		t.Fatal(err)
	}
	n := -1
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 7 && strings.Contains(line, victim) {
			n, _ = strconv.Atoi(f[0])
		}
	}
	if n < 0 {
		t.Fatalf("uplink counter not found in:\n%s", out)
	}
	s.expect(t, "the uplink sees packets from the neighbour's address "+victim, n > 0, fmt.Sprintf("%d packets", n))
}

// buildSpoofTool builds the static helper (testdata/spoof) that sends RAs
// and NAs and adds addresses without DAD.
func buildSpoofTool(t *testing.T) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "spoof")
	cmd := exec.Command("go", "build", "-o", out, "./testdata/spoof")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building the spoof tool: %v\n%s", err, b)
	}
	return out
}

func TestAntiSpoof(t *testing.T) {
	tool := buildSpoofTool(t)
	u := NewUplink(t, eng)
	for i, on := range []bool{true, false} {
		t.Run(fmt.Sprintf("checks=%v", on), func(t *testing.T) {
			v4 := fmt.Sprintf("198.18.%d.0/24", 90+i)
			v6 := fmt.Sprintf("2001:db8:90:%d::/64", 1+i)
			s := newSpoofNet(t, eng, fmt.Sprintf("spoof%d", i), v4, v6, on)
			u.RouteVia(t, v4)
			u.RouteVia(t, v6)
			eng.Run(t, "cp", tool, s.b+":/bin/spoof")
			t.Run("arp", s.arpPoison)
			t.Run("ndp", s.naPoison)
			t.Run("ra", s.rogueRA)
			t.Run("ipv4-source", func(t *testing.T) {
				s.sourceSpoof(t, u, "iptables", "ping", s.ipB, s.ipA, UplinkPeerIP)
			})
			t.Run("ipv6-source", func(t *testing.T) {
				s.sourceSpoof(t, u, "ip6tables", "ping6", s.ip6B, s.ip6A, UplinkPeerIP6)
			})
		})
	}
}

// engineFilter reads the checks the kernel holds in the engine's host.
func engineFilter(t *testing.T, e *Engine) *antispoof.Filter {
	t.Helper()
	f, err := os.Open("/run/netns/" + e.NetNS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return antispoof.New(nftables.WithNetNSFd(int(f.Fd())))
}

func wantCheckedPorts(t *testing.T, f *antispoof.Filter, want ...string) {
	t.Helper()
	slices.Sort(want)
	var got []string
	var altered bool
	var err error
	for range 50 { // the plugin restores after it starts listening: allow it 10 s
		if got, altered, err = f.Ports(); err == nil && !altered && slices.Equal(got, want) {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("ports with checks = %v (table altered: %v, %v), want %v", got, altered, err, want)
}

func portOf(t *testing.T, e *Engine, container, network string) string {
	t.Helper()
	return "ov" + e.Run(t, "inspect", "-f", "{{(index .NetworkSettings.Networks \""+network+"\").EndpointID}}", container)[:12]
}

// TestAntiSpoofLifecycle: the checks follow endpoints exactly (only where
// the option is on, gone with the container or its disconnection) and a
// restarted plugin restores them, dropping what it no longer knows.
func TestAntiSpoofLifecycle(t *testing.T) {
	e := NewEngine(t)
	f := engineFilter(t, e)
	Net(t, e, "sp-on", "-d", "ournet", "--subnet", "198.18.92.0/24")
	Net(t, e, "sp-off", "-d", "ournet", "--subnet", "198.18.93.0/24", "-o", "ournet.anti_spoofing=false")
	Container(t, e, "sp-a", "--network", "sp-on")
	Container(t, e, "sp-b", "--network", "sp-on", "--cap-add", "NET_ADMIN")
	e.Run(t, "network", "connect", "sp-off", "sp-b")
	pa, pb := portOf(t, e, "sp-a", "sp-on"), portOf(t, e, "sp-b", "sp-on")
	wantCheckedPorts(t, f, pa, pb)

	// Lose the kernel's state (as a reboot or `nft flush ruleset` would),
	// leave a stale chain behind, and restart the plugin.
	if err := f.Sync(nil); err != nil {
		t.Fatal(err)
	}
	stale := antispoof.Endpoint{Port: "ovstale", MAC: []byte{2, 0x42, 198, 18, 92, 99}}
	if err := f.Add(stale); err != nil {
		t.Fatal(err)
	}
	e.Run(t, "plugin", "disable", "-f", PluginName)
	e.Run(t, "plugin", "enable", PluginName)
	wantCheckedPorts(t, f, pa, pb)
	// And they work: b cannot take a's address in the host's ARP cache.
	ipA, macA := e.IP(t, "sp-a", "sp-on"), e.Run(t, "inspect", "-f", "{{(index .NetworkSettings.Networks \"sp-on\").MacAddress}}", "sp-a")
	bridge := "ournet-" + e.Run(t, "network", "inspect", "-f", "{{.Id}}", "sp-on")[:8]
	if out, err := e.Sh("busybox", "ping", "-c", "1", "-W", "2", ipA); err != nil {
		t.Fatalf("host cannot reach sp-a: %v %s", err, out)
	}
	time.Sleep(1500 * time.Millisecond) // past the neighbour locktime
	if out, err := e.Exec("sp-b", "sh", "-c", "ip addr add "+ipA+"/32 dev eth0 && arping -U -c 2 -w 3 -I eth0 -s "+ipA+" "+ipA); err != nil {
		t.Fatalf("sending the unsolicited ARP: %v %s", err, out)
	}
	time.Sleep(500 * time.Millisecond)
	if out, _ := e.Sh("ip", "neigh", "show", ipA, "dev", bridge); lladdr(out) != macA {
		t.Fatalf("after the restart, the host's entry for sp-a is %q, want %s", out, macA)
	}

	e.Run(t, "rm", "-f", "sp-a")
	wantCheckedPorts(t, f, pb)
	e.Run(t, "network", "disconnect", "-f", "sp-on", "sp-b")
	wantCheckedPorts(t, f)
}
