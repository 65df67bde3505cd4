//go:build cluster || bench

package e2e

// The cluster rig (issue #13): n Docker hosts on one machine. Each host is
// an Engine (StartEngine: a network and a mount namespace of its own, its
// own dockerd) with an etcd member in its namespace and the plugin
// installed in cluster mode; the hosts are joined by an underlay, a bridge
// in a namespace of its own, on 203.0.113.0/24 (TEST-NET-3) with MTU 1500.
//
//	underlay netns (UnderNS): br0 ── h1 ┄veth┄ under0 203.0.113.11/24  host 1 netns: dockerd, plugin, etcd h1
//	                             ├── h2 ┄veth┄ under0 203.0.113.12/24  host 2 netns: ...
//	                             └── h3 ┄veth┄ under0 203.0.113.13/24  host 3 netns: ...
//
// 203.0.113.0/24 exists only inside these namespaces: the real host has no
// route there, and everything that talks to it (etcd, the suite's etcd
// client, ping) runs, or opens its sockets, inside a host's namespace.
// Built only with -tags cluster.

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

const (
	// UnderIf is each host's underlay interface.
	UnderIf = "under0"
	// UnderMTU is the underlay's MTU; cluster networks get UnderMTU-50.
	UnderMTU = 1500
	// EtcdPrefix is where ournet keeps the cluster's state.
	EtcdPrefix = "/ournet/v1/"
)

// UnderAddr is host i's (1-based) underlay address.
func UnderAddr(i int) string { return fmt.Sprintf("203.0.113.%d", 10+i) }

// CHost is one host of the cluster: its Engine (h.Run, h.Docker, h.Sh,
// h.Exec... act on it), its underlay address and its etcd member.
type CHost struct {
	*Engine
	I    int    // 1-based
	Addr string // underlay address, on UnderIf
	Port string // the other end of its underlay veth, in the underlay namespace

	etcdDir  string
	etcdLog  string
	etcd     *exec.Cmd
	etcdDone chan struct{}
}

// Cluster is the rig. One is started per test run and shared by every
// cluster case (startup is most of its cost).
type Cluster struct {
	Hosts     []*CHost
	UnderNS   string
	Dir       string        // etcd data and logs
	Endpoints string        // the ETCD_ENDPOINTS every plugin gets
	Startup   time.Duration // how long NewCluster took

	t       *testing.T
	token   string
	mu      sync.Mutex
	clients map[int]*clientv3.Client // by the host whose namespace they dial from
}

