package e2e

// Issue #5: published ports. Each case is a real connection (busybox httpd
// in a container, a UDP echo) from where the issue says, over IPv4 and
// IPv6: the outside (the uplink), the host itself (127.0.0.1 and its own
// addresses), a container of the same network (hairpin) and one of another
// network; and the cases that must fail.

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Addresses of the networks these tests make (198.18.50-59/24, 2001:db8:50::/48).
const (
	portsNetA  = "198.18.50.0/24"
	portsNetA6 = "2001:db8:50:a::/64"
	portsGwA   = "198.18.50.1"
	portsGwA6  = "2001:db8:50:a::1"
	portsNetB  = "198.18.51.0/24"
	portsNetB6 = "2001:db8:50:b::/64"
)

// buildProbe builds testdata/probe, the static client and UDP echo server.
func buildProbe(t *testing.T) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "probe")
	cmd := exec.Command("go", "build", "-o", out, "./testdata/probe")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building the probe: %v\n%s", err, b)
	}
	return out
}

// prober runs the probe somewhere: on the engine's host, in the uplink or
// in a container.
type prober struct {
	name string
	run  func(args ...string) (string, error)
}

func hostProber(e *Engine, probe string) prober {
	return prober{"host", func(a ...string) (string, error) { return e.Sh(append([]string{probe}, a...)...) }}
}

func uplinkProber(u *Uplink, probe string) prober {
	return prober{"uplink", func(a ...string) (string, error) {
		out, err := u.Exec(append([]string{probe}, a...)...)
		return strings.TrimSpace(out), err
	}}
}

func containerProber(e *Engine, name string) prober {
	return prober{name, func(a ...string) (string, error) { return e.Exec(name, append([]string{"/bin/probe"}, a...)...) }}
}

// joinHostPort joins a host and port, bracketing IPv6.
func joinHostPort(host string, port int) string {
	if strings.Contains(host, ":") {
		return fmt.Sprintf("[%s]:%d", host, port)
	}
	return fmt.Sprintf("%s:%d", host, port)
}

// portConn is one connection attempt: HTTP GET of http://target/ or a UDP echo
// to target; want is what the answer must contain, "" when it must fail.
type portConn struct {
	from   prober
	udp    bool
	target string
	want   string
}

func (c portConn) String() string {
	kind := "http"
	if c.udp {
		kind = "udp"
	}
	verdict := "must fail"
	if c.want != "" {
		verdict = "must answer " + c.want
	}
	return fmt.Sprintf("%s -> %s %s (%s)", c.from.name, kind, c.target, verdict)
}

func (c portConn) try() error {
	timeout := "3s"
	if c.want == "" {
		timeout = "2s" // a refusal only needs to be seen not to answer
	}
	var out string
	var err error
	if c.udp {
		out, err = c.from.run("-t", timeout, "udp", c.target, "ping")
	} else {
		out, err = c.from.run("-t", timeout, "http", "http://"+c.target+"/")
	}
	switch {
	case c.want != "" && (err != nil || !strings.Contains(out, c.want)):
		return fmt.Errorf("%s: got %q, %v", c, out, err)
	case c.want == "" && err == nil:
		return fmt.Errorf("%s: it answered %q", c, out)
	}
	return nil
}

// expectConns tries every connection (in parallel: the refusals take seconds)
// and reports each one that did not behave.
func expectConns(t *testing.T, conns ...portConn) {
	t.Helper()
	errs := make([]error, len(conns))
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = c.try()
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Error(err)
		} else {
			t.Logf("ok: %s", conns[i])
		}
	}
}

// tcpAndUDP is the same connection over TCP (HTTP) and UDP (echo): the container
// serves HTTP on tcp/80 and echoes on udp/5353, published as hp and up.
func tcpAndUDP(from prober, host string, hp, up int, name string) []portConn {
	want := func(s string) string {
		if name == "" {
			return ""
		}
		return s
	}
	return []portConn{
		{from: from, target: joinHostPort(host, hp), want: want("hello from " + name)},
		{from: from, udp: true, target: joinHostPort(host, up), want: want(name + ":ping")},
	}
}

