package e2e

// Issue #6: every restart path keeps containers working, and drift is
// repaired. Each test has an engine of its own, since it breaks it.

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// waitFor polls fn every 200 ms until it succeeds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for time.Now().Before(deadline) {
		if err = fn(); err == nil {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("%s: not within %s: %v", what, timeout, err)
}

// PluginPID is the pid of the ournet process serving this engine (the one
// in the engine's network namespace).
func (e *Engine) PluginPID() (int, error) {
	var want syscall.Stat_t
	if err := syscall.Stat("/run/netns/"+e.NetNS, &want); err != nil {
		return 0, err
	}
	out, _ := exec.Command("pgrep", "-x", "ournet").Output()
	for _, f := range strings.Fields(string(out)) {
		pid, _ := strconv.Atoi(f)
		var st syscall.Stat_t
		if syscall.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &st) == nil && st.Ino == want.Ino {
			return pid, nil
		}
	}
	return 0, fmt.Errorf("no ournet process in netns %s", e.NetNS)
}

// Stream sends lines lines from one container to another over one TCP
// connection, 10 a second, and returns a function that counts the lines
// received so far. The connection is established before Stream returns.
func Stream(t *testing.T, e *Engine, from, to, toIP string, lines int) func() int {
	t.Helper()
	if _, err := e.Docker(time.Minute, "exec", "-d", to, "sh", "-c", "sleep 120 | nc -l -p 9000 > /tmp/recv"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	send := fmt.Sprintf("for i in $(seq 1 %d); do echo line$i; sleep 0.1; done | nc %s 9000", lines, toIP)
	if _, err := e.Docker(time.Minute, "exec", "-d", from, "sh", "-c", send); err != nil {
		t.Fatal(err)
	}
	count := func() int {
		out, err := e.Exec(to, "sh", "-c", "wc -l < /tmp/recv")
		if err != nil {
			return -1
		}
		n, _ := strconv.Atoi(strings.TrimSpace(out))
		return n
	}
	waitFor(t, 5*time.Second, "stream started", func() error {
		if count() < 1 {
			return fmt.Errorf("nothing received yet")
		}
		return nil
	})
	return count
}

// twoContainers makes a network with a and b on it and returns b's address.
func twoContainers(t *testing.T, e *Engine, subnet string, runArgs ...string) string {
	t.Helper()
	Net(t, e, "keep", "-d", "ournet", "--ipam-driver", "ournet", "--subnet", subnet)
	Container(t, e, "keep-a", append([]string{"--network", "keep"}, runArgs...)...)
	Container(t, e, "keep-b", append([]string{"--network", "keep"}, runArgs...)...)
	return e.IP(t, "keep-b", "keep")
}

// stillWorks checks the old containers and a new one on the old network.
func stillWorks(t *testing.T, e *Engine) {
	t.Helper()
	waitFor(t, 30*time.Second, "keep-a pings keep-b by name", func() error { return e.Ping("keep-a", "keep-b") })
	Container(t, e, "keep-new", "--network", "keep")
	if err := e.Ping("keep-new", "keep-a"); err != nil {
		t.Fatal(err)
	}
}

func TestSurvivesPluginKill(t *testing.T) {
	e := NewEngine(t)
	ipB := twoContainers(t, e, "198.18.40.0/24")
	count := Stream(t, e, "keep-a", "keep-b", ipB, 100)
	pid, err := e.PluginPID()
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	before := count()
	time.Sleep(time.Second)
	if after := count(); after <= before {
		t.Fatalf("the established connection stalled while the plugin was down (%d then %d lines)", before, after)
	}
	waitFor(t, 30*time.Second, "the engine restarts the plugin", func() error {
		p, err := e.PluginPID()
		if err == nil && p == pid {
			return fmt.Errorf("still the old pid")
		}
		return err
	})
	stillWorks(t, e)
	waitFor(t, 20*time.Second, "the whole stream arrives", func() error {
		if n := count(); n != 100 {
			return fmt.Errorf("%d of 100 lines", n)
		}
		return nil
	})
}

func TestSurvivesEngineRestart(t *testing.T) {
	e := NewEngine(t)
	twoContainers(t, e, "198.18.41.0/24", "--restart", "always")
	e.Stop()
	if err := e.Start(); err != nil {
		t.Fatal(err)
	}
	stillWorks(t, e)
}

func TestSurvivesLiveRestore(t *testing.T) {
	e := NewEngine(t, "--live-restore")
	ipB := twoContainers(t, e, "198.18.42.0/24")
	count := Stream(t, e, "keep-a", "keep-b", ipB, 100)
	recv := recvFile(t, e, "keep-b")
	e.Stop()
	before := countLines(t, recv)
	time.Sleep(time.Second)
	if after := countLines(t, recv); after <= before {
		t.Fatalf("the established connection stalled while the engine was down (%d then %d lines)", before, after)
	}
	if err := e.Start(); err != nil {
		t.Fatal(err)
	}
	stillWorks(t, e)
	waitFor(t, 20*time.Second, "the whole stream arrives", func() error {
		if n := count(); n != 100 {
			return fmt.Errorf("%d of 100 lines", n)
		}
		return nil
	})
}

// recvFile is where Stream's receiver in container c writes, as a path that
// stays readable while the engine is down (docker exec needs the engine):
// the file through the root of the container's first process, in /proc.
// Found by the container, not by the receiver's command line, which a
// parallel run of the suite on another engine has too.
func recvFile(t *testing.T, e *Engine, c string) string {
	t.Helper()
	pid := strings.TrimSpace(e.Run(t, "inspect", "-f", "{{.State.Pid}}", c))
	return filepath.Join("/proc", pid, "root", "tmp", "recv")
}

// countLines counts the lines of the file at path.
func countLines(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading the receiver's file: %v", err)
	}
	return strings.Count(string(b), "\n")
}