// NewCluster starts n hosts (engines in parallel), the underlay, an etcd
// member per host and the plugin in cluster mode on each: the last host
// gets no CLUSTER_ADVERTISE, so its plugin must find its address from its
// route to the first endpoint. Everything is removed when t ends.
func NewCluster(t *testing.T, n int) *Cluster {
	t.Helper()
	if _, err := exec.LookPath("etcd"); err != nil {
		t.Fatal("etcd not found: apt-get install etcd-server (make deps does)")
	}
	start := time.Now()
	dir, err := os.MkdirTemp("/tmp", "ournet-cluster-")
	if err != nil {
		t.Fatal(err)
	}
	suffix := filepath.Base(dir)[len(filepath.Base(dir))-6:]
	c := &Cluster{Dir: dir, UnderNS: "oc-" + suffix + "-u", t: t, token: "ournet-e2e-" + suffix, clients: map[int]*clientv3.Client{}}
	t.Cleanup(c.remove)
	var eps []string
	for i := 1; i <= n; i++ {
		eps = append(eps, "http://"+UnderAddr(i)+":2379")
	}
	c.Endpoints = strings.Join(eps, ",")

	// 1. The engines, in parallel: each makes its namespace and starts dockerd.
	c.Hosts = make([]*CHost, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range c.Hosts {
		edir, err := os.MkdirTemp("/tmp", "ournet-e2e-")
		if err != nil {
			t.Fatal(err)
		}
		h := &CHost{I: i + 1, Addr: UnderAddr(i + 1), Port: fmt.Sprintf("h%d", i+1), etcdDir: filepath.Join(dir, fmt.Sprintf("etcd-h%d", i+1))}
		h.etcdLog = h.etcdDir + ".log"
		c.Hosts[i] = h
		wg.Add(1)
		go func() {
			defer wg.Done()
			e, err := StartEngine(edir)
			c.mu.Lock()
			h.Engine = e // even on error: it is removed at cleanup
			c.mu.Unlock()
			errs[i] = err
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("host %d: %v", i+1, err)
		}
	}
	names := map[string]bool{c.UnderNS: true}
	for _, h := range c.Hosts {
		if names[h.NetNS] {
			t.Fatalf("two namespaces named %s", h.NetNS)
		}
		names[h.NetNS] = true
	}
	tEngines := time.Since(start)

	// 2. The underlay, before etcd: the members listen on it.
	if err := c.underlay(); err != nil {
		t.Fatal(err)
	}

	// 3. etcd, and meanwhile the test image on every engine.
	for _, h := range c.Hosts {
		if err := c.startEtcd(h); err != nil {
			t.Fatal(err)
		}
	}
	for i, h := range c.Hosts {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = h.ImportImage(Image) }()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("host %d: %v", i+1, err)
		}
	}
	if err := c.WaitEtcd(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	tEtcd := time.Since(start)

	// 4. The plugin, once etcd is up.
	for i, h := range c.Hosts {
		settings := "ETCD_ENDPOINTS=" + c.Endpoints
		if i < n-1 {
			settings += " CLUSTER_ADVERTISE=" + h.Addr
		}
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = h.InstallPluginWith(settings) }()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("host %d: %v\nits dockerd's log:\n%s", i+1, err, c.Hosts[i].LogTail(30))
		}
	}
	c.Startup = time.Since(start)
	t.Logf("cluster of %d hosts up in %s (engines %s, underlay+etcd+image %s, plugins %s); underlay netns %s, hosts %s",
		n, c.Startup.Round(time.Millisecond), tEngines.Round(time.Millisecond), (tEtcd - tEngines).Round(time.Millisecond),
		(c.Startup - tEtcd).Round(time.Millisecond), c.UnderNS, c.hostNames())
	return c
}

func (c *Cluster) hostNames() string {
	var s []string
	for _, h := range c.Hosts {
		s = append(s, fmt.Sprintf("%d=%s(%s)", h.I, h.NetNS, h.Addr))
	}
	return strings.Join(s, " ")
}

// H is host i (1-based).
func (c *Cluster) H(i int) *CHost { return c.Hosts[i-1] }

// underlay makes the underlay namespace, its bridge and a veth per host.
func (c *Cluster) underlay() error {
	steps := [][]string{
		{"ip", "netns", "add", c.UnderNS},
		{"ip", "-n", c.UnderNS, "link", "set", "lo", "up"},
		{"ip", "-n", c.UnderNS, "link", "add", "br0", "mtu", fmt.Sprint(UnderMTU), "type", "bridge"},
		{"ip", "-n", c.UnderNS, "link", "set", "br0", "up"},
	}
	for _, h := range c.Hosts {
		steps = append(steps,
			[]string{"ip", "-n", c.UnderNS, "link", "add", h.Port, "mtu", fmt.Sprint(UnderMTU), "type", "veth", "peer", "name", UnderIf, "netns", h.NetNS},
			[]string{"ip", "-n", c.UnderNS, "link", "set", h.Port, "master", "br0"},
			[]string{"ip", "-n", c.UnderNS, "link", "set", h.Port, "up"},
			[]string{"ip", "-n", h.NetNS, "link", "set", UnderIf, "mtu", fmt.Sprint(UnderMTU)},
			[]string{"ip", "-n", h.NetNS, "addr", "add", h.Addr + "/24", "dev", UnderIf},
			[]string{"ip", "-n", h.NetNS, "link", "set", UnderIf, "up"},
		)
	}
	for _, s := range steps {
		if out, err := exec.Command(s[0], s[1:]...).CombinedOutput(); err != nil {
			return fmt.Errorf("underlay: %s: %w: %s", strings.Join(s, " "), err, out)
		}
	}
	return nil
}

// etcdArgs is member h's command line (the initial-cluster flags are
// ignored by etcd once the data directory exists, so a restart uses the
// same).
func (c *Cluster) etcdArgs(h *CHost) []string {
	client, peer := "http://"+h.Addr+":2379", "http://"+h.Addr+":2380"
	return []string{"--net=/run/netns/" + h.NetNS, "etcd",
		"--name", fmt.Sprintf("h%d", h.I), "--data-dir", filepath.Join(h.etcdDir, "data"),
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
		"--initial-cluster", c.initialCluster(), "--initial-cluster-state", "new", "--initial-cluster-token", c.token,
		"--heartbeat-interval", "100", "--election-timeout", "1000",
		"--logger", "zap", "--log-level", "info"}
}