// portServer runs a container on network that serves "hello from NAME" over
// HTTP on tcp/80 and tcp/81 and echoes on udp/5353, with the probe copied
// in; removed when the test ends.
func portServer(t *testing.T, e *Engine, probe, name string, args ...string) {
	t.Helper()
	script := fmt.Sprintf("mkdir -p /tmp/www && echo hello from %s > /tmp/www/index.html && httpd -p 80 -h /tmp/www && httpd -p 81 -h /tmp/www && exec sleep 600", name)
	t.Cleanup(func() { _, _ = e.Docker(time.Minute, "rm", "-f", name) })
	e.Run(t, append(append([]string{"run", "-d", "--name", name}, args...), Image, "sh", "-c", script)...)
	e.Run(t, "cp", probe, name+":/bin/probe")
	e.Run(t, "exec", "-d", name, "/bin/probe", "udp-echo", "[::]:5353", name)
	waitFor(t, 10*time.Second, name+"'s servers", func() error {
		if _, err := e.Exec(name, "/bin/probe", "-t", "1s", "udp", "127.0.0.1:5353", "x"); err != nil {
			return err
		}
		_, err := e.Exec(name, "/bin/probe", "-t", "1s", "http", "http://127.0.0.1:80/")
		return err
	})
}

// portClient runs a container that only makes connections.
func portClient(t *testing.T, e *Engine, probe, name string, args ...string) prober {
	t.Helper()
	Container(t, e, name, args...)
	e.Run(t, "cp", probe, name+":/bin/probe")
	return containerProber(e, name)
}

// dualNet makes a dual-stack ournet network and returns its bridge.
func dualNet(t *testing.T, e *Engine, name, v4, v6 string, args ...string) string {
	t.Helper()
	id := Net(t, e, name, append([]string{"-d", "ournet", "--ipv6", "--subnet", v4, "--subnet", v6}, args...)...)
	return "ournet-" + id[:8]
}

func containerIP6(t *testing.T, e *Engine, container, network string) string {
	t.Helper()
	a := e.Run(t, "inspect", "-f", "{{(index .NetworkSettings.Networks \""+network+"\").GlobalIPv6Address}}", container)
	if a == "" {
		t.Fatalf("%s has no IPv6 address on %s", container, network)
	}
	return a
}

// TestPortsReachable: -p 18080:80 -p 18053:5353/udp answers, over IPv4
// and IPv6, from the outside, from the host through 127.0.0.1 and through
// its own addresses, from the container itself and from another one on its
// network through the host's address (hairpin), and from a container of
// another network through the host's address (Docker's bridge driver
// drops this last one between its networks).
func TestPortsReachable(t *testing.T) {
	probe := buildProbe(t)
	u := NewUplink(t, eng)
	bridge := dualNet(t, eng, "pa", portsNetA, portsNetA6)
	dualNet(t, eng, "pb", portsNetB, portsNetB6)
	portServer(t, eng, probe, "web", "--network", "pa", "-p", "18080:80", "-p", "18053:5353/udp")
	self := containerProber(eng, "web")
	peer := portClient(t, eng, probe, "peer", "--network", "pa")
	other := portClient(t, eng, probe, "other", "--network", "pb")
	host, up := hostProber(eng, probe), uplinkProber(u, probe)

	var cs []portConn
	for _, a := range []string{UplinkHostIP, UplinkHostIP6} {
		cs = append(cs, tcpAndUDP(up, a, 18080, 18053, "web")...)
	}
	for _, a := range []string{"127.0.0.1", UplinkHostIP, UplinkHostIP6, portsGwA, portsGwA6} {
		cs = append(cs, tcpAndUDP(host, a, 18080, 18053, "web")...)
	}
	for _, from := range []prober{self, peer, other} {
		for _, a := range []string{UplinkHostIP, UplinkHostIP6} {
			cs = append(cs, tcpAndUDP(from, a, 18080, 18053, "web")...)
		}
	}
	for _, from := range []prober{self, peer} {
		for _, a := range []string{portsGwA, portsGwA6} {
			cs = append(cs, tcpAndUDP(from, a, 18080, 18053, "web")...)
		}
	}
	expectConns(t, cs...)
	// The plugin wrote it through its mount of the host's /proc/sys/net:
	// without it the kernel refuses to route 127.0.0.1 out of the bridge.
	if v, err := eng.Sh("cat", "/proc/sys/net/ipv4/conf/"+bridge+"/route_localnet"); err != nil || v != "1" {
		t.Errorf("route_localnet on %s = %q, %v", bridge, v, err)
	}
}