func TestSurvivesDisableEnable(t *testing.T) {
	e := NewEngine(t)
	twoContainers(t, e, "198.18.43.0/24")
	e.Run(t, "plugin", "disable", "-f", PluginName)
	if err := e.Ping("keep-a", "keep-b"); err != nil {
		t.Fatalf("containers stopped talking while the plugin was disabled: %v", err)
	}
	e.Run(t, "plugin", "enable", PluginName)
	stillWorks(t, e)
}

// make install over an existing install keeps the networks and their state.
func TestSurvivesUpgrade(t *testing.T) {
	e := NewEngine(t)
	twoContainers(t, e, "198.18.44.0/24")
	if err := e.InstallPlugin(); err != nil {
		t.Fatal(err)
	}
	stillWorks(t, e)
	// The state came along: the network can still be removed cleanly.
	id := e.Run(t, "network", "inspect", "-f", "{{.Id}}", "keep")
	e.Run(t, "rm", "-f", "keep-a", "keep-b", "keep-new")
	e.Run(t, "network", "rm", "keep")
	if e.LinkExists("ournet-" + id[:8]) {
		t.Fatal("bridge left behind after the upgrade and network rm")
	}
}

// A firewalld-style reload (every table flushed) and a bridge deleted by
// hand are repaired within seconds.
func TestDriftRepair(t *testing.T) {
	e := NewEngine(t)
	twoContainers(t, e, "198.18.45.0/24")
	for _, table := range []string{"filter", "nat", "mangle", "raw"} {
		for _, op := range []string{"-F", "-X"} {
			if out, err := e.Sh("iptables", "-t", table, op); err != nil {
				t.Fatal(out, err)
			}
		}
	}
	// Read right after the flush, before the next repair: the flush really
	// removed ournet's rules, so what follows proves the repair.
	if out, _ := e.Sh("iptables-save"); strings.Contains(out, "OURNET-FORWARD") {
		t.Fatal("the flush did not remove ournet's rules: the test proves nothing")
	}
	waitFor(t, 15*time.Second, "rules restored after a flush", func() error { return e.Ping("keep-a", "keep-b") })
	// ournet's nftables table deleted (as `nft flush ruleset` would): it
	// comes back, with the network's elements.
	id := e.Run(t, "network", "inspect", "-f", "{{.Id}}", "keep")
	if out, err := e.Sh("nft", "delete", "table", "inet", "ournet"); err != nil {
		t.Fatal(out, err)
	}
	waitFor(t, 15*time.Second, "table inet ournet restored", func() error {
		if out, _ := e.Sh("nft", "list", "set", "inet", "ournet", "icc"); !strings.Contains(out, `comment "ournet:`+id[:12]) {
			return fmt.Errorf("not yet: %s", out)
		}
		return e.Ping("keep-a", "keep-b")
	})

	if out, err := e.Sh("ip", "link", "del", "ournet-"+id[:8]); err != nil {
		t.Fatal(out, err)
	}
	waitFor(t, 15*time.Second, "bridge recreated", func() error { return e.Ping("keep-a", "keep-b") })
	// A network ournet removed is not brought back.
	e.Run(t, "rm", "-f", "keep-a", "keep-b")
	e.Run(t, "network", "rm", "keep")
	time.Sleep(6 * time.Second) // more than one RECONCILE_INTERVAL
	if e.LinkExists("ournet-" + id[:8]) {
		t.Fatal("a removed network's bridge came back")
	}
}

// Uninstalling (networks removed, plugin disabled and removed) leaves no
// rule, table, link or socket of ournet's behind.
func TestUninstallLeavesNothing(t *testing.T) {
	e := NewEngine(t)
	before := e.Links(t)
	Net(t, e, "bye", "-d", "ournet", "--ipam-driver", "ournet", "--ipv6", "--subnet", "198.18.49.0/24", "--subnet", "2001:db8:49::/64")
	Container(t, e, "bye-a", "--network", "bye", "-p", "18049:80")
	e.Run(t, "rm", "-f", "bye-a")
	e.Run(t, "network", "rm", "bye")
	e.Run(t, "plugin", "disable", PluginName)
	e.Run(t, "plugin", "rm", PluginName)
	for _, tool := range []string{"iptables", "ip6tables"} {
		for _, table := range []string{"filter", "nat", "mangle", "raw"} {
			if out, _ := e.Sh(tool+"-save", "-t", table); strings.Contains(out, "OURNET") {
				t.Errorf("%s table %s keeps ournet's rules:\n%s", tool, table, out)
			}
		}
	}
	if out, _ := e.Sh("nft", "list", "tables"); strings.Contains(out, "ournet") {
		t.Errorf("nftables keeps ournet's table: %s", out)
	}
	e.NoNewLinks(t, before, "the uninstall")
	if _, err := os.Stat(filepath.Join(e.Dir, "plugins", "ournet.sock")); err == nil {
		t.Error("the legacy socket ournet.sock is left behind")
	}
}
