//go:build cluster

package e2e

// Issue #13's cases: one ournet network across three Docker hosts (the rig
// of cluster_rig_test.go), each case a real outcome: packets that arrive
// or must not, addresses, keys in etcd, links and rules in each host's
// namespace. One rig serves every case, in a fixed order: each case
// leaves the cluster as it found it (apart from the containers a1-a3 of
// the network app, which the first case makes for the others), and the
// fault cases come last, then the one that removes everything.
//
//	go test -tags cluster -count=1 -v -run TestCluster -timeout 15m ./e2e/
//
// Addresses: cluster networks 198.18.210-219.0/24, the rig's own check
// 198.18.221-223.0/24; the underlay is 203.0.113.0/24, the uplink
// 198.51.100.0/24.

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	appNet    = "app"
	appSubnet = "198.18.210.0/24"
	// clusterMTU is the underlay's MTU less VXLAN over IPv4.
	clusterMTU = UnderMTU - 50
)

type clusterSuite struct {
	*Cluster
	top      *testing.T // owns what outlives one case (the network app, a1-a3)
	appReady bool
	appIPs   map[string]string // a1-a3's addresses on app
	tool     string            // testdata/vxlan, built
}

func TestCluster(t *testing.T) {
	// Registered first, so it runs last: after the hosts' log tails, which
	// would otherwise bury what failed (CI shows the end of a test).
	var failed failures
	t.Cleanup(func() { failed.sayAgain(t) })
	s := &clusterSuite{Cluster: NewCluster(t, 3), top: t, appIPs: map[string]string{}}
	t.Logf("rig start-up: %s", s.Startup.Round(time.Millisecond))
	for _, c := range []struct {
		name string
		fn   func(testing.TB)
	}{
		{"rig", s.rig},
		{"create-and-talk", s.createAndTalk},
		{"parallel-runs", s.parallelRuns},
		{"4MiB-and-MTU", s.transferAndMTU},
		{"icc-off", s.iccOff},
		{"isolation", s.isolation},
		{"anti-spoofing", s.antiSpoofing},
		{"no-vxlan-from-containers", s.noVXLANFromContainers},
		{"outbound-and-ports-on-host2", s.outboundAndPorts},
		{"mismatch-refused", s.mismatchRefused},
		{"one-etcd-member-down", s.oneMemberDown},
		{"plugin-kill", s.pluginKill},
		{"quorum-lost", s.quorumLost},
		{"host-cut-off", s.hostCutOff},
		{"retire-host", s.retireHost},
		{"nothing-left", s.nothingLeft},
	} {
		start := time.Now()
		t.Run(c.name, func(t *testing.T) { c.fn(&recorded{T: t, to: &failed}) })
		t.Logf("case %s: %s", c.name, time.Since(start).Round(time.Millisecond))
	}
}

// --- helpers -----------------------------------------------------------

// failures are what the cases reported as failed, each with its case.
type failures struct {
	mu   sync.Mutex
	msgs []string
}

func (f *failures) sayAgain(t *testing.T) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.msgs) > 0 {
		t.Logf("what failed, again:\n%s", strings.Join(f.msgs, "\n"))
	}
}

// recorded is a case's T that also notes each failure in failures.
type recorded struct {
	*testing.T
	to *failures
}

func (r *recorded) note(msg string) {
	r.to.mu.Lock()
	r.to.msgs = append(r.to.msgs, r.Name()+": "+msg)
	r.to.mu.Unlock()
}

func (r *recorded) Error(args ...any) { r.Helper(); r.note(fmt.Sprint(args...)); r.T.Error(args...) }
func (r *recorded) Errorf(format string, args ...any) {
	r.Helper()
	r.note(fmt.Sprintf(format, args...))
	r.T.Errorf(format, args...)
}
func (r *recorded) Fatal(args ...any) { r.Helper(); r.note(fmt.Sprint(args...)); r.T.Fatal(args...) }
func (r *recorded) Fatalf(format string, args ...any) {
	r.Helper()
	r.note(fmt.Sprintf(format, args...))
	r.T.Fatalf(format, args...)
}