// TestPortsLoopbackOnly: a port published on 127.0.0.1 answers the host
// there and nobody else: not the outside, not an uplink that routes
// 127.0.0.0/8 or the container's subnet to this host, not containers, not
// the host's other addresses. A container that routes 127.0.0.1 to its
// gateway (the CVE-2020-8558 attack, possible because route_localnet is on
// for the bridge) reaches neither the port nor the host's own loopback
// services; with the guard flushed by hand it does (so this test can
// fail), and ournet's drift repair puts the guard back.
func TestPortsLoopbackOnly(t *testing.T) {
	probe := buildProbe(t)
	u := NewUplink(t, eng)
	dualNet(t, eng, "pa", portsNetA, portsNetA6)
	dualNet(t, eng, "pb", portsNetB, portsNetB6)
	portServer(t, eng, probe, "lweb", "--network", "pa", "-p", "127.0.0.1:18090:80", "-p", "127.0.0.1:18091:5353/udp")
	peer := portClient(t, eng, probe, "lpeer", "--network", "pa")
	other := portClient(t, eng, probe, "lother", "--network", "pb")
	attacker := portClient(t, eng, probe, "lattacker", "--network", "pa", "--cap-add", "NET_ADMIN",
		"--sysctl", "net.ipv4.conf.all.route_localnet=1")
	host, up := hostProber(eng, probe), uplinkProber(u, probe)
	hostSecret(t, eng, 18099)
	webIP, webIP6 := eng.IP(t, "lweb", "pa"), containerIP6(t, eng, "lweb", "pa")

	// Both "LAN neighbours" route to this host what they should not reach.
	u.RouteVia(t, portsNetA)
	u.RouteVia(t, portsNetA6)
	routeLoopbackVia(t, func(args ...string) error { _, err := u.Exec(args...); return err }, UplinkHostIP)
	routeLoopbackVia(t, func(args ...string) error { _, err := eng.Exec("lattacker", args...); return err }, portsGwA)

	cs := tcpAndUDP(host, "127.0.0.1", 18090, 18091, "lweb")
	cs = append(cs, portConn{from: host, target: "127.0.0.1:18099", want: "host-loopback-only"})
	for _, a := range []string{UplinkHostIP, UplinkHostIP6, portsGwA} {
		cs = append(cs, tcpAndUDP(host, a, 18090, 18091, "")...)
		cs = append(cs, tcpAndUDP(up, a, 18090, 18091, "")...)
		cs = append(cs, tcpAndUDP(peer, a, 18090, 18091, "")...)
		cs = append(cs, tcpAndUDP(other, a, 18090, 18091, "")...)
	}
	cs = append(cs, tcpAndUDP(up, "127.0.0.1", 18090, 18091, "")...)
	cs = append(cs, tcpAndUDP(up, webIP, 80, 5353, "")...)
	cs = append(cs, tcpAndUDP(up, webIP6, 80, 5353, "")...)
	cs = append(cs, tcpAndUDP(attacker, "127.0.0.1", 18090, 18091, "")...)
	cs = append(cs,
		portConn{from: attacker, target: "127.0.0.1:18099"},
		portConn{from: up, target: "127.0.0.1:18099"})
	expectConns(t, cs...)

	// Without the guard the attack works: the check above means something.
	// Drift repair puts the guard back within a fraction of a second of a
	// flush, sooner than a probe started by docker exec may connect: so
	// the guard is flushed again every 20 ms while the probe runs (its
	// SYN is sent again until it gets through), a few bounded tries.
	attack := portConn{from: attacker, target: "127.0.0.1:18099", want: "host-loopback-only"}
	var attackErr error
	for try := 0; try < 4 && (try == 0 || attackErr != nil); try++ {
		stop, flushed := make(chan struct{}), make(chan error, 1)
		go func() {
			for i := 0; i < 250; i++ {
				if out, err := eng.Sh("iptables", "-t", "raw", "-F", "OURNET-LOCALHOST"); err != nil {
					flushed <- fmt.Errorf("flushing the guard: %v %s", err, out)
					return
				}
				select {
				case <-stop:
					flushed <- nil
					return
				case <-time.After(20 * time.Millisecond):
				}
			}
			flushed <- nil
		}()
		attackErr = attack.try()
		close(stop)
		if err := <-flushed; err != nil {
			t.Fatal(err)
		}
	}
	if attackErr != nil {
		t.Fatalf("with the guard flushed the attack still fails, so the guard check proves nothing: %v", attackErr)
	}
	waitFor(t, 30*time.Second, "drift repair restores the localhost guard", func() error {
		out, _ := eng.Sh("iptables", "-t", "raw", "-S", "OURNET-LOCALHOST")
		if !strings.Contains(out, "-d 127.0.0.0/8 ! -i lo -j DROP") {
			return fmt.Errorf("guard chain: %s", out)
		}
		return nil
	})
	expectConns(t, portConn{from: attacker, target: "127.0.0.1:18099"})
}

