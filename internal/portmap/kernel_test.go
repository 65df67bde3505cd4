package portmap

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ournet/ournet/internal/iptables"
	"github.com/ournet/ournet/internal/testns"
)

var families = []iptables.Family{iptables.IPv4, iptables.IPv6}

var counters = regexp.MustCompile(`\[\d+:\d+\]`)

// snapshot is iptables-save of the tables ournet's ports use, both families.
func snapshot(t *testing.T, r Runner) string {
	t.Helper()
	var b strings.Builder
	for _, f := range families {
		for _, table := range []string{"raw", "nat", "filter"} {
			out, err := r.Save(f, table)
			if err != nil {
				t.Fatal(err)
			}
			for _, l := range strings.Split(out, "\n") {
				if !strings.HasPrefix(l, "#") {
					b.WriteString(counters.ReplaceAllString(l, "") + "\n")
				}
			}
		}
	}
	return b.String()
}

func sh(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// hostBridge makes br0 with the gateway addresses and a veth ov1 on it,
// whose other end is eth0 in the named netns peer (created if not empty).
func hostBridge(t *testing.T, peer string) {
	t.Helper()
	steps := [][]string{
		// A new netns may inherit forwarding off from the host's; dockerd
		// turns it on, and hairpin DNAT (a container to its own published
		// port) is routed.
		{"sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"},
		{"ip", "link", "set", "lo", "up"},
		{"ip", "link", "add", "br0", "type", "bridge"},
		{"ip", "addr", "add", "198.18.50.1/24", "dev", "br0"},
		{"ip", "addr", "add", "2001:db8:50::1/64", "dev", "br0", "nodad"},
		{"ip", "link", "set", "br0", "up"},
	}
	if peer == "" {
		steps = append(steps, []string{"ip", "link", "add", "ov1", "type", "veth", "peer", "name", "oc1"})
	} else {
		steps = append(steps, []string{"ip", "link", "add", "ov1", "type", "veth", "peer", "name", "eth0", "netns", peer})
	}
	steps = append(steps, []string{"ip", "link", "set", "ov1", "master", "br0", "up"})
	for _, s := range steps {
		sh(t, s...)
	}
}

func realMapper(t *testing.T) (*Mapper, Runner) {
	t.Helper()
	r, err := iptables.NewExec(families...)
	if err != nil {
		t.Fatal(err)
	}
	m := New(Config{Runner: r, Families: families})
	if err := m.Setup(); err != nil {
		t.Fatal(err)
	}
	return m, r
}

// bindErr tries to bind addr (e.g. "0.0.0.0:8080") as another program would.
func bindErr(p Proto, addr string) error {
	c, err := ReserveSocket(p, netip.MustParseAddrPort(addr))
	if err == nil {
		c.Close()
	}
	return err
}

// In a throwaway netns: the rules land as the scripts say, ports are held
// for real, a taken port is refused leaving nothing, drift is repaired, a
// restart takes the same ports back, and removal restores the exact
// previous ruleset.
func TestKernelRulesAndReservations(t *testing.T) {
	testns.Do(t, func() {
		hostBridge(t, "")
		m, r := realMapper(t)
		if err := m.Setup(); err != nil {
			t.Fatal(err)
		}
		before := snapshot(t, r)
		a := ep("aaaaaaaaaaaa0000")
		reqA := []Binding{
			{Proto: TCP, Port: 80, HostPort: 8080},
			{Proto: UDP, Port: 53, HostIP: lo4, HostPort: 5353},
			{Proto: TCP, Port: 81, HostPort: 8100, HostPortEnd: 8102},
			{Proto: UDP, Port: 82},
			{Proto: SCTP, Port: 83, HostPort: 8300},
		}
		msA, err := m.Map(a, reqA)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("published: %v", msA)
		for _, f := range families {
			s, err := m.save(f, "nat")
			if err != nil {
				t.Fatal(err)
			}
			if !installed(f, a.ID, msA, s) {
				t.Fatalf("%s: the rules in the kernel differ from the script's:\n%s", f, snapshot(t, r))
			}
		}
		for _, addr := range []string{"0.0.0.0:8080", "[::]:8080", "127.0.0.1:8080"} {
			if err := bindErr(TCP, addr); !errors.Is(err, ErrInUse) {
				t.Errorf("binding %s while published: %v, want in use", addr, err)
			}
		}
		if err := bindErr(UDP, "127.0.0.1:5353"); !errors.Is(err, ErrInUse) {
			t.Errorf("udp 127.0.0.1:5353 while published: %v", err)
		}
		if err := bindErr(UDP, "198.18.50.1:5353"); err != nil {
			t.Errorf("udp 198.18.50.1:5353 is free (only 127.0.0.1 is published) but: %v", err)
		}
		if v, _ := os.ReadFile("/proc/sys/net/ipv4/conf/br0/route_localnet"); strings.TrimSpace(string(v)) != "1" {
			t.Errorf("route_localnet on br0 = %q", v)
		}
		if !hairpin(t, "ov1") {
			t.Errorf("ov1 is not in hairpin mode")
		}
		if repaired, err := m.Reconcile(); err != nil || len(repaired) != 0 {
			t.Fatalf("Reconcile right after Map repaired %v, %v", repaired, err)
		}
		withA := snapshot(t, r)

		// A port someone holds: refused, naming it; nothing of b remains.
		busy, err := ReserveSocket(TCP, netip.MustParseAddrPort("0.0.0.0:8090"))
		if err != nil {
			t.Fatal(err)
		}
		b := ep("bbbbbbbbbbbb0000")
		_, err = m.Map(b, []Binding{{Proto: TCP, Port: 80, HostPort: 8091}, {Proto: TCP, Port: 80, HostPort: 8090}})
		if err == nil || err.Error() != "ournet: host port 8090/tcp on 0.0.0.0 is already in use; choose another host port" {
			t.Fatalf("taken port: %v", err)
		}
		busy.Close()
		if got := snapshot(t, r); got != withA {
			t.Fatalf("a refused endpoint left rules:\n%s", got)
		}
		if err := bindErr(TCP, "0.0.0.0:8091"); err != nil {
			t.Fatalf("8091 stays reserved after the refusal: %v", err)
		}
		if _, err := m.Map(b, []Binding{{Proto: TCP, Port: 80, HostPort: 8080}}); !errors.Is(err, ErrInUse) {
			t.Fatalf("8080 twice: %v", err)
		}

		// Drift: a jump and the guard removed by hand come back.
		sh(t, "iptables", "-t", "nat", "-D", DNATChain, "-j", dnatChain(a.ID))
		sh(t, "iptables", "-t", "raw", "-F", GuardChain)
		if repaired, err := m.Reconcile(); err != nil || len(repaired) != 1 {
			t.Fatalf("Reconcile = %v, %v", repaired, err)
		}
		if got := snapshot(t, r); got != withA {
			t.Fatalf("after Reconcile:\n%s\nwant\n%s", got, withA)
		}

		// Restart: the process goes (its sockets with it), a new one takes
		// the same ports back and prunes what no endpoint owns.
		m.Close()
		if err := bindErr(TCP, "0.0.0.0:8080"); err != nil {
			t.Fatalf("8080 still held after Close: %v", err)
		}
		orphan := AddScript(iptables.IPv4, "cccccccccccc", msA[:1], iptables.Tables{"nat": iptables.Parse(withA)})
		if err := r.Restore(iptables.IPv4, orphan); err != nil {
			t.Fatal(err)
		}
		m2, _ := realMapper(t)
		if err := m2.Restore(a, reqA, msA); err != nil {
			t.Fatal(err)
		}
		if err := m2.Prune([]string{a.ID}); err != nil {
			t.Fatal(err)
		}
		if err := bindErr(TCP, "0.0.0.0:8080"); !errors.Is(err, ErrInUse) {
			t.Fatalf("8080 not held again after Restore: %v", err)
		}
		if got := snapshot(t, r); got != withA {
			t.Fatalf("after restart:\n%s\nwant\n%s", got, withA)
		}

		if err := m2.Unmap(a.ID); err != nil {
			t.Fatal(err)
		}
		if err := m2.Unmap(a.ID); err != nil {
			t.Fatalf("Unmap twice: %v", err)
		}
		if got := snapshot(t, r); got != before {
			t.Fatalf("after Unmap:\n%s\nwant\n%s", got, before)
		}
		if err := bindErr(TCP, "0.0.0.0:8080"); err != nil {
			t.Fatalf("8080 still held after Unmap: %v", err)
		}
	})
}

func hairpin(t *testing.T, name string) bool {
	t.Helper()
	out := sh(t, "ip", "-d", "link", "show", name)
	return strings.Contains(out, "hairpin on")
}

// fetch GETs url from netns ns ("" for the test's own), 3 s at most.
func fetch(ns, url string) (string, error) {
	args := []string{"busybox", "timeout", "3", "busybox", "wget", "-q", "-O", "-", url}
	if ns != "" {
		args = append([]string{"ip", "netns", "exec", ns}, args...)
	}
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// Real connections through the rules: from the host's loopback and own
// addresses, hairpin from the container to itself, and the CVE-2020-8558
// guard: a container that routes 127.0.0.1 to the host cannot reach the
// host's loopback services although route_localnet is on, and can once the
// guard is gone (so the check can fail).
func TestKernelTraffic(t *testing.T) {
	peer := fmt.Sprintf("ourpm-%d", os.Getpid())
	sh(t, "ip", "netns", "add", peer)
	defer func() {
		out, _ := exec.Command("ip", "netns", "pids", peer).Output()
		for _, p := range strings.Fields(string(out)) {
			_ = exec.Command("kill", p).Run()
		}
		_ = exec.Command("ip", "netns", "del", peer).Run()
	}()
	www := t.TempDir()
	if err := os.WriteFile(filepath.Join(www, "index.html"), []byte("container\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	secret := t.TempDir()
	if err := os.WriteFile(filepath.Join(secret, "index.html"), []byte("host-loopback-only\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	testns.Do(t, func() {
		hostBridge(t, peer)
		in := func(args ...string) { sh(t, append([]string{"ip", "netns", "exec", peer}, args...)...) }
		in("ip", "link", "set", "lo", "up")
		in("ip", "addr", "add", "198.18.50.2/24", "dev", "eth0")
		in("ip", "addr", "add", "2001:db8:50::2/64", "dev", "eth0", "nodad")
		in("ip", "link", "set", "eth0", "up")
		in("ip", "route", "add", "default", "via", "198.18.50.1")
		in("ip", "-6", "route", "add", "default", "via", "2001:db8:50::1")
		in("busybox", "httpd", "-p", "80", "-h", www)
		// A service of the host's own on its loopback: what CVE-2020-8558 exposes.
		httpd := exec.Command("busybox", "httpd", "-f", "-p", "127.0.0.1:8099", "-h", secret)
		if err := httpd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = httpd.Process.Kill(); _ = httpd.Wait() }()

		m, _ := realMapper(t)
		e := Endpoint{ID: "dddddddddddd0000", Bridge: "br0", HostVeth: "ov1", IPv4: c4, IPv6: c6}
		if _, err := m.Map(e, []Binding{{Proto: TCP, Port: 80, HostPort: 8080}, {Proto: TCP, Port: 80, HostIP: lo4, HostPort: 8081}}); err != nil {
			t.Fatal(err)
		}
		for _, u := range []string{"http://127.0.0.1:8080/", "http://198.18.50.1:8080/", "http://[2001:db8:50::1]:8080/", "http://127.0.0.1:8081/"} {
			if out, err := fetch("", u); err != nil || out != "container" {
				t.Errorf("host -> %s: %q, %v", u, out, err)
			}
		}
		for _, u := range []string{"http://198.18.50.1:8080/", "http://[2001:db8:50::1]:8080/"} {
			if out, err := fetch(peer, u); err != nil || out != "container" {
				t.Errorf("container -> itself through %s: %q, %v", u, out, err)
			}
		}
		if out, err := fetch(peer, "http://198.18.50.1:8081/"); err == nil {
			t.Errorf("container reached the 127.0.0.1-only port through the gateway: %q", out)
		}

		// The attack: route 127.0.0.1 to the gateway, accept loopback
		// sources (for the replies), look past the local table.
		in("sh", "-c", "echo 1 > /proc/sys/net/ipv4/conf/all/route_localnet")
		in("ip", "rule", "add", "pref", "100", "table", "local")
		in("ip", "rule", "del", "pref", "0")
		in("ip", "route", "add", "127.0.0.0/8", "via", "198.18.50.1", "dev", "eth0", "table", "200")
		in("ip", "rule", "add", "pref", "10", "to", "127.0.0.0/8", "table", "200")
		for _, u := range []string{"http://127.0.0.1:8099/", "http://127.0.0.1:8081/"} {
			if out, err := fetch(peer, u); err == nil {
				t.Errorf("guarded: the container reached the host's %s: %q", u, out)
			}
		}
		sh(t, "iptables", "-t", "raw", "-F", GuardChain)
		if out, err := fetch(peer, "http://127.0.0.1:8099/"); err != nil || out != "host-loopback-only" {
			t.Errorf("without the guard the attack should work (else this test proves nothing): %q, %v", out, err)
		}
		if _, err := m.Reconcile(); err != nil {
			t.Fatal(err)
		}
		if out, err := fetch(peer, "http://127.0.0.1:8099/"); err == nil {
			t.Errorf("guard restored by Reconcile, yet the container reached the host's loopback: %q", out)
		}
		if err := m.Unmap(e.ID); err != nil {
			t.Fatal(err)
		}
		if out, err := fetch("", "http://127.0.0.1:8080/"); err == nil {
			t.Errorf("reachable after Unmap: %q", out)
		}
	})
}

// udpFlows lists the conntrack entries of UDP flows to port.
func udpFlows(t *testing.T, port uint16) []*netlink.ConntrackFlow {
	t.Helper()
	all, err := netlink.ConntrackTableList(netlink.ConntrackTable, unix.AF_INET)
	if err != nil {
		t.Fatal(err)
	}
	var out []*netlink.ConntrackFlow
	for _, f := range all {
		if f.Forward.Protocol == uint8(UDP) && f.Forward.DstPort == port {
			out = append(out, f)
		}
	}
	return out
}

// A UDP client that kept sending to the host port before it was published
// has a conntrack entry to the host itself, which would keep its datagrams
// away from the new DNAT rule: Map forgets it. Unmap forgets the flows
// DNATed to the container, which would otherwise still go there.
func TestKernelForgetsStaleFlows(t *testing.T) {
	testns.Do(t, func() {
		hostBridge(t, "")
		m, _ := realMapper(t)
		c, err := net.DialUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:40001")),
			net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:18500")))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		// A refusal (ICMP) is reported by the next write, which then sends
		// nothing: write until one goes out.
		send := func() {
			for i := 0; i < 3; i++ {
				_, err := c.Write([]byte("ping"))
				if err == nil {
					return
				}
				if !errors.Is(err, unix.ECONNREFUSED) {
					t.Fatal(err)
				}
			}
		}
		send()
		if fs := udpFlows(t, 18500); len(fs) != 1 || !fs[0].Reverse.SrcIP.Equal(net.IPv4(127, 0, 0, 1)) {
			t.Fatalf("before publishing: %v", fs)
		}
		a := ep("aaaaaaaaaaaa0000")
		if _, err := m.Map(a, []Binding{{Proto: UDP, Port: 53, HostPort: 18500}}); err != nil {
			t.Fatal(err)
		}
		if fs := udpFlows(t, 18500); len(fs) != 0 {
			t.Fatalf("the stale flow to the host survived Map: %v", fs)
		}
		send()
		if fs := udpFlows(t, 18500); len(fs) != 1 || !fs[0].Reverse.SrcIP.Equal(c4.AsSlice()) || fs[0].Reverse.SrcPort != 53 {
			t.Fatalf("after publishing, the client's flow is not DNATed to the container: %v", fs)
		}
		if err := m.Unmap(a.ID); err != nil {
			t.Fatal(err)
		}
		if fs := udpFlows(t, 18500); len(fs) != 0 {
			t.Fatalf("the flow to the container survived Unmap: %v", fs)
		}
	})
}