func (c *Cluster) initialCluster() string {
	var peers []string
	for _, h := range c.Hosts {
		peers = append(peers, fmt.Sprintf("h%d=http://%s:2380", h.I, h.Addr))
	}
	return strings.Join(peers, ",")
}

// startEtcd starts h's member in h's namespace (nsenter execs etcd: the
// process is etcd itself), logging to h.etcdLog.
func (c *Cluster) startEtcd(h *CHost) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if h.etcd != nil {
		return nil
	}
	if err := os.MkdirAll(h.etcdDir, 0o700); err != nil {
		return err
	}
	logf, err := os.OpenFile(h.etcdLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command("nsenter", c.etcdArgs(h)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), "ETCD_UNSUPPORTED_ARCH="+os.Getenv("ETCD_UNSUPPORTED_ARCH"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("starting etcd h%d: %w", h.I, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); logf.Close(); close(done) }()
	h.etcd, h.etcdDone = cmd, done
	return nil
}

// StartEtcd (re)starts host i's member, with its data.
func (c *Cluster) StartEtcd(i int) error { return c.startEtcd(c.H(i)) }

// StopEtcd stops host i's member (SIGTERM; SIGKILL after 15 s) and waits
// for it to exit.
func (c *Cluster) StopEtcd(i int) {
	h := c.H(i)
	c.mu.Lock()
	cmd, done := h.etcd, h.etcdDone
	h.etcd, h.etcdDone = nil, nil
	c.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

// EtcdRunning says whether host i's member is running (as the rig started it).
func (c *Cluster) EtcdRunning(i int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.H(i).etcd != nil
}

// nsDialer opens etcd's connections from inside netns ns: the socket is
// created by a goroutine locked to a thread that entered ns and never
// leaves it (the thread dies with the goroutine), so no other goroutine
// ever runs in ns, and nothing is sent from the real host's namespace.
func nsDialer(ns string) func(context.Context, string) (net.Conn, error) {
	return func(ctx context.Context, addr string) (net.Conn, error) {
		type result struct {
			c   net.Conn
			err error
		}
		ch := make(chan result, 1)
		go func() {
			runtime.LockOSThread() // never unlocked: see above
			h, err := netns.GetFromPath("/run/netns/" + ns)
			if err != nil {
				ch <- result{nil, err}
				return
			}
			defer h.Close()
			if err := netns.Set(h); err != nil {
				ch <- result{nil, fmt.Errorf("entering netns %s: %w", ns, err)}
				return
			}
			var d net.Dialer
			conn, err := d.DialContext(ctx, "tcp", addr)
			ch <- result{conn, err}
		}()
		r := <-ch
		return r.c, r.err
	}
}

// newEtcdClient is a client of endpoints that connects from host from's
// namespace.
func (c *Cluster) newEtcdClient(from int, endpoints []string) (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: 2 * time.Second,
		// As the plugin's client: a member cut off silently is noticed
		// within 3 s, and calls go to the others.
		DialKeepAliveTime:    2 * time.Second,
		DialKeepAliveTimeout: time.Second,
		Logger:               zap.NewNop(),
		DialOptions:          []grpc.DialOption{grpc.WithContextDialer(nsDialer(c.H(from).NetNS))},
	})
}

// Etcd is a client of the whole etcd cluster that connects from host
// from's namespace (kept for the rig's life; do not close it). etcdctl is
// not used: Debian ships it in etcd-client, which `make deps` does not
// install.
func (c *Cluster) Etcd(from int) (*clientv3.Client, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cli := c.clients[from]; cli != nil {
		return cli, nil
	}
	cli, err := c.newEtcdClient(from, strings.Split(c.Endpoints, ","))
	if err != nil {
		return nil, err
	}
	c.clients[from] = cli
	return cli, nil
}