// hostSecret serves "host-loopback-only" on the engine host's
// 127.0.0.1:port: a service no one but the host may reach.
func hostSecret(t *testing.T, e *Engine, port int) {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "index.html"), []byte("host-loopback-only\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("nsenter", "--net=/run/netns/"+e.NetNS, "busybox", "httpd", "-f", "-p", joinHostPort("127.0.0.1", port), "-h", dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); _ = cmd.Wait() })
}

// routeLoopbackVia makes a namespace send 127.0.0.0/8 to gw and accept the
// loopback-sourced replies: the local table is moved behind a rule that
// sends 127.0.0.0/8 to table 200.
func routeLoopbackVia(t *testing.T, run func(args ...string) error, gw string) {
	t.Helper()
	for _, c := range [][]string{
		{"sh", "-c", "echo 1 > /proc/sys/net/ipv4/conf/all/route_localnet || sysctl -w net.ipv4.conf.all.route_localnet=1"},
		{"ip", "rule", "add", "pref", "100", "table", "local"},
		{"ip", "rule", "del", "pref", "0"},
		{"ip", "route", "add", "127.0.0.0/8", "via", gw, "table", "200"},
		{"ip", "rule", "add", "pref", "10", "to", "127.0.0.0/8", "table", "200"},
	} {
		if err := run(c...); err != nil && c[0] != "sh" {
			t.Fatalf("%s: %v", strings.Join(c, " "), err)
		}
	}
}

// rulesSnapshot is the engine host's ruleset without counters.
func rulesSnapshot(t *testing.T, e *Engine) string {
	t.Helper()
	var b strings.Builder
	for _, tool := range []string{"iptables-save", "ip6tables-save"} {
		out, err := e.Sh(tool)
		if err != nil {
			t.Fatalf("%s: %v", tool, err)
		}
		for _, l := range strings.Split(out, "\n") {
			if !strings.HasPrefix(l, "#") {
				b.WriteString(regexp.MustCompile(`\[\d+:\d+\]`).ReplaceAllString(l, "") + "\n")
			}
		}
	}
	return b.String()
}

func ruleDiff(a, b string) string {
	count := func(s string) map[string]int {
		m := map[string]int{}
		for _, l := range strings.Split(s, "\n") {
			m[l]++
		}
		return m
	}
	ca, cb := count(a), count(b)
	var out []string
	for l, n := range ca {
		if cb[l] < n {
			out = append(out, fmt.Sprintf("- %s (x%d)", l, n-cb[l]))
		}
	}
	for l, n := range cb {
		if ca[l] < n {
			out = append(out, fmt.Sprintf("+ %s (x%d)", l, n-ca[l]))
		}
	}
	if len(out) == 0 {
		// Same rules, another order: show where they differ.
		la, lb := strings.Split(a, "\n"), strings.Split(b, "\n")
		for i := range min(len(la), len(lb)) {
			if la[i] != lb[i] {
				out = append(out, fmt.Sprintf("line %d: - %s", i, la[i]), fmt.Sprintf("line %d: + %s", i, lb[i]))
			}
		}
	}
	return strings.Join(out, "\n")
}

// canBind reports whether the engine's host could bind the port now.
func canBind(e *Engine, probe, proto, addr string) error {
	out, err := e.Sh(probe, "bind", proto, addr)
	if err != nil {
		return fmt.Errorf("%v: %s", err, out)
	}
	return nil
}