// poll runs fn every 250 ms until it succeeds or d passes; it returns how
// long that took and fn's last error.
func poll(d time.Duration, fn func() error) (time.Duration, error) {
	start := time.Now()
	for {
		err := fn()
		if err == nil {
			return time.Since(start), nil
		}
		if time.Since(start) > d {
			return time.Since(start), fmt.Errorf("not within %s: %w", d, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// each runs fn for every item at once and returns the errors joined, in
// order ("" if none).
func each[T any](items []T, fn func(T) error) error {
	errs := make([]error, len(items))
	var wg sync.WaitGroup
	for i, it := range items {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = fn(it) }()
	}
	wg.Wait()
	var msgs []string
	for _, err := range errs {
		if err != nil {
			msgs = append(msgs, err.Error())
		}
	}
	if len(msgs) > 0 {
		return fmt.Errorf("%s", strings.Join(msgs, "\n"))
	}
	return nil
}

func (s *clusterSuite) needApp(t testing.TB) {
	t.Helper()
	if !s.appReady {
		t.Fatal("needs the cluster network app with a1-a3, which create-and-talk did not make")
	}
}

// createArgs is the `docker network create` of cluster network name.
func createArgs(name, subnet string, opts ...string) []string {
	args := []string{"network", "create", "-d", "ournet", "--ipam-driver", "ournet", "--subnet", subnet, "-o", "ournet.cluster=" + name}
	for _, o := range opts {
		args = append(args, "-o", o)
	}
	return append(args, name)
}

// clusterNet runs the same create of cluster network name on hosts, in
// order (the first defines it), and removes it from each when owner ends.
func (s *clusterSuite) clusterNet(t, owner testing.TB, name, subnet string, hosts []int, opts ...string) {
	t.Helper()
	for _, i := range hosts {
		h := s.H(i)
		owner.Cleanup(func() { _, _ = h.Docker(time.Minute, "network", "rm", name) })
		if _, err := h.Docker(time.Minute, createArgs(name, subnet, opts...)...); err != nil {
			t.Fatalf("host %d: %v", i, err)
		}
	}
}

// ctr is a container on a host.
type ctr struct {
	h    *CHost
	name string
}

func (c ctr) String() string { return fmt.Sprintf("%s@h%d", c.name, c.h.I) }

// startAll runs sleeping containers at once (args before the image),
// removed when owner ends.
func startAll(t, owner testing.TB, cs []ctr, args ...string) {
	t.Helper()
	for _, c := range cs {
		owner.Cleanup(func() { _, _ = c.h.Docker(time.Minute, "rm", "-f", c.name) })
	}
	if err := each(cs, func(c ctr) error {
		_, err := c.h.Docker(2*time.Minute, append(append([]string{"run", "-d", "--name", c.name}, args...), Image, "sleep", "3600")...)
		if err != nil {
			return fmt.Errorf("host %d: %w", c.h.I, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

func (c ctr) ip(t testing.TB, network string) string { t.Helper(); return c.h.IP(t, c.name, network) }

func (c ctr) exec(cmd ...string) (string, error) { return c.h.Exec(c.name, cmd...) }

func (c ctr) mac(t testing.TB) string {
	t.Helper()
	out, err := c.exec("cat", "/sys/class/net/eth0/address")
	if err != nil || out == "" {
		t.Fatalf("%s: MAC: %v %s", c, err, out)
	}
	return out
}

func (c ctr) ping(addr string) error {
	if err := c.h.Ping(c.name, addr); err != nil {
		return fmt.Errorf("host %d: %w", c.h.I, err)
	}
	return nil
}

// reaches waits (bounded) until c pings addr: the first packets may race
// the other hosts' watches.
func reaches(t testing.TB, c ctr, addr string, d time.Duration) time.Duration {
	t.Helper()
	took, err := poll(d, func() error { return c.ping(addr) })
	if err != nil {
		t.Errorf("%s cannot reach %s: %v", c, addr, err)
	}
	return took
}

// probe is a container and an address it must not reach.
type probe struct {
	from ctr
	addr string
}

// cannotReach: for every probe, neither ping nor TCP (port 8080) gets
// there; all tried at once, since each waits for its timeout.
func cannotReach(t testing.TB, ps ...probe) {
	t.Helper()
	var tries []func()
	for _, p := range ps {
		tries = append(tries, func() {
			if _, err := p.from.exec("ping", "-c", "2", "-W", "1", p.addr); err == nil {
				t.Errorf("%s pinged %s", p.from, p.addr)
			}
		}, func() {
			if out, err := p.from.exec("timeout", "3", "wget", "-q", "-O", "-", "http://"+p.addr+":8080/"); err == nil {
				t.Errorf("%s reached %s:8080 over TCP: %q", p.from, p.addr, out)
			}
		})
	}
	_ = each(tries, func(try func()) error { try(); return nil })
}

// gateway is the IPv4 gateway of network on h: the address of the
// network's bridge in h's namespace (docker network inspect shows no
// gateway the user did not give when the IPAM driver is a plugin).
func gateway(t testing.TB, h *CHost, network string) string {
	t.Helper()
	id := h.Run(t, "network", "inspect", "-f", "{{.Id}}", network)
	out, err := h.Sh("ip", "-o", "-4", "addr", "show", "dev", "ournet-"+id[:8])
	f := strings.Fields(out)
	if err != nil || len(f) < 4 || f[2] != "inet" {
		t.Fatalf("host %d: network %s: no IPv4 address on its bridge: %v %s", h.I, network, err, out)
	}
	return strings.SplitN(f[3], "/", 2)[0]
}

// addrs is the address on network of every running container on h.
func (h *CHost) addrs(network string) (map[string]string, error) {
	ids, err := h.Docker(30*time.Second, "ps", "-q", "--filter", "network="+network)
	if err != nil || ids == "" {
		return map[string]string{}, err
	}
	out, err := h.Docker(30*time.Second, append([]string{"inspect", "-f",
		"{{.Name}} {{(index .NetworkSettings.Networks \"" + network + "\").IPAddress}}"}, strings.Fields(ids)...)...)
	if err != nil {
		return nil, err
	}
	m := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) == 2 {
			m[strings.TrimPrefix(f[0], "/")] = f[1]
		}
	}
	return m, nil
}

// allAddrs is every running container's address on network, on every host
// ("name@hN" -> address), and an error naming any address held twice.
func (s *clusterSuite) allAddrs(network string) (map[string]string, error) {
	all, holder := map[string]string{}, map[string]string{}
	var dups []string
	for _, h := range s.Hosts {
		m, err := h.addrs(network)
		if err != nil {
			return nil, fmt.Errorf("host %d: %w", h.I, err)
		}
		for name, a := range m {
			who := fmt.Sprintf("%s@h%d", name, h.I)
			all[who] = a
			if prev, ok := holder[a]; ok {
				dups = append(dups, fmt.Sprintf("%s held by %s and %s", a, prev, who))
			}
			holder[a] = who
		}
	}
	if len(dups) > 0 {
		sort.Strings(dups)
		return all, fmt.Errorf("duplicate addresses: %s", strings.Join(dups, "; "))
	}
	return all, nil
}

// endpointsMatch compares the endpoints etcd holds for cluster network
// name with the running containers on every host: the same addresses, each
// under the VTEP of the host that runs it, none missing, none stale.
func (s *clusterSuite) endpointsMatch(name string) error {
	all, err := s.allAddrs(name)
	if err != nil {
		return err
	}
	want := map[string]string{}
	for who, a := range all {
		i, _ := strconv.Atoi(who[strings.LastIndex(who, "@h")+2:])
		want[a] = s.H(i).Addr
	}
	kv, err := s.EtcdGet(EtcdPrefix + "networks/" + name + "/endpoints/")
	if err != nil {
		return err
	}
	got := map[string]string{}
	for k, v := range kv {
		var ep struct{ VTEP string }
		_ = json.Unmarshal([]byte(v), &ep)
		got[path.Base(k)] = ep.VTEP
	}
	var diff []string
	for a, vtep := range want {
		if got[a] != vtep {
			diff = append(diff, fmt.Sprintf("%s: etcd says VTEP %q, it runs on %s", a, got[a], vtep))
		}
	}
	for a, vtep := range got {
		if _, ok := want[a]; !ok {
			diff = append(diff, fmt.Sprintf("%s: stale in etcd (VTEP %s), no container has it", a, vtep))
		}
	}
	if len(diff) > 0 {
		sort.Strings(diff)
		return fmt.Errorf("etcd's endpoints of %s differ from the hosts: %s", name, strings.Join(diff, "; "))
	}
	return nil
}

// vni is cluster network name's VXLAN network identifier, from its spec.
func (s *clusterSuite) vni(t testing.TB, name string) int {
	t.Helper()
	kv, err := s.EtcdGet(EtcdPrefix + "networks/" + name + "/spec")
	if err != nil {
		t.Fatal(err)
	}
	var spec struct{ VNI int }
	for _, v := range kv {
		_ = json.Unmarshal([]byte(v), &spec)
	}
	if spec.VNI == 0 {
		t.Fatalf("no VNI in %s's spec: %v", name, kv)
	}
	return spec.VNI
}

// vxTool builds testdata/vxlan once.
func (s *clusterSuite) vxTool(t testing.TB) string {
	t.Helper()
	if s.tool != "" {
		return s.tool
	}
	out := filepath.Join(s.top.TempDir(), "vxlan")
	cmd := exec.Command("go", "build", "-o", out, "./testdata/vxlan")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building testdata/vxlan: %v\n%s", err, b)
	}
	s.tool = out
	return out
}

// listen starts the vxlan tool's UDP listener on port 9999 in c, and
// returns what it received so far.
func listen(t testing.TB, c ctr) func() string {
	t.Helper()
	if _, err := c.h.Docker(time.Minute, "exec", "-d", c.name, "sh", "-c", "/bin/vxlan listen -t 5m 9999 > /tmp/got 2>&1"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	return func() string { out, _ := c.exec("cat", "/tmp/got"); return out }
}

// arrives waits until got() holds msg.
func arrives(t testing.TB, what string, got func() string, msg string) {
	t.Helper()
	if _, err := poll(5*time.Second, func() error {
		if !strings.Contains(got(), msg) {
			return fmt.Errorf("not received")
		}
		return nil
	}); err != nil {
		t.Errorf("%s: %q did not arrive: %v; received: %q", what, msg, err, got())
	}
}

// crossStream sends lines lines, 10 a second, over one TCP connection
// from container from to container to (on port), and returns a function
// counting the lines received so far; the connection is up on return.
func crossStream(t testing.TB, from, to ctr, toIP string, port, lines int) func() int {
	t.Helper()
	recv := fmt.Sprintf("sleep 300 | nc -l -p %d > /tmp/recv%d", port, port)
	if _, err := to.h.Docker(time.Minute, "exec", "-d", to.name, "sh", "-c", recv); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	send := fmt.Sprintf("for i in $(seq 1 %d); do echo line$i; sleep 0.1; done | nc %s %d", lines, toIP, port)
	if _, err := from.h.Docker(time.Minute, "exec", "-d", from.name, "sh", "-c", send); err != nil {
		t.Fatal(err)
	}
	count := func() int {
		out, err := to.exec("sh", "-c", fmt.Sprintf("wc -l < /tmp/recv%d", port))
		if err != nil {
			return -1
		}
		n, _ := strconv.Atoi(strings.TrimSpace(out))
		return n
	}
	if _, err := poll(10*time.Second, func() error {
		if count() < 1 {
			return fmt.Errorf("nothing received yet")
		}
		return nil
	}); err != nil {
		t.Fatalf("stream %s -> %s did not start: %v", from, to, err)
	}
	return count
}

// --- the cases -----------------------------------------------------------

// rig: the rig itself, with nothing of issue #13 needed: the underlay, etcd
// from inside each host, the plugin enabled with the cluster settings, and
// an ordinary (single-host) ournet network working on each host.
func (s *clusterSuite) rig(t testing.TB) {
	for _, a := range s.Hosts {
		// (not /sys/class/net: nsenter --net keeps the real host's /sys)
		if out, err := a.Sh("ip", "-o", "link", "show", UnderIf); err != nil || !strings.Contains(out, fmt.Sprintf(" mtu %d ", UnderMTU)) {
			t.Errorf("host %d: %s: %s (%v), want MTU %d", a.I, UnderIf, out, err, UnderMTU)
		}
		for _, b := range s.Hosts {
			if a != b {
				if out, err := a.ShFor(10*time.Second, "busybox", "ping", "-c", "1", "-W", "2", b.Addr); err != nil {
					t.Errorf("host %d cannot ping host %d over the underlay: %v %s", a.I, b.I, err, out)
				}
			}
		}
	}
	for _, h := range s.Hosts {
		if err := s.EtcdHealthy(h.I); err != nil {
			t.Errorf("from host %d: %v", h.I, err)
		}
	}
	if n, err := s.EtcdMembers(2); err != nil || n != len(s.Hosts) {
		t.Errorf("etcd from host 2: %d members (%v), want %d", n, err, len(s.Hosts))
	}
	for i, h := range s.Hosts {
		out := h.Run(t, "plugin", "inspect", "-f", "{{.Enabled}} {{json .Settings.Env}}", PluginName)
		if !strings.HasPrefix(out, "true ") || !strings.Contains(out, `"ETCD_ENDPOINTS=`+s.Endpoints+`"`) {
			t.Errorf("host %d: plugin %s", h.I, out)
		}
		if adv := "CLUSTER_ADVERTISE=" + h.Addr; (i < len(s.Hosts)-1) != strings.Contains(out, adv) {
			t.Errorf("host %d: plugin settings %s: %s expected only on the hosts before the last", h.I, out, adv)
		}
	}
	if err := each(s.Hosts, func(h *CHost) error {
		name, subnet := "plain", fmt.Sprintf("198.18.%d.0/24", 220+h.I)
		if _, err := h.Docker(time.Minute, "network", "create", "-d", "ournet", "--ipam-driver", "ournet", "--subnet", subnet, name); err != nil {
			return err
		}
		defer h.Docker(time.Minute, "network", "rm", name)
		defer h.Docker(time.Minute, "rm", "-f", "plain-a", "plain-b")
		for _, c := range []string{"plain-a", "plain-b"} {
			if _, err := h.Docker(time.Minute, "run", "-d", "--name", c, "--network", name, Image, "sleep", "600"); err != nil {
				return fmt.Errorf("host %d: %w", h.I, err)
			}
		}
		ip, err := h.Docker(time.Minute, "inspect", "-f", "{{(index .NetworkSettings.Networks \"plain\").IPAddress}}", "plain-b")
		if err != nil {
			return err
		}
		if err := h.Ping("plain-a", ip); err != nil {
			return fmt.Errorf("host %d: a single-host ournet network: %w", h.I, err)
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
}

// createAndTalk: the same create on every host; cross-host ping and TCP
// both ways; one gateway address everywhere; the hosts and the network in
// etcd (the last host found its address by itself).
func (s *clusterSuite) createAndTalk(t testing.TB) {
	start := time.Now()
	s.clusterNet(t, s.top, appNet, appSubnet, []int{1, 2, 3})
	t.Logf("network %s created on 3 hosts in %s", appNet, time.Since(start).Round(time.Millisecond))

	keys := s.EtcdKeys(t, EtcdPrefix)
	for _, k := range []string{"networks/app/spec", "networks/app/members/"} {
		if !slices.ContainsFunc(keys, func(x string) bool { return strings.HasPrefix(x, EtcdPrefix+k) }) {
			t.Errorf("no etcd key %s%s in %v", EtcdPrefix, k, keys)
		}
	}
	members := 0
	for _, k := range keys {
		if strings.HasPrefix(k, EtcdPrefix+"networks/app/members/") {
			members++
		}
	}
	if members != 3 {
		t.Errorf("%d members of app in etcd, want 3: %v", members, keys)
	}
	if vnis, _ := s.EtcdGet(EtcdPrefix + "vni/"); !slices.Contains(slices.Collect(maps.Values(vnis)), appNet) {
		t.Errorf("no vni/ key names %s: %v", appNet, vnis)
	}
	hosts, err := s.EtcdGet(EtcdPrefix + "hosts/")
	if err != nil {
		t.Fatal(err)
	}
	var adv []string
	for _, v := range hosts {
		var h struct{ Advertise string }
		_ = json.Unmarshal([]byte(v), &h)
		adv = append(adv, h.Advertise)
	}
	sort.Strings(adv)
	if want := []string{UnderAddr(1), UnderAddr(2), UnderAddr(3)}; !slices.Equal(adv, want) {
		t.Errorf("hosts in etcd advertise %v, want %v (host 3 without CLUSTER_ADVERTISE: from its route to the first endpoint)", adv, want)
	}

	gw := gateway(t, s.H(1), appNet)
	for _, h := range s.Hosts[1:] {
		if g := gateway(t, h, appNet); g != gw {
			t.Errorf("gateway on host %d is %s, on host 1 %s", h.I, g, gw)
		}
	}
	cs := []ctr{{s.H(1), "a1"}, {s.H(2), "a2"}, {s.H(3), "a3"}}
	startAll(t, s.top, cs, "--network", appNet)
	for _, c := range cs {
		s.appIPs[c.name] = c.ip(t, appNet)
	}
	s.appReady = true // the later cases can run, whatever fails below
	for _, c := range cs {
		if route, err := c.exec("ip", "route", "show", "default"); err != nil || !strings.Contains(route, "via "+gw) {
			t.Errorf("%s: default route %q (%v), want via %s", c, route, err, gw)
		}
		reaches(t, c, gw, 5*time.Second)
		c.h.Serve(t, c.name, 8080)
	}
	for _, from := range cs {
		for _, to := range cs {
			if from == to {
				continue
			}
			took := reaches(t, from, s.appIPs[to.name], 10*time.Second)
			out, err := from.h.Fetch(from.name, "http://"+s.appIPs[to.name]+":8080/")
			if err != nil || out != "hello from "+to.name {
				t.Errorf("TCP %s -> %s: %q %v", from, to, out, err)
			} else {
				t.Logf("%s -> %s: ping after %s, TCP ok", from, to, took.Round(time.Millisecond))
			}
		}
	}
	// That IPv4 took the fast path, past the bridges (overlay.SetFastPath):
	// each host's VXLAN device handed the packets for its container
	// straight to the container's veth, and the veth its container's
	// packets straight to the VXLAN device.
	for _, h := range s.Hosts {
		if from, to, out, err := h.FastPathPackets(); err != nil || from == 0 || to == 0 {
			t.Errorf("host %d: the fast path redirected %d packets from the tunnel to the containers and %d from the containers to the tunnel (%v):\n%s", h.I, from, to, err, out)
		} else {
			t.Logf("host %d: %d packets from the tunnel went straight to their container, %d from the container straight to the tunnel", h.I, from, to)
		}
	}
}

// parallelRuns: 18 `docker run` at once, 6 per host: 18 distinct
// addresses, each reachable from a container on another host.
func (s *clusterSuite) parallelRuns(t testing.TB) {
	s.needApp(t)
	var cs []ctr
	for _, h := range s.Hosts {
		for k := 1; k <= 6; k++ {
			cs = append(cs, ctr{h, fmt.Sprintf("p%d-%d", h.I, k)})
		}
	}
	t.Cleanup(func() {
		_ = each(s.Hosts, func(h *CHost) error {
			var names []string
			for _, c := range cs {
				if c.h == h {
					names = append(names, c.name)
				}
			}
			_, err := h.Docker(time.Minute, append([]string{"rm", "-f"}, names...)...)
			return err
		})
	})
	kept, _ := s.H(1).FastPathFilters()
	start := time.Now()
	err := each(cs, func(c ctr) error {
		_, err := c.h.Docker(2*time.Minute, "run", "-d", "--name", c.name, "--network", appNet, Image, "sleep", "3600")
		return err
	})
	t.Logf("18 parallel runs over 3 hosts: %s", time.Since(start).Round(time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	// Each run reprogrammed host 1's fast path; the filters that stay
	// wanted (those for a2 and a3) were left as they were, not made again.
	now, out := s.H(1).FastPathFilters()
	if len(kept) < 2 {
		t.Errorf("host 1 had %d fast-path redirects before the runs, want at least 2 (to a2 and a3):\n%s", len(kept), out)
	}
	t.Logf("host 1's %d fast-path redirects before the runs, %d after", len(kept), len(now))
	var remade []string
	for fh, action := range kept {
		if now[fh] != action {
			remade = append(remade, fmt.Sprintf("%s (action %s, then %q)", fh, action, now[fh]))
		}
	}
	if len(remade) > 0 {
		t.Errorf("host 1's fast-path filters made again by the runs: %v\n%s", remade, out)
	}
	all, err := s.allAddrs(appNet)
	if err != nil {
		t.Error(err)
	}
	subnet := netip.MustParsePrefix(appSubnet)
	byHost := map[int][]string{}
	for _, c := range cs {
		a, ok := all[c.String()]
		if !ok {
			t.Errorf("%s has no address on %s", c, appNet)
			continue
		}
		if ip, err := netip.ParseAddr(a); err != nil || !subnet.Contains(ip) {
			t.Errorf("%s: address %q outside %s", c, a, appSubnet)
		}
		byHost[c.h.I] = append(byHost[c.h.I], a)
	}
	// From a1-a3, each host's six from the next host's container.
	if err := each(s.Hosts, func(h *CHost) error {
		from := ctr{s.H(h.I%3 + 1), fmt.Sprintf("a%d", h.I%3+1)}
		script := "for ip in " + strings.Join(byHost[h.I], " ") + "; do ping -c 1 -W 2 $ip >/dev/null 2>&1 || echo $ip; done"
		_, err := poll(15*time.Second, func() error {
			out, err := from.exec("sh", "-c", script)
			if err != nil || out != "" {
				return fmt.Errorf("%s cannot reach host %d's %s (%v)", from, h.I, strings.Fields(out), err)
			}
			return nil
		})
		return err
	}); err != nil {
		t.Error(err)
	}
}

// transferAndMTU: 4 MiB between hosts arrives whole, both ways round the
// hosts, and the MTU inside containers is the underlay's less 50 on every
// host.
func (s *clusterSuite) transferAndMTU(t testing.TB) {
	s.needApp(t)
	for i := 1; i <= 3; i++ {
		c := ctr{s.H(i), fmt.Sprintf("a%d", i)}
		if out, err := c.exec("cat", "/sys/class/net/eth0/mtu"); err != nil || out != strconv.Itoa(clusterMTU) {
			t.Errorf("%s: MTU %q (%v), want %d", c, out, err, clusterMTU)
		}
	}
	for _, pair := range [][2]int{{1, 2}, {2, 3}, {3, 1}} {
		src, dst := ctr{s.H(pair[0]), fmt.Sprintf("a%d", pair[0])}, ctr{s.H(pair[1]), fmt.Sprintf("a%d", pair[1])}
		sum, err := src.exec("sh", "-c", "head -c 4194304 /dev/urandom > /tmp/www/blob && busybox md5sum < /tmp/www/blob")
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		got, err := dst.exec("sh", "-c", "rm -f /tmp/blob; timeout 60 wget -q -O /tmp/blob http://"+s.appIPs[src.name]+":8080/blob; "+
			"busybox md5sum < /tmp/blob; wc -c < /tmp/blob")
		f := strings.Fields(got)
		if err != nil || len(f) < 3 || f[0] != strings.Fields(sum)[0] || f[len(f)-1] != "4194304" {
			t.Errorf("4 MiB %s -> %s: got %q (%v), want md5 %s and 4194304 bytes", src, dst, got, err, sum)
			continue
		}
		t.Logf("4 MiB %s -> %s whole in %s", src, dst, time.Since(start).Round(time.Millisecond))
	}
}

// iccOff: enable_icc=false holds between hosts; each container still
// reaches its gateway.
func (s *clusterSuite) iccOff(t testing.TB) {
	s.clusterNet(t, t, "quiet", "198.18.212.0/24", []int{1, 2}, "com.docker.network.bridge.enable_icc=false")
	q1, q2 := ctr{s.H(1), "q1"}, ctr{s.H(2), "q2"}
	startAll(t, t, []ctr{q1, q2}, "--network", "quiet")
	ip1, ip2 := q1.ip(t, "quiet"), q2.ip(t, "quiet")
	gw := gateway(t, s.H(1), "quiet")
	reaches(t, q1, gw, 5*time.Second)
	reaches(t, q2, gw, 5*time.Second)
	// The hosts know both endpoints: what follows is the rules' doing,
	// not an endpoint the overlay does not know yet.
	if _, err := poll(10*time.Second, func() error {
		keys := s.EtcdKeys(t, EtcdPrefix+"networks/quiet/endpoints/")
		if len(keys) != 2 {
			return fmt.Errorf("endpoints %v", keys)
		}
		return nil
	}); err != nil {
		t.Errorf("quiet's endpoints in etcd: %v", err)
	}
	time.Sleep(time.Second)
	q1.h.Serve(t, q1.name, 8080)
	q2.h.Serve(t, q2.name, 8080)
	cannotReach(t, probe{q1, ip2}, probe{q2, ip1})
}

// isolation: two cluster networks on the same two hosts: neither reaches
// the other across hosts, both ways, while each works within itself.
func (s *clusterSuite) isolation(t testing.TB) {
	s.needApp(t)
	s.clusterNet(t, t, "other", "198.18.213.0/24", []int{1, 2})
	o1, o2 := ctr{s.H(1), "o1"}, ctr{s.H(2), "o2"}
	startAll(t, t, []ctr{o1, o2}, "--network", "other")
	ip1, ip2 := o1.ip(t, "other"), o2.ip(t, "other")
	reaches(t, o1, ip2, 10*time.Second)
	reaches(t, o2, ip1, 10*time.Second)
	o1.h.Serve(t, o1.name, 8080)
	o2.h.Serve(t, o2.name, 8080)
	a1, a2 := ctr{s.H(1), "a1"}, ctr{s.H(2), "a2"}
	cannotReach(t, probe{a1, ip2}, probe{o2, s.appIPs["a1"]}, probe{o1, s.appIPs["a2"]}, probe{a2, ip1})
}

// antiSpoofing: a container on host 1 that takes the address of a peer on
// host 2 gets nothing through with it, and poisons no neighbour entry, on
// either host.
func (s *clusterSuite) antiSpoofing(t testing.TB) {
	tool := s.vxTool(t)
	s.clusterNet(t, t, "guard", "198.18.214.0/24", []int{1, 2}, "ournet.anti_spoofing=true")
	victim, bystander1, bystander2 := ctr{s.H(2), "g-victim"}, ctr{s.H(1), "g-by1"}, ctr{s.H(2), "g-by2"}
	attacker := ctr{s.H(1), "g-attacker"}
	startAll(t, t, []ctr{victim, bystander1, bystander2}, "--network", "guard")
	startAll(t, t, []ctr{attacker}, "--network", "guard", "--cap-add", "NET_ADMIN")
	attacker.h.Run(t, "cp", tool, attacker.name+":/bin/vxlan")
	bystander2.h.Run(t, "cp", tool, bystander2.name+":/bin/vxlan")
	vIP, vMAC := victim.ip(t, "guard"), victim.mac(t)
	aIP, b2IP := attacker.ip(t, "guard"), bystander2.ip(t, "guard")

	// Everyone learns the victim's true entry (and the attacker its
	// target's), then the kernel's locktime (1 s) passes.
	reaches(t, bystander1, vIP, 10*time.Second)
	reaches(t, bystander2, vIP, 10*time.Second)
	reaches(t, attacker, b2IP, 10*time.Second)
	// Host 2, the victim's, holds an entry from talking to it; host 1
	// cannot talk to it (the gateway address is the same on both hosts, so
	// the answer would stay on host 2) and holds one only if ournet put it
	// there for the tunnel.
	if out, err := s.H(2).ShFor(10*time.Second, "busybox", "ping", "-c", "1", "-W", "2", vIP); err != nil {
		t.Fatalf("host 2 cannot reach the victim: %v %s", err, out)
	}
	host1Entry, _ := s.H(1).Sh("ip", "neigh", "show", vIP)
	entries := func() map[string]string {
		m := map[string]string{}
		for _, c := range []ctr{bystander1, bystander2} {
			out, _ := c.exec("ip", "neigh", "show", vIP)
			m[c.String()] = lladdr(out)
		}
		for _, h := range []*CHost{s.H(1), s.H(2)} {
			if h.I == 1 && lladdr(host1Entry) == "" {
				continue
			}
			out, _ := h.Sh("ip", "neigh", "show", vIP)
			m[fmt.Sprintf("host %d", h.I)] = lladdr(out)
		}
		return m
	}
	for who, mac := range entries() {
		if mac != vMAC {
			t.Fatalf("before the attack, %s's entry for %s is %q, want %s", who, vIP, mac, vMAC)
		}
	}
	time.Sleep(1500 * time.Millisecond)

	// Sending with the remote peer's address.
	got := listen(t, bystander2)
	if out, err := attacker.exec("/bin/vxlan", "udp", "-from", aIP, b2IP+":9999", "own-address"); err != nil {
		t.Fatal(out, err)
	}
	arrives(t, "the attacker's datagram from its own address", got, aIP+" own-address")
	if out, err := attacker.exec("ip", "addr", "add", vIP+"/32", "dev", "eth0"); err != nil {
		t.Fatal(out, err)
	}
	for i := 0; i < 3; i++ {
		_, _ = attacker.exec("/bin/vxlan", "udp", "-from", vIP, b2IP+":9999", "spoofed-address")
	}
	time.Sleep(time.Second)
	if strings.Contains(got(), "spoofed-address") {
		t.Errorf("a datagram from the victim's address %s, sent on host 1, reached %s: %q", vIP, bystander2, got())
	}

	// Unsolicited ARP claiming the victim's address.
	if out, err := attacker.exec("arping", "-U", "-c", "2", "-w", "3", "-I", "eth0", "-s", vIP, vIP); err != nil {
		t.Fatalf("sending the unsolicited ARP: %v %s", err, out)
	}
	time.Sleep(500 * time.Millisecond)
	for who, mac := range entries() {
		if mac != vMAC {
			t.Errorf("after the attacker's broadcast ARP, %s's entry for %s is %q, want the victim's %s", who, vIP, mac, vMAC)
		}
	}

	// Unicast ARP replies "the victim is at the attacker's MAC", straight
	// to a peer on the other host, to that host's gateway, and to a peer
	// on the attacker's own host: the frames a tunnel would carry.
	gw := gateway(t, s.H(2), "guard")
	reaches(t, bystander2, gw, 5*time.Second)
	out, _ := bystander2.exec("ip", "neigh", "show", gw)
	gwMAC := lladdr(out)
	if gwMAC == "" {
		t.Fatalf("%s has no entry for its gateway %s: %q", bystander2, gw, out)
	}
	time.Sleep(1500 * time.Millisecond)
	aMAC := attacker.mac(t)
	for _, target := range [][2]string{{bystander2.mac(t), b2IP}, {gwMAC, gw}, {bystander1.mac(t), bystander1.ip(t, "guard")}} {
		for i := 0; i < 2; i++ {
			if out, err := attacker.exec("/bin/vxlan", "arp", "-i", "eth0", "-smac", aMAC, "-src", vIP, "-dmac", target[0], "-dst", target[1]); err != nil {
				t.Fatalf("sending the unicast ARP reply: %v %s", err, out)
			}
		}
	}
	time.Sleep(500 * time.Millisecond)
	for who, mac := range entries() {
		if mac != vMAC {
			t.Errorf("after the attacker's unicast ARP replies, %s's entry for %s is %q, want the victim's %s", who, vIP, mac, vMAC)
		}
	}
}

// noVXLANFromContainers: a container cannot get a VXLAN packet into
// another host (or its own) by sending UDP to port 4789, nor can a machine
// that is not a cluster host; the same packet sent by a cluster host does
// arrive, so the packet itself is right.
func (s *clusterSuite) noVXLANFromContainers(t testing.TB) {
	s.needApp(t)
	tool := s.vxTool(t)
	vni := s.vni(t, appNet)
	a1 := ctr{s.H(1), "a1"}
	vx1, vx2 := ctr{s.H(1), "vx1"}, ctr{s.H(2), "vx2"}
	startAll(t, t, []ctr{vx1, vx2}, "--network", appNet)
	for _, c := range []ctr{a1, vx1, vx2} {
		c.h.Run(t, "cp", tool, c.name+":/bin/vxlan")
	}
	got1, got2 := listen(t, vx1), listen(t, vx2)
	aMAC := a1.mac(t)
	mac := map[ctr]string{vx1: vx1.mac(t), vx2: vx2.mac(t)}
	ip := map[ctr]string{vx1: vx1.ip(t, appNet), vx2: vx2.ip(t, appNet)}
	// frame is the send arguments of a VXLAN packet (to a host's port
	// 4789) whose inner frame is a1's UDP datagram to c's listener.
	frame := func(to string, c ctr, msg string) []string {
		return []string{"send", "-to", to + ":4789", "-vni", strconv.Itoa(vni), "-smac", aMAC, "-src", s.appIPs["a1"],
			"-dmac", mac[c], "-dst", ip[c], "-dport", "9999", msg}
	}
	// The overlay and the listeners work.
	if out, err := a1.exec("/bin/vxlan", "udp", ip[vx2]+":9999", "legit-remote"); err != nil {
		t.Fatal(out, err)
	}
	if out, err := a1.exec("/bin/vxlan", "udp", ip[vx1]+":9999", "legit-local"); err != nil {
		t.Fatal(out, err)
	}
	arrives(t, "a1's datagram to vx2 through the overlay", got2, "legit-remote")
	arrives(t, "a1's datagram to vx1", got1, "legit-local")
	// The crafted packets are accepted from a cluster host.
	if out, err := s.H(1).ShFor(10*time.Second, append([]string{tool}, frame(s.H(2).Addr, vx2, "from-host1")...)...); err != nil {
		t.Fatal(out, err)
	}
	if out, err := s.H(2).ShFor(10*time.Second, append([]string{tool}, frame(s.H(1).Addr, vx1, "from-host2")...)...); err != nil {
		t.Fatal(out, err)
	}
	arrives(t, "host 1's crafted VXLAN packet to host 2 (the control)", got2, "from-host1")
	arrives(t, "host 2's crafted VXLAN packet to host 1 (the control)", got1, "from-host2")
	// The same from a container, to the other host and to its own.
	for i := 0; i < 3; i++ {
		_, _ = a1.exec(append([]string{"/bin/vxlan"}, frame(s.H(2).Addr, vx2, "from-container-to-host2")...)...)
		_, _ = a1.exec(append([]string{"/bin/vxlan"}, frame(s.H(1).Addr, vx1, "from-container-to-host1")...)...)
	}
	// And from a machine that is not a cluster host: host 2's uplink.
	u := NewUplink(t, s.H(2).Engine)
	if out, err := u.Exec("ip", "route", "add", "203.0.113.0/24", "via", UplinkHostIP); err != nil {
		t.Fatal(out, err)
	}
	for i := 0; i < 3; i++ {
		if out, err := u.Exec(append([]string{tool}, frame(s.H(2).Addr, vx2, "from-outsider")...)...); err != nil {
			t.Fatal(out, err)
		}
	}
	time.Sleep(1500 * time.Millisecond)
	if g := got2(); strings.Contains(g, "from-container") || strings.Contains(g, "from-outsider") {
		t.Errorf("VXLAN from a container or an outsider reached vx2 on host 2: %q", g)
	}
	if g := got1(); strings.Contains(g, "from-container") {
		t.Errorf("VXLAN from a container reached vx1 on its own host: %q", g)
	}
}

// outboundAndPorts: on host 2, a container goes out masqueraded to host
// 2's own address, and -p 8080:80 there is reachable from outside.
func (s *clusterSuite) outboundAndPorts(t testing.TB) {
	s.needApp(t)
	h := s.H(2)
	u := NewUplink(t, h.Engine)
	u.WhoAmI(t)
	out2, web2 := ctr{h, "out2"}, ctr{h, "web2"}
	startAll(t, t, []ctr{out2}, "--network", appNet)
	startAll(t, t, []ctr{web2}, "--network", appNet, "-p", "8080:80")
	if got, err := h.SeenAs(out2.name, UplinkPeerIP); err != nil || got != UplinkHostIP {
		t.Errorf("outbound from host 2: the uplink saw %q (%v), want host 2's %s", got, err, UplinkHostIP)
	}
	h.Serve(t, web2.name, 80)
	if _, err := poll(10*time.Second, func() error {
		out, err := u.Exec("curl", "-sf", "-m", "3", "http://"+UplinkHostIP+":8080/")
		if err != nil || strings.TrimSpace(out) != "hello from web2" {
			return fmt.Errorf("%q %v", out, err)
		}
		return nil
	}); err != nil {
		t.Errorf("-p 8080:80 on host 2 from the uplink: %v", err)
	}
}

// mismatchRefused: joining a cluster network with another subnet or
// another option is refused with what differs, and so are a cluster
// network on the default IPAM and one without --subnet; none leaves a link
// or a key.
func (s *clusterSuite) mismatchRefused(t testing.TB) {
	s.clusterNet(t, t, "solo", "198.18.215.0/24", []int{1})
	h := s.H(2)
	for _, c := range []struct {
		what string
		args []string
		want []string
	}{
		{"another subnet", createArgs("solo", "198.18.216.0/24"), []string{"198.18.216.0/24", "198.18.215.0/24"}},
		{"another option", createArgs("solo", "198.18.215.0/24", "com.docker.network.bridge.enable_icc=false"), []string{"enable_icc"}},
		{"the default IPAM", []string{"network", "create", "-d", "ournet", "--subnet", "198.18.217.0/24", "-o", "ournet.cluster=noipam", "noipam"},
			[]string{"--ipam-driver ournet"}},
		{"no --subnet", []string{"network", "create", "-d", "ournet", "--ipam-driver", "ournet", "-o", "ournet.cluster=nosub", "nosub"},
			[]string{"--subnet"}},
	} {
		keys, links := s.EtcdKeys(t, EtcdPrefix), h.Links(t)
		name := c.args[len(c.args)-1]
		t.Cleanup(func() { _, _ = h.Docker(time.Minute, "network", "rm", name) })
		msg := h.Fails(t, c.args...)
		for _, w := range c.want {
			if !strings.Contains(msg, w) {
				t.Errorf("%s: the refusal does not mention %q: %s", c.what, w, msg)
			}
		}
		t.Logf("%s: %s", c.what, msg)
		if after := s.EtcdKeys(t, EtcdPrefix); !slices.Equal(after, keys) {
			t.Errorf("%s: etcd keys changed:\nbefore %v\nafter  %v", c.what, keys, after)
		}
		if after := h.Links(t); !slices.Equal(after, links) {
			t.Errorf("%s: links on host 2 changed:\nbefore %v\nafter  %v", c.what, links, after)
		}
		if out := h.Run(t, "network", "ls", "--format", "{{.Name}}"); slices.Contains(strings.Fields(out), name) {
			t.Errorf("%s: network %s exists on host 2 after the refusal", c.what, name)
		}
	}
}

// oneMemberDown: with one etcd member of three stopped (the first
// endpoint's), containers come and go on every host and talk across hosts.
func (s *clusterSuite) oneMemberDown(t testing.TB) {
	s.needApp(t)
	s.StopEtcd(1)
	defer func() {
		if err := s.StartEtcd(1); err != nil {
			t.Error(err)
		}
		if err := s.WaitEtcd(30 * time.Second); err != nil {
			t.Error(err)
		}
	}()
	if _, err := poll(10*time.Second, func() error { return s.EtcdHealthy(2) }); err != nil {
		t.Fatalf("the two members left have no leader: %v", err)
	}
	var cs []ctr
	for _, h := range s.Hosts {
		cs = append(cs, ctr{h, fmt.Sprintf("m%d", h.I)})
	}
	start := time.Now()
	startAll(t, t, cs, "--network", appNet)
	t.Logf("3 runs (one per host) with etcd h1 down: %s", time.Since(start).Round(time.Millisecond))
	for _, c := range cs {
		from := ctr{s.H(c.h.I%3 + 1), fmt.Sprintf("a%d", c.h.I%3+1)}
		reaches(t, from, c.ip(t, appNet), 10*time.Second)
	}
	reaches(t, ctr{s.H(1), "a1"}, s.appIPs["a2"], 5*time.Second)
	start = time.Now()
	if err := each(cs, func(c ctr) error { _, err := c.h.Docker(time.Minute, "rm", "-f", c.name); return err }); err != nil {
		t.Error(err)
	}
	t.Logf("3 rm -f with etcd h1 down: %s", time.Since(start).Round(time.Millisecond))
	if _, err := poll(15*time.Second, func() error { return s.endpointsMatch(appNet) }); err != nil {
		t.Error(err)
	}
}

// quorumLost: two members of three stopped: established traffic flows;
// new containers are refused within seconds naming the store; rm -f works;
// with quorum back, everything works again without restarting anything.
func (s *clusterSuite) quorumLost(t testing.TB) {
	s.needApp(t)
	r2, r3 := ctr{s.H(2), "r2"}, ctr{s.H(3), "r3"}
	startAll(t, t, []ctr{r2, r3}, "--network", appNet)
	a1, a2, a3 := ctr{s.H(1), "a1"}, ctr{s.H(2), "a2"}, ctr{s.H(3), "a3"}
	count := crossStream(t, a1, a2, s.appIPs["a2"], 9000, 900)
	// A network no host has a container on yet: its first container on
	// each host needs an address block from the store.
	const fresh = "fresh"
	s.clusterNet(t, t, fresh, "198.18.218.0/24", []int{1, 2, 3})

	_ = each([]int{2, 3}, func(i int) error { s.StopEtcd(i); return nil })
	restarted := false
	restart := func() {
		if restarted {
			return
		}
		restarted = true
		for _, i := range []int{2, 3} {
			if err := s.StartEtcd(i); err != nil {
				t.Error(err)
			}
		}
		if err := s.WaitEtcd(30 * time.Second); err != nil {
			t.Error(err)
		}
	}
	defer restart()
	lost := time.Now()
	if _, err := poll(10*time.Second, func() error {
		if s.EtcdHealthy(1) == nil {
			return fmt.Errorf("member h1 still has a leader")
		}
		return nil
	}); err != nil {
		t.Fatalf("quorum not lost: %v", err)
	}
	flows := func(when string) {
		t.Helper()
		before := count()
		time.Sleep(1500 * time.Millisecond)
		if after := count(); after <= before {
			t.Errorf("%s: the established stream a1 -> a2 stalled (%d then %d lines)", when, before, after)
		}
		if err := a1.ping(s.appIPs["a3"]); err != nil {
			t.Errorf("%s: %v", when, err)
		}
	}
	flows("quorum lost")

	// New containers, six on every host at once, half of them on app and
	// half on fresh (whose addresses need a block from the store): each
	// refused, fast (they queue in the plugin: the last must still beat
	// dockerd's 30 s), naming the store.
	var mu sync.Mutex
	took := map[int]time.Duration{}
	var runs []ctr
	for _, h := range s.Hosts {
		for k := 0; k < 6; k++ {
			runs = append(runs, ctr{h, fmt.Sprintf("z%d-%d", h.I, k)})
		}
	}
	_ = each(runs, func(c ctr) error {
		h, name := c.h, c.name
		t.Cleanup(func() { _, _ = h.Docker(time.Minute, "rm", "-f", name) })
		on := appNet
		if strings.HasSuffix(name, "-1") || strings.HasSuffix(name, "-3") || strings.HasSuffix(name, "-5") {
			on = fresh
		}
		start := time.Now()
		out, err := h.Docker(time.Minute, "run", "-d", "--name", name, "--network", on, Image, "sleep", "3600")
		d := time.Since(start)
		mu.Lock()
		took[h.I] = max(took[h.I], d)
		mu.Unlock()
		switch {
		case err == nil:
			t.Errorf("host %d: docker run succeeded without quorum (%s)", h.I, out)
		case d >= 25*time.Second:
			t.Errorf("host %d: docker run refused only after %s (dockerd gives up at 30 s): %v", h.I, d, err)
		case !strings.Contains(strings.ToLower(err.Error()), "cluster store") && !strings.Contains(strings.ToLower(err.Error()), "etcd"):
			t.Errorf("host %d: the refusal does not name the cluster store: %v", h.I, err)
		case strings.HasSuffix(name, "-0") || strings.HasSuffix(name, "-1"):
			t.Logf("host %d: docker run on %s refused in %s: %v", h.I, on, d.Round(time.Millisecond), err)
		}
		return nil
	})
	t.Logf("quorum lost: 18 parallel docker runs refused, the slowest on h1 in %s, h2 %s, h3 %s", took[1].Round(time.Millisecond), took[2].Round(time.Millisecond), took[3].Round(time.Millisecond))

	// Removing containers works.
	_ = each([]ctr{r2, r3}, func(c ctr) error {
		start := time.Now()
		_, err := c.h.Docker(time.Minute, "rm", "-f", c.name)
		if err != nil {
			t.Errorf("docker rm -f %s without quorum: %v", c, err)
		} else {
			t.Logf("docker rm -f %s without quorum: %s", c, time.Since(start).Round(time.Millisecond))
		}
		return nil
	})
	flows("after the refused runs")
	t.Logf("quorum lost for %s", time.Since(lost).Round(time.Millisecond))

	// Quorum back: nothing is restarted but etcd.
	restart()
	// Every host takes new containers again (a host that saw the store
	// fail keeps asking it, and stops refusing at its first answer).
	var backs []ctr
	for _, h := range s.Hosts {
		backs = append(backs, ctr{h, fmt.Sprintf("back%d", h.I)})
	}
	ran := make([]time.Duration, len(backs))
	_ = each(backs, func(b ctr) error {
		t.Cleanup(func() { _, _ = b.h.Docker(time.Minute, "rm", "-f", b.name) })
		took, err := poll(30*time.Second, func() error {
			_, err := b.h.Docker(time.Minute, "run", "-d", "--name", b.name, "--network", appNet, Image, "sleep", "3600")
			if err != nil {
				_, _ = b.h.Docker(time.Minute, "rm", "-f", b.name)
			}
			return err
		})
		if err != nil {
			t.Errorf("with quorum back, docker run on host %d: %v", b.h.I, err)
		}
		ran[b.h.I-1] = took
		// and on fresh, whose first container here takes a block
		name := b.name + "-" + fresh
		t.Cleanup(func() { _, _ = b.h.Docker(time.Minute, "rm", "-f", name) })
		if _, err := b.h.Docker(time.Minute, "run", "-d", "--name", name, "--network", fresh, Image, "sleep", "3600"); err != nil {
			t.Errorf("with quorum back, docker run on host %d on %s: %v", b.h.I, fresh, err)
		}
		return nil
	})
	if t.Failed() {
		t.FailNow()
	}
	reach := reaches(t, a1, backs[2].ip(t, appNet), 15*time.Second)
	t.Logf("quorum back: docker run ok on host 1 after %s, host 2 %s, host 3 %s; host 3's reachable from host 1 %s later",
		ran[0].Round(time.Millisecond), ran[1].Round(time.Millisecond), ran[2].Round(time.Millisecond), reach.Round(time.Millisecond))
	reaches(t, a3, s.appIPs["a1"], 10*time.Second)
	if _, err := poll(30*time.Second, func() error { return s.endpointsMatch(appNet) }); err != nil {
		t.Error(err)
	}
}

// hostCutOff: host 3 off the underlay for 20 s: hosts 1 and 2 go on with
// old and new containers; once back, host 3's containers are reachable
// again within seconds, and no address is held twice.
func (s *clusterSuite) hostCutOff(t testing.TB) {
	s.needApp(t)
	a1, a2, a3 := ctr{s.H(1), "a1"}, ctr{s.H(2), "a2"}, ctr{s.H(3), "a3"}
	reaches(t, a1, s.appIPs["a3"], 10*time.Second)
	dev1 := s.dev(t, 1, appNet) // read while etcd has all its members
	cut := time.Now()
	if err := s.Cut(3); err != nil {
		t.Fatal(err)
	}
	healed := false
	heal := func() {
		if !healed {
			healed = true
			if err := s.Heal(3); err != nil {
				t.Error(err)
			}
		}
	}
	defer heal()

	// Host 3 meanwhile: what it does with a new container is logged only.
	n3 := ctr{s.H(3), "n3"}
	t.Cleanup(func() { _, _ = n3.h.Docker(time.Minute, "rm", "-f", n3.name) })
	n3done := make(chan string, 1)
	go func() {
		start := time.Now()
		_, err := n3.h.Docker(17*time.Second, "run", "-d", "--name", n3.name, "--network", appNet, Image, "sleep", "3600")
		n3done <- fmt.Sprintf("%s (%v)", time.Since(start).Round(time.Millisecond), err)
	}()

	if err := a1.ping(s.appIPs["a2"]); err != nil {
		t.Errorf("during the cut: %v", err)
	}
	n1, n2 := ctr{s.H(1), "n1"}, ctr{s.H(2), "n2"}
	start := time.Now()
	startAll(t, t, []ctr{n1, n2}, "--network", appNet)
	t.Logf("during the cut: runs on hosts 1 and 2 took %s", time.Since(start).Round(time.Millisecond))
	ip1, ip2 := n1.ip(t, appNet), n2.ip(t, appNet)
	reaches(t, n1, ip2, 10*time.Second)
	reaches(t, n2, ip1, 10*time.Second)
	reaches(t, a2, ip1, 10*time.Second)
	t.Logf("during the cut: host 3's docker run: %s", <-n3done)
	// A host that stops renewing its lease leaves etcd and the others'
	// kernels within the lease (10 s) and a few seconds more.
	if _, err := poll(17*time.Second-time.Since(cut), func() error {
		kv, err := s.EtcdGet(EtcdPrefix + "networks/app/endpoints/" + s.appIPs["a3"])
		if err != nil || len(kv) > 0 {
			return fmt.Errorf("a3's endpoint is still in etcd (%v)", err)
		}
		if neigh, _ := s.H(1).Sh("ip", "neigh", "show", s.appIPs["a3"], "dev", dev1); strings.TrimSpace(neigh) != "" {
			return fmt.Errorf("host 1 still has a neighbour entry for a3: %s", neigh)
		}
		return nil
	}); err != nil {
		t.Errorf("the cut-off host's endpoints did not leave: %v", err)
	} else {
		t.Logf("during the cut: host 3's endpoints left etcd and host 1's kernel %s after the cut", time.Since(cut).Round(time.Millisecond))
	}
	if rest := 20*time.Second - time.Since(cut); rest > 0 {
		time.Sleep(rest)
	}
	kv, err := s.EtcdGet(EtcdPrefix + "networks/app/endpoints/" + s.appIPs["a3"])
	neigh, _ := s.H(1).Sh("ip", "neigh", "show", s.appIPs["a3"])
	t.Logf("end of the cut: a3's endpoint in etcd: %v (%v); host 1's neighbour entries for it: %q", len(kv) == 1, err, neigh)
	heal()
	back := time.Now()
	t.Logf("host 3 cut off for %s", back.Sub(cut).Round(time.Millisecond))

	took, err := poll(30*time.Second, func() error { return a1.ping(s.appIPs["a3"]) })
	if err != nil {
		t.Errorf("after the heal, a1 cannot reach a3: %v", err)
	} else {
		t.Logf("after the heal: a3 reachable from host 1 in %s", took.Round(time.Millisecond))
	}
	if _, err := poll(30*time.Second, func() error { return a3.ping(ip1) }); err != nil {
		t.Errorf("after the heal, a3 cannot reach n1 (made during the cut): %v", err)
	} else {
		t.Logf("after the heal: n1 (made during the cut) reachable from host 3 %s after the heal", time.Since(back).Round(time.Millisecond))
	}
	if ip3, err := n3.h.Docker(30*time.Second, "inspect", "-f", "{{(index .NetworkSettings.Networks \"app\").IPAddress}}", n3.name); err == nil && ip3 != "" {
		reaches(t, a1, ip3, 30*time.Second)
	}
	all, err := s.allAddrs(appNet)
	if err != nil {
		t.Error(err)
	}
	t.Logf("after the heal: %d containers on %s, no address twice: %v", len(all), appNet, err == nil)
	if _, err := poll(30*time.Second, func() error { return s.endpointsMatch(appNet) }); err != nil {
		t.Error(err)
	}
}

// nothingLeft: every container and network removed on every host: no
// VXLAN device or link of ournet's, no rule of the networks, and no etcd
// key of any network.
func (s *clusterSuite) nothingLeft(t testing.TB) {
	ids := map[int][]string{}
	var mu sync.Mutex
	if err := each(s.Hosts, func(h *CHost) error {
		if out, _ := h.Docker(time.Minute, "ps", "-aq"); out != "" {
			if _, err := h.Docker(2*time.Minute, append([]string{"rm", "-f"}, strings.Fields(out)...)...); err != nil {
				return err
			}
		}
		out, err := h.Docker(time.Minute, "network", "ls", "-q", "--no-trunc", "--filter", "driver=ournet")
		if err != nil {
			return err
		}
		mu.Lock()
		ids[h.I] = strings.Fields(out)
		mu.Unlock()
		if len(ids[h.I]) > 0 {
			if _, err := h.Docker(2*time.Minute, append([]string{"network", "rm"}, strings.Fields(out)...)...); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, h := range s.Hosts {
		out, err := h.Sh("ip", "-o", "-d", "link")
		if err != nil {
			t.Fatal(out, err)
		}
		for _, line := range strings.Split(out, "\n") {
			if strings.Contains(line, " vxlan ") || strings.Contains(line, "alias ournet:") {
				t.Errorf("host %d keeps a link: %s", h.I, line)
			}
		}
		assertNetworksGone(t, h.Engine, ids[h.I])
		for _, tool := range []string{"iptables-save", "ip6tables-save"} {
			if dump, _ := h.Sh("nft", "list", "table", "inet", "ournet"); strings.Contains(dump, `"ournet:`) {
				t.Errorf("host %d: table inet ournet keeps a network's elements:\n%s", h.I, dump)
			}
			// The VXLAN guard goes with the last cluster network.
			if _, err := poll(10*time.Second, func() error {
				if d, _ := h.Sh(tool); strings.Contains(d, "OURNET-VXLAN") {
					return fmt.Errorf("%s keeps the VXLAN guard", tool)
				}
				return nil
			}); err != nil {
				t.Errorf("host %d: %v", h.I, err)
			}
		}
	}
	for _, p := range []string{"networks/", "vni/"} {
		if _, err := poll(10*time.Second, func() error {
			if keys := s.EtcdKeys(t, EtcdPrefix+p); len(keys) > 0 {
				return fmt.Errorf("%v", keys)
			}
			return nil
		}); err != nil {
			t.Errorf("etcd keeps keys under %s%s: %v", EtcdPrefix, p, err)
		}
	}
}

// pluginKill: kill -9 of host 2's plugin. A cross-host stream to host 2
// keeps flowing, the engine restarts the plugin, and host 2's endpoints
// stay in etcd and in the other hosts' kernels throughout (the restarted
// plugin registers under a new lease and writes its endpoints again
// before the old lease expires); afterwards etcd matches the hosts.
func (s *clusterSuite) pluginKill(t testing.TB) {
	s.needApp(t)
	a1, a2 := ctr{s.H(1), "a1"}, ctr{s.H(2), "a2"}
	count := crossStream(t, a1, a2, s.appIPs["a2"], 9100, 600)
	pid, err := s.H(2).PluginPID()
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	if _, err := poll(30*time.Second, func() error {
		p, err := s.H(2).PluginPID()
		if err == nil && p == pid {
			return fmt.Errorf("still the old pid")
		}
		return err
	}); err != nil {
		t.Fatalf("the engine does not restart the plugin: %v", err)
	}
	t.Logf("plugin on host 2 back after %s", time.Since(killed).Round(time.Millisecond))
	// Until 13 s after the kill (past the old lease's 10 s): the stream
	// never stalls for a second, and a2 stays reachable from host 1.
	last, stalls := count(), 0
	for end := killed.Add(13 * time.Second); time.Now().Before(end); {
		time.Sleep(time.Second)
		n := count()
		if n <= last {
			stalls++
		}
		last = n
		if err := a1.ping(s.appIPs["a2"]); err != nil {
			t.Errorf("%s after the kill: %v", time.Since(killed).Round(time.Second), err)
		}
	}
	if stalls > 0 {
		t.Errorf("the stream a1 -> a2 stalled in %d seconds of the 13 after the kill", stalls)
	}
	if _, err := poll(10*time.Second, func() error { return s.endpointsMatch(appNet) }); err != nil {
		t.Errorf("etcd does not match the hosts after the kill: %v", err)
	}
	// And the restarted plugin serves new containers that others reach.
	k2 := ctr{s.H(2), "k2"}
	startAll(t, t, []ctr{k2}, "--network", appNet)
	reaches(t, a1, k2.ip(t, appNet), 10*time.Second)
}

// dev is host i's VXLAN device of cluster network name.
func (s *clusterSuite) dev(t testing.TB, i int, name string) string {
	return "ovx" + strconv.Itoa(s.vni(t, name))
}

// hostID is host i's ID in the cluster store (its hosts/ key names it).
func (s *clusterSuite) hostID(t testing.TB, i int) string {
	t.Helper()
	kv, err := s.EtcdGet(EtcdPrefix + "hosts/")
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range kv {
		var h struct{ Advertise string }
		if json.Unmarshal([]byte(v), &h) == nil && h.Advertise == s.H(i).Addr {
			return path.Base(k)
		}
	}
	t.Fatalf("host %d is not registered: %v", i, kv)
	return ""
}

// retireHost: a host that is gone keeps its addresses until an operator
// retires it. Host 3's plugin stops (its lease expires); on host 1
// scripts/ournet-retire-host lists it as gone, refuses to retire a live
// host, then retires host 3: its blocks and membership leave etcd. When
// host 3 comes back, its part of the network refuses new containers,
// saying to create it again, and can be removed.
func (s *clusterSuite) retireHost(t testing.TB) {
	s.needApp(t)
	id2, id3 := s.hostID(t, 2), s.hostID(t, 3)
	h1, h3 := s.H(1), s.H(3)
	retire := func(args ...string) (string, error) {
		cmd := exec.Command(filepath.Join(repoRoot(), "scripts", "ournet-retire-host"), args...)
		cmd.Env = append(os.Environ(), "DOCKER_HOST="+h1.Host, "OURNET_SOCKET="+filepath.Join(h1.Dir, "plugins", "ournet.sock"))
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	blocksOf := func(id string) []string {
		kv, err := s.EtcdGet(EtcdPrefix + "networks/" + appNet + "/blocks/")
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for k, v := range kv {
			if v == id {
				out = append(out, path.Base(k))
			}
		}
		return out
	}
	if len(blocksOf(id3)) == 0 {
		t.Fatal("host 3 holds no block of app before the test")
	}
	h3.Run(t, "plugin", "disable", "-f", PluginName)
	enabled := false
	defer func() {
		if !enabled {
			_, _ = h3.Docker(time.Minute, "plugin", "enable", PluginName)
		}
	}()
	if _, err := poll(20*time.Second, func() error {
		if kv, _ := s.EtcdGet(EtcdPrefix + "hosts/" + id3); len(kv) > 0 {
			return fmt.Errorf("host 3 is still registered")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// Gone, but its addresses are still its own.
	if len(blocksOf(id3)) == 0 {
		t.Fatal("host 3's blocks were freed when its lease expired")
	}
	out, err := retire()
	if err != nil || !strings.Contains(out, id3+"  gone") || !strings.Contains(out, id2+"  alive") {
		t.Fatalf("listing: %v\n%s", err, out)
	}
	if out, err := retire(id2); err == nil || !strings.Contains(out, "is alive") {
		t.Fatalf("retiring a live host: %v\n%s", err, out)
	}
	if out, err := retire(id3); err != nil || !strings.Contains(out, "retired host "+id3) {
		t.Fatalf("retiring host 3: %v\n%s", err, out)
	}
	if b := blocksOf(id3); len(b) > 0 {
		t.Fatalf("host 3 still holds blocks after it was retired: %v", b)
	}
	if kv, _ := s.EtcdGet(EtcdPrefix + "networks/" + appNet + "/members/" + id3); len(kv) > 0 {
		t.Fatal("host 3 is still a member after it was retired")
	}
	// Back: refused, by name, until the network is made again there.
	h3.Run(t, "plugin", "enable", PluginName)
	enabled = true
	name := "back3"
	t.Cleanup(func() { _, _ = h3.Docker(time.Minute, "rm", "-f", name) })
	out, err = h3.Docker(time.Minute, "run", "-d", "--name", name, "--network", appNet, Image, "sleep", "600")
	if err == nil || !strings.Contains(out+err.Error(), "not a member of cluster network "+appNet) {
		t.Fatalf("a run on the retired host: %v\n%s", err, out)
	}
	if ps, _ := h3.Docker(time.Minute, "ps", "-aq"); ps != "" {
		_, _ = h3.Docker(2*time.Minute, append([]string{"rm", "-f"}, strings.Fields(ps)...)...)
	}
	if _, err := h3.Docker(time.Minute, "network", "rm", appNet); err != nil {
		t.Fatalf("removing the retired host's network: %v", err)
	}
	s.appReady = false
}