// EtcdHealthy asks member i, from host i's namespace, for a linearizable
// read (which needs a leader), as `etcdctl endpoint health` does.
func (c *Cluster) EtcdHealthy(i int) error {
	cli, err := c.newEtcdClient(i, []string{"http://" + c.H(i).Addr + ":2379"})
	if err != nil {
		return err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(context.Background()), 2*time.Second)
	defer cancel()
	if _, err := cli.Get(ctx, "health"); err != nil {
		return fmt.Errorf("etcd member h%d (%s): %w", i, c.H(i).Addr, err)
	}
	return nil
}

// EtcdMembers counts the cluster's members, asked from host from's namespace.
func (c *Cluster) EtcdMembers(from int) (int, error) {
	cli, err := c.Etcd(from)
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ml, err := cli.MemberList(ctx)
	if err != nil {
		return 0, err
	}
	return len(ml.Members), nil
}

// WaitEtcd waits until every running member answers with a leader.
func (c *Cluster) WaitEtcd(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		var err error
		for _, h := range c.Hosts {
			if c.EtcdRunning(h.I) {
				if err = c.EtcdHealthy(h.I); err != nil {
					break
				}
			}
		}
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("etcd not healthy within %s: %w\nlast lines of h1's etcd log:\n%s", timeout, err, tail(c.Hosts[0].etcdLog, 20))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// EtcdGet returns the keys under prefix and their values, read from host
// 1's namespace (10 s bound).
func (c *Cluster) EtcdGet(prefix string) (map[string]string, error) {
	cli, err := c.Etcd(1)
	if err != nil {
		return nil, err
	}
	// Tries of 2 s within 10 s: a try on a member just cut off hangs
	// until keepalive gives up on it; the next goes to another member.
	var r *clientv3.GetResponse
	for start := time.Now(); ; {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		r, err = cli.Get(ctx, prefix, clientv3.WithPrefix())
		cancel()
		if err == nil {
			break
		}
		if time.Since(start) > 8*time.Second {
			return nil, fmt.Errorf("etcd get %s: %w", prefix, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	out := map[string]string{}
	for _, kv := range r.Kvs {
		out[string(kv.Key)] = string(kv.Value)
	}
	return out, nil
}

// EtcdKeys lists the keys under prefix, sorted; it fails the test if etcd
// cannot answer.
func (c *Cluster) EtcdKeys(t testing.TB, prefix string) []string {
	t.Helper()
	kv, err := c.EtcdGet(prefix)
	if err != nil {
		t.Fatal(err)
	}
	keys := make([]string, 0, len(kv))
	for k := range kv {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// Cut takes host i off the underlay (its end of the link goes down in the
// underlay namespace; the host's processes keep running); Heal undoes it.
func (c *Cluster) Cut(i int) error  { return c.link(i, "down") }
func (c *Cluster) Heal(i int) error { return c.link(i, "up") }

func (c *Cluster) link(i int, state string) error {
	if out, err := exec.Command("ip", "-n", c.UnderNS, "link", "set", c.H(i).Port, state).CombinedOutput(); err != nil {
		return fmt.Errorf("underlay link of host %d %s: %w: %s", i, state, err, out)
	}
	return nil
}

// tcIngress lists the ingress filters, with their counters (tc -s), of
// the host's VXLAN devices and then its veths, each after a line "dev
// <kind> <name>".
func (h *CHost) tcIngress() (string, error) {
	return h.ShFor(10*time.Second, "sh", "-c", "for k in vxlan veth; do for d in $(ip -o link show type $k | cut -d: -f2 | cut -d@ -f1 | tr -d ' '); do "+
		"echo \"dev $k $d\"; tc -s filter show dev $d ingress; done; done")
}

// FastPathPackets adds up the packets the host's fast path redirected
// (mirred's counters): from its VXLAN devices straight to their
// containers' veths, and from the containers' veths straight to the VXLAN
// devices. It returns tc's output too.
func (h *CHost) FastPathPackets() (fromTunnel, toTunnel int, out string, err error) {
	out, err = h.tcIngress()
	count := func(s string) (n int) {
		for _, m := range regexp.MustCompile(`Sent \d+ bytes (\d+) pkt`).FindAllStringSubmatch(s, -1) {
			k, _ := strconv.Atoi(m[1])
			n += k
		}
		return n
	}
	vx, veths, _ := strings.Cut(out, "dev veth ")
	return count(vx), count(veths), out, err
}

// FastPathFilters maps each fast-path redirect on the host (a filter on
// a VXLAN device's or a veth's ingress, by device and handle) to its
// mirred action's index: a filter made again has a new one. It returns
// tc's output too.
func (h *CHost) FastPathFilters() (map[string]string, string) {
	out, _ := h.tcIngress()
	filters := map[string]string{}
	dev, fh := "", ""
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) == 3 && f[0] == "dev":
			dev = f[2]
		case slices.Contains(f, "fh") && slices.Index(f, "fh")+1 < len(f):
			fh = dev + " " + f[slices.Index(f, "fh")+1]
		case len(f) >= 2 && f[0] == "index" && fh != "":
			filters[fh] = f[1]
			fh = ""
		}
	}
	return filters, out
}

// ShFor runs a command in the host's namespace, killed after timeout.
func (h *CHost) ShFor(timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, "nsenter", append([]string{"--net=/run/netns/" + h.NetNS}, args...)...).CombinedOutput()
	if ctx.Err() != nil {
		return strings.TrimSpace(string(out)), fmt.Errorf("host %d: %s: timed out after %s", h.I, strings.Join(args, " "), timeout)
	}
	if err != nil {
		return strings.TrimSpace(string(out)), fmt.Errorf("host %d: %s: %w: %s", h.I, strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out)), nil
}

// Spawn starts a command in the host's namespace in the background (e.g. a
// server for a benchmark); stop kills it and its children, and runs at the
// end of t anyway. Its output goes to the file at logPath.
func (h *CHost) Spawn(t testing.TB, args ...string) (stop func(), logPath string) {
	t.Helper()
	logPath = filepath.Join(t.TempDir(), fmt.Sprintf("spawn-h%d.log", h.I))
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("nsenter", append([]string{"--net=/run/netns/" + h.NetNS}, args...)...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatal(err)
	}
	var once sync.Once
	stop = func() {
		once.Do(func() {
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			_ = cmd.Wait()
			f.Close()
		})
	}
	t.Cleanup(stop)
	return stop, logPath
}

// remove takes everything down: containers (so that dockerd does not wait
// for them), engines (in parallel), etcd members, the underlay, the files.
// On failure it keeps the logs under /tmp first.
func (c *Cluster) remove() {
	if c.t.Failed() {
		c.keepLogs()
	}
	var wg sync.WaitGroup
	for _, h := range c.Hosts {
		if h == nil || h.Engine == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if ids, err := h.Docker(30*time.Second, "ps", "-aq"); err == nil && ids != "" {
				_, _ = h.Docker(time.Minute, append([]string{"rm", "-f"}, strings.Fields(ids)...)...)
			}
			h.Remove()
		}()
	}
	wg.Wait()
	c.mu.Lock()
	for _, cli := range c.clients {
		_ = cli.Close()
	}
	c.clients = map[int]*clientv3.Client{}
	c.mu.Unlock()
	for _, h := range c.Hosts {
		if h != nil {
			c.StopEtcd(h.I)
		}
	}
	_ = exec.Command("ip", "netns", "del", c.UnderNS).Run()
	_ = os.RemoveAll(c.Dir)
}

// keepLogs copies each host's dockerd log and each etcd member's log to
// /tmp, and shows their last lines.
func (c *Cluster) keepLogs() {
	name := strings.NewReplacer("/", "-", " ", "_").Replace(c.t.Name())
	for _, h := range c.Hosts {
		if h == nil {
			continue
		}
		if h.Engine != nil {
			keep := filepath.Join(os.TempDir(), fmt.Sprintf("ournet-e2e-%s-%s-h%d-dockerd.log", engineVersion, name, h.I))
			if raw, err := os.ReadFile(filepath.Join(h.Dir, "dockerd.log")); err == nil && os.WriteFile(keep, raw, 0o644) == nil {
				c.t.Logf("host %d: last lines of dockerd's log (whole log: %s):\n%s", h.I, keep, h.LogTail(40))
			}
		}
		keep := filepath.Join(os.TempDir(), fmt.Sprintf("ournet-e2e-%s-%s-h%d-etcd.log", engineVersion, name, h.I))
		if raw, err := os.ReadFile(h.etcdLog); err == nil && os.WriteFile(keep, raw, 0o644) == nil {
			c.t.Logf("host %d: etcd's log: %s", h.I, keep)
		}
	}
}

// tail is the last n lines of a file.
func tail(path string, n int) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