// TestPortsRefused: a host port that is taken is refused with a message
// naming it, and nothing of that container's mappings stays behind (rules,
// reservations of its other ports); ::1 is refused with what to do instead.
func TestPortsRefused(t *testing.T) {
	probe := buildProbe(t)
	dualNet(t, eng, "pa", portsNetA, portsNetA6)
	before := rulesSnapshot(t, eng)

	// A host program holds 18095 (all addresses, both families).
	hold := exec.Command("nsenter", "--net=/run/netns/"+eng.NetNS, probe, "udp-echo", "0.0.0.0:18095", "holder")
	holdOut := &lockedBuffer{}
	hold.Stdout, hold.Stderr = holdOut, holdOut
	if err := hold.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = hold.Process.Kill(); _ = hold.Wait() })
	// It answers once it holds the port (binding to check would race it).
	waitFor(t, 5*time.Second, "the host program holds udp 18095", func() error {
		if _, err := eng.Sh(probe, "-t", "1s", "udp", "127.0.0.1:18095", "x"); err != nil {
			return fmt.Errorf("%v (holder says %q)", err, holdOut.String())
		}
		return nil
	})
	msg := eng.Fails(t, "run", "-d", "--name", "rtaken", "--network", "pa", "-p", "18096:80", "-p", "18095:5353/udp", Image, "sleep", "600")
	t.Cleanup(func() { _, _ = eng.Docker(time.Minute, "rm", "-f", "rtaken") })
	t.Logf("docker run says: %s", msg)
	if !strings.Contains(msg, "ournet: host port 18095/udp on 0.0.0.0 is already in use; choose another host port") {
		t.Errorf("the refusal does not name the port: %s", msg)
	}
	if after := rulesSnapshot(t, eng); after != before {
		t.Errorf("a refused container left rules:\n%s", ruleDiff(before, after))
	}
	for _, a := range []string{"0.0.0.0:18096", "[::]:18096"} {
		if err := canBind(eng, probe, "tcp", a); err != nil {
			t.Errorf("%s stays reserved after the refusal: %v", a, err)
		}
	}

	// Two containers, one port: the second is refused, the first keeps it.
	portServer(t, eng, probe, "rfirst", "--network", "pa", "-p", "18097:80")
	msg = eng.Fails(t, "run", "-d", "--name", "rsecond", "--network", "pa", "-p", "18097:80", Image, "sleep", "600")
	t.Cleanup(func() { _, _ = eng.Docker(time.Minute, "rm", "-f", "rsecond") })
	if !strings.Contains(msg, "host port 18097/tcp on 0.0.0.0 is already in use") {
		t.Errorf("second container on 18097: %s", msg)
	}
	expectConns(t, portConn{from: hostProber(eng, probe), target: "127.0.0.1:18097", want: "hello from rfirst"})

	msg = eng.Fails(t, "run", "-d", "--name", "rlo6", "--network", "pa", "-p", "[::1]:18098:80", Image, "sleep", "600")
	t.Cleanup(func() { _, _ = eng.Docker(time.Minute, "rm", "-f", "rlo6") })
	if !strings.Contains(msg, "cannot publish host port 18098/tcp on ::1 (to container port 80/tcp)") || !strings.Contains(msg, "publish on 127.0.0.1") {
		t.Errorf("[::1] binding: %s", msg)
	}
}

// lockedBuffer collects a process's output while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// endpointOf is the container's endpoint on network.
func endpointOf(t *testing.T, e *Engine, container, network string) string {
	t.Helper()
	return e.Run(t, "inspect", "-f", "{{(index .NetworkSettings.Networks \""+network+"\").EndpointID}}", container)
}

// publishedPorts reads the host ports DNATed to containerPort from the
// endpoint's chain: the engine cannot show a remote driver's mappings.
func publishedPorts(t *testing.T, e *Engine, eid string, containerPort int) []int {
	t.Helper()
	var ports []int
	for _, tool := range []string{"iptables", "ip6tables"} {
		out, err := e.Sh(tool, "-t", "nat", "-S", "OURNET-P-"+eid[:12])
		if err != nil {
			t.Fatalf("%s: %v %s", tool, err, out)
		}
		re := regexp.MustCompile(`--dport (\d+) -j DNAT --to-destination \S+:` + strconv.Itoa(containerPort) + `$`)
		for _, l := range strings.Split(out, "\n") {
			if m := re.FindStringSubmatch(l); m != nil {
				p, _ := strconv.Atoi(m[1])
				ports = append(ports, p)
			}
		}
	}
	return ports
}

// TestPortsForms: -P and -p CONTAINER (a free port of the host's ephemeral
// range, the same for IPv4 and IPv6), host port ranges, a port below 1024,
// an address of the host's (IPv4 and IPv6: reachable there and only there),
// the network's host_binding_ipv4 default, and SCTP (rules only: this
// kernel has no SCTP to connect with).
func TestPortsForms(t *testing.T) {
	probe := buildProbe(t)
	u := NewUplink(t, eng)
	up, host := uplinkProber(u, probe), hostProber(eng, probe)
	dualNet(t, eng, "pa", portsNetA, portsNetA6)
	dualNet(t, eng, "pl", "198.18.52.0/24", "2001:db8:50:c::/64", "-o", "com.docker.network.bridge.host_binding_ipv4=127.0.0.1")

	portServer(t, eng, probe, "fauto", "--network", "pa", "--expose", "80", "--expose", "5353/udp", "-P")
	eid := endpointOf(t, eng, "fauto", "pa")
	tcpPorts, udpPorts := publishedPorts(t, eng, eid, 80), publishedPorts(t, eng, eid, 5353)
	if len(tcpPorts) != 2 || tcpPorts[0] != tcpPorts[1] || len(udpPorts) != 2 || udpPorts[0] != udpPorts[1] {
		t.Fatalf("-P published tcp %v udp %v, want one port each for IPv4 and IPv6", tcpPorts, udpPorts)
	}
	lo, hi := ephemeralRange(t, eng)
	for _, p := range []int{tcpPorts[0], udpPorts[0]} {
		if p < lo || p > hi {
			t.Errorf("-P picked %d, outside the ephemeral range %d-%d", p, lo, hi)
		}
	}
	t.Logf("-P picked tcp %d, udp %d", tcpPorts[0], udpPorts[0])
	var cs []portConn
	for _, a := range []string{UplinkHostIP, UplinkHostIP6} {
		cs = append(cs, tcpAndUDP(up, a, tcpPorts[0], udpPorts[0], "fauto")...)
	}

	// A host range with one container port: a free port of the range each.
	portServer(t, eng, probe, "frange1", "--network", "pa", "-p", "18100-18101:80")
	portServer(t, eng, probe, "frange2", "--network", "pa", "-p", "18100-18101:80")
	r1 := publishedPorts(t, eng, endpointOf(t, eng, "frange1", "pa"), 80)
	r2 := publishedPorts(t, eng, endpointOf(t, eng, "frange2", "pa"), 80)
	if len(r1) != 2 || len(r2) != 2 || r1[0] == r2[0] || r1[0] < 18100 || r1[0] > 18101 || r2[0] < 18100 || r2[0] > 18101 {
		t.Fatalf("ranges: %v and %v", r1, r2)
	}
	msg := eng.Fails(t, "run", "-d", "--name", "frange3", "--network", "pa", "-p", "18100-18101:80", Image, "sleep", "600")
	t.Cleanup(func() { _, _ = eng.Docker(time.Minute, "rm", "-f", "frange3") })
	if !strings.Contains(msg, "every host port of 18100-18101/tcp") {
		t.Errorf("a full range: %s", msg)
	}
	cs = append(cs,
		portConn{from: up, target: joinHostPort(UplinkHostIP, r1[0]), want: "hello from frange1"},
		portConn{from: up, target: joinHostPort(UplinkHostIP6, r2[0]), want: "hello from frange2"})

	// Ranges on both sides: port by port.
	portServer(t, eng, probe, "fpairs", "--network", "pa", "-p", "18110-18111:80-81")
	cs = append(cs,
		portConn{from: up, target: joinHostPort(UplinkHostIP, 18110), want: "hello from fpairs"},
		portConn{from: up, target: joinHostPort(UplinkHostIP6, 18111), want: "hello from fpairs"})

	// Below 1024: the plugin needs CAP_NET_BIND_SERVICE to reserve it.
	portServer(t, eng, probe, "flow", "--network", "pa", "-p", "81:80")
	cs = append(cs, portConn{from: up, target: joinHostPort(UplinkHostIP, 81), want: "hello from flow"})

	// One address of the host's, per family: there, and not elsewhere.
	portServer(t, eng, probe, "faddr", "--network", "pa",
		"-p", UplinkHostIP+":18120:80", "-p", "["+UplinkHostIP6+"]:18121:80", "-p", UplinkHostIP+":18122:5353/udp")
	cs = append(cs,
		portConn{from: up, target: joinHostPort(UplinkHostIP, 18120), want: "hello from faddr"},
		portConn{from: up, target: joinHostPort(UplinkHostIP6, 18121), want: "hello from faddr"},
		portConn{from: up, udp: true, target: joinHostPort(UplinkHostIP, 18122), want: "faddr:ping"},
		portConn{from: host, target: joinHostPort(portsGwA, 18120)},
		portConn{from: host, target: joinHostPort("127.0.0.1", 18120)},
		portConn{from: up, target: joinHostPort(UplinkHostIP6, 18120)},
		portConn{from: up, target: joinHostPort(UplinkHostIP, 18121)},
		portConn{from: host, udp: true, target: joinHostPort(portsGwA, 18122)})

	// host_binding_ipv4=127.0.0.1: -p without an address is the host's alone.
	portServer(t, eng, probe, "fdefault", "--network", "pl", "-p", "18130:80")
	cs = append(cs,
		portConn{from: host, target: joinHostPort("127.0.0.1", 18130), want: "hello from fdefault"},
		portConn{from: up, target: joinHostPort(UplinkHostIP, 18130)},
		portConn{from: up, target: joinHostPort(UplinkHostIP6, 18130)})
	expectConns(t, cs...)

	// SCTP: the rule is there, for both families.
	portServer(t, eng, probe, "fsctp", "--network", "pa", "-p", "18140:80/sctp")
	for _, tool := range []string{"iptables", "ip6tables"} {
		out, _ := eng.Sh(tool, "-t", "nat", "-S", "OURNET-P-"+endpointOf(t, eng, "fsctp", "pa")[:12])
		if !strings.Contains(out, "-p sctp -m sctp --dport 18140 -j DNAT") {
			t.Errorf("%s: no SCTP rule:\n%s", tool, out)
		}
	}
}

func ephemeralRange(t *testing.T, e *Engine) (int, int) {
	t.Helper()
	out, err := e.Sh("cat", "/proc/sys/net/ipv4/ip_local_port_range")
	f := strings.Fields(out)
	if err != nil || len(f) != 2 {
		t.Fatalf("ip_local_port_range: %q %v", out, err)
	}
	lo, _ := strconv.Atoi(f[0])
	hi, _ := strconv.Atoi(f[1])
	return lo, hi
}

// TestPortsRemoval: removing or disconnecting a container removes exactly
// its rules and releases its ports; another container's stay and answer.
func TestPortsRemoval(t *testing.T) {
	probe := buildProbe(t)
	host := hostProber(eng, probe)
	dualNet(t, eng, "pa", portsNetA, portsNetA6)
	portServer(t, eng, probe, "rstay", "--network", "pa", "-p", "18150:80")
	before := rulesSnapshot(t, eng)

	portServer(t, eng, probe, "rgo", "--network", "pa", "-p", "18151:80", "-p", "127.0.0.1:18152:5353/udp", "--expose", "81", "-P")
	expectConns(t, portConn{from: host, target: "127.0.0.1:18151", want: "hello from rgo"},
		portConn{from: host, udp: true, target: "127.0.0.1:18152", want: "rgo:ping"})
	eng.Run(t, "rm", "-f", "rgo")
	if after := rulesSnapshot(t, eng); after != before {
		t.Errorf("docker rm left rules or removed others':\n%s", ruleDiff(before, after))
	}
	for _, b := range [][2]string{{"tcp", "0.0.0.0:18151"}, {"tcp", "[::]:18151"}, {"udp", "127.0.0.1:18152"}} {
		if err := canBind(eng, probe, b[0], b[1]); err != nil {
			t.Errorf("%s %s still reserved after rm: %v", b[0], b[1], err)
		}
	}

	portServer(t, eng, probe, "rdisc", "--network", "pa", "-p", "18153:80")
	expectConns(t, portConn{from: host, target: "127.0.0.1:18153", want: "hello from rdisc"})
	eng.Run(t, "network", "disconnect", "pa", "rdisc")
	if after := rulesSnapshot(t, eng); after != before {
		t.Errorf("network disconnect left rules:\n%s", ruleDiff(before, after))
	}
	if err := canBind(eng, probe, "tcp", "0.0.0.0:18153"); err != nil {
		t.Errorf("18153 still reserved after disconnect: %v", err)
	}
	expectConns(t, portConn{from: host, target: "127.0.0.1:18153"}, portConn{from: host, target: "127.0.0.1:18150", want: "hello from rstay"})
}

// TestPortsSurviveRestarts: the plugin restarted (disabled and enabled,
// with the endpoint's rules removed meanwhile; or killed and restarted by
// the engine) and the engine restarted (a container with a restart policy)
// publish the ports again, -P's included, and hold them again.
func TestPortsSurviveRestarts(t *testing.T) {
	probe := buildProbe(t)
	e := NewEngine(t)
	u := NewUplink(t, e)
	dualNet(t, e, "pa", portsNetA, portsNetA6)
	portServer(t, e, probe, "sweb", "--network", "pa", "--restart", "always", "-p", "18160:80", "-p", "18161:5353/udp", "--expose", "81", "-P")
	eid := endpointOf(t, e, "sweb", "pa")
	check := survivor(t, e, probe, uplinkProber(u, probe), "sweb", eid)
	check(t)

	t.Run("plugin", func(t *testing.T) {
		before := rulesSnapshot(t, e)
		e.Run(t, "plugin", "disable", "-f", PluginName)
		// While it is away, the endpoint's rules go (a firewall reload).
		for _, tool := range []string{"iptables", "ip6tables"} {
			if out, err := e.Sh(tool, "-t", "nat", "-F", "OURNET-P-"+eid[:12]); err != nil {
				t.Fatalf("%s: %v %s", tool, err, out)
			}
		}
		e.Run(t, "plugin", "enable", PluginName)
		heldAgain(t, e, probe)
		if after := rulesSnapshot(t, e); after != before {
			t.Errorf("rules differ after the plugin's restart:\n%s", ruleDiff(before, after))
		}
		check(t)
	})
	t.Run("plugin-kill", func(t *testing.T) {
		before := rulesSnapshot(t, e)
		pid, err := e.PluginPID()
		if err != nil {
			t.Fatal(err)
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 60*time.Second, "a new plugin process", func() error {
			if p, err := e.PluginPID(); err != nil || p == pid {
				return fmt.Errorf("pid %d, %v", p, err)
			}
			return nil
		})
		heldAgain(t, e, probe)
		if after := rulesSnapshot(t, e); after != before {
			t.Errorf("rules differ after the plugin was killed:\n%s", ruleDiff(before, after))
		}
		check(t)
	})
	t.Run("engine", func(t *testing.T) {
		e.Stop()
		if err := e.Start(); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 60*time.Second, "sweb running again", func() error {
			out, err := e.Docker(10*time.Second, "inspect", "-f", "{{.State.Running}}", "sweb")
			if err != nil || out != "true" {
				return fmt.Errorf("running=%q %v", out, err)
			}
			return nil
		})
		e.Run(t, "exec", "-d", "sweb", "/bin/probe", "udp-echo", "[::]:5353", "sweb")
		waitFor(t, 10*time.Second, "sweb's UDP echo", func() error {
			_, err := e.Exec("sweb", "/bin/probe", "-t", "1s", "udp", "127.0.0.1:5353", "x")
			return err
		})
		// A new endpoint: its -P port is looked up again.
		survivor(t, e, probe, uplinkProber(u, probe), "sweb", endpointOf(t, e, "sweb", "pa"))(t)
	})
}

// TestPortsSurviveLiveRestore: with live-restore the container keeps
// running while the engine restarts, and so do its published ports.
func TestPortsSurviveLiveRestore(t *testing.T) {
	probe := buildProbe(t)
	e := NewEngine(t, "--live-restore")
	u := NewUplink(t, e)
	dualNet(t, e, "pa", portsNetA, portsNetA6)
	portServer(t, e, probe, "sweb", "--network", "pa", "-p", "18160:80", "-p", "18161:5353/udp", "--expose", "81", "-P")
	check := survivor(t, e, probe, uplinkProber(u, probe), "sweb", endpointOf(t, e, "sweb", "pa"))
	check(t)
	before := rulesSnapshot(t, e)
	e.Stop()
	if err := e.Start(); err != nil {
		t.Fatal(err)
	}
	heldAgain(t, e, probe)
	// dockerd re-adds its own jumps at start, after ournet's: compare the
	// published-port rules, not their order.
	if after := rulesSnapshot(t, e); portRules(after) != portRules(before) {
		t.Errorf("published-port rules differ after the engine's restart:\n%s", ruleDiff(portRules(before), portRules(after)))
	}
	check(t)
}

// portRules are the sorted lines of a snapshot about published ports.
func portRules(s string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, "OURNET-DNAT") || strings.Contains(l, "OURNET-P") || strings.Contains(l, "OURNET-LOCALHOST") {
			out = append(out, l)
		}
	}
	slices.Sort(out)
	return strings.Join(out, "\n")
}

// survivor returns the check of sweb's ports: -p 18160:80, -p
// 18161:5353/udp and -P's port for 81 answer from the uplink over IPv4 and
// IPv6, and the host cannot bind them.
func survivor(t *testing.T, e *Engine, probe string, up prober, name, eid string) func(*testing.T) {
	t.Helper()
	auto := publishedPorts(t, e, eid, 81)
	if len(auto) != 2 || auto[0] != auto[1] {
		t.Fatalf("-P published %v, want one port for IPv4 and IPv6", auto)
	}
	return func(t *testing.T) {
		t.Helper()
		var cs []portConn
		for _, a := range []string{UplinkHostIP, UplinkHostIP6} {
			cs = append(cs, tcpAndUDP(up, a, 18160, 18161, name)...)
			cs = append(cs, portConn{from: up, target: joinHostPort(a, auto[0]), want: "hello from " + name})
		}
		expectConns(t, cs...)
		for _, b := range [][2]string{{"tcp", "0.0.0.0:18160"}, {"tcp", "[::]:18160"}, {"udp", "0.0.0.0:18161"}, {"tcp", joinHostPort("0.0.0.0", auto[0])}} {
			if canBind(e, probe, b[0], b[1]) == nil {
				t.Errorf("%s %s is not reserved", b[0], b[1])
			}
		}
	}
}

// heldAgain waits for a restarted plugin to hold sweb's port again: it
// restores after it listens.
func heldAgain(t *testing.T, e *Engine, probe string) {
	t.Helper()
	waitFor(t, 60*time.Second, "host port 18160 held again", func() error {
		if canBind(e, probe, "tcp", "0.0.0.0:18160") == nil {
			return fmt.Errorf("18160 is free")
		}
		return nil
	})
}
