package e2e

// Issue #16: a damaged or full state store never costs a running container
// its network, and ournet never deletes what dockerd still has. Each test
// is one of the numbered cases.

import (
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// StateDir is the plugin's propagatedMount on the engine's host, where
// state.db and its backups live.
func (e *Engine) StateDir(t *testing.T) string {
	t.Helper()
	id := e.Run(t, "plugin", "inspect", "-f", "{{.Id}}", PluginName)
	root := e.Run(t, "info", "-f", "{{.DockerRootDir}}")
	return filepath.Join(root, "plugins", id, "propagated-mount")
}

// InMountNS runs a command in the engine's mount namespace (where dockerd
// and the plugin see their mounts).
func (e *Engine) InMountNS(args ...string) (string, error) {
	out, err := exec.Command("nsenter", append([]string{fmt.Sprintf("--mount=/proc/%d/ns/mnt", e.holder.Process.Pid), "--"}, args...)...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// setPlugin disables the plugin, sets KEY=VALUEs and enables it again.
func (e *Engine) setPlugin(t *testing.T, kv ...string) {
	t.Helper()
	e.Run(t, "plugin", "disable", PluginName)
	e.Run(t, append([]string{"plugin", "set", PluginName}, kv...)...)
	e.Run(t, "plugin", "enable", PluginName)
}

// twoContainers makes a network with two containers that reach each other.
func twoOnNet(t *testing.T, e *Engine, net, subnet string) (a, b string) {
	t.Helper()
	Net(t, e, net, "-d", "ournet", "--ipam-driver", "ournet", "--subnet", subnet)
	a, b = net+"-a", net+"-b"
	Container(t, e, a, "--network", net)
	Container(t, e, b, "--network", net)
	if err := e.Ping(a, b); err != nil {
		t.Fatal(err)
	}
	return a, b
}

// Case 1: an empty state file is not a fresh start. ournet leaves every
// bridge, veth and rule alone (running containers keep talking), refuses
// every call with what to do, and STATE_RECOVER=backup brings the last good
// state back, after which everything works again.
func TestStateFileEmpty(t *testing.T) {
	e := NewEngine(t)
	a, b := twoOnNet(t, e, "st-empty", "198.18.130.0/24")
	dir := e.StateDir(t)
	e.Run(t, "plugin", "disable", PluginName) // a clean stop backs the state up
	if _, err := os.Stat(filepath.Join(dir, "state.db.backup.1")); err != nil {
		t.Fatalf("no backup after a clean stop: %v", err)
	}
	if err := os.Truncate(filepath.Join(dir, "state.db"), 0); err != nil {
		t.Fatal(err)
	}
	e.Run(t, "plugin", "enable", PluginName)
	msg := e.Fails(t, "run", "-d", "--name", "st-empty-c", "--network", "st-empty", Image, "sleep", "600")
	_, _ = e.Docker(time.Minute, "rm", "-f", "st-empty-c")
	for _, w := range []string{"state file /var/lib/ournet/state.db is empty", "left every bridge, veth and rule alone", "STATE_RECOVER=backup"} {
		if !strings.Contains(msg, w) {
			t.Fatalf("docker run with an empty state file says %q; want it to contain %q", msg, w)
		}
	}
	if msg := e.Fails(t, "network", "create", "-d", "ournet", "--ipam-driver", "ournet", "--subnet", "198.18.131.0/24", "st-empty2"); !strings.Contains(msg, "is empty") {
		t.Fatalf("network create with an empty state file: %s", msg)
	}
	// Give the plugin a repair round's time to do damage, if it would.
	time.Sleep(6 * time.Second)
	if err := e.Ping(a, b); err != nil {
		t.Fatalf("with an empty state file the running containers lost their network: %v", err)
	}
	if out, err := e.ournetStatus(); err == nil || !strings.Contains(out, "is empty") {
		t.Fatalf("ournet-status with an empty state file: %v\n%s", err, out)
	}

	e.setPlugin(t, "STATE_RECOVER=backup")
	Container(t, e, "st-empty-c", "--network", "st-empty")
	if err := e.Ping("st-empty-c", a); err != nil {
		t.Fatalf("after STATE_RECOVER=backup: %v", err)
	}
	if err := e.Ping(a, b); err != nil {
		t.Fatal(err)
	}
	if out, err := e.ournetStatus(); err != nil {
		t.Fatalf("ournet-status after the recovery: %v\n%s", err, out)
	}
	if m, _ := filepath.Glob(filepath.Join(dir, "state.db.damaged-*")); len(m) != 1 {
		t.Fatalf("the damaged file was not kept aside: %v", m)
	}
	e.setPlugin(t, "STATE_RECOVER=")
}

// A state restored from a backup older than a running container: that
// container's endpoint is unknown to ournet and left alone, its
// anti-spoofing checks too, through the restore and the repair rounds;
// they go with the container.
func TestBackupKeepsNewerContainersChecks(t *testing.T) {
	e := NewEngine(t)
	f := engineFilter(t, e)
	a, _ := twoOnNet(t, e, "st-old", "198.18.138.0/24")
	dir := e.StateDir(t)
	e.Run(t, "plugin", "disable", PluginName) // backs up a state with a and b
	old, err := os.ReadFile(filepath.Join(dir, "state.db.backup.1"))
	if err != nil {
		t.Fatal(err)
	}
	e.Run(t, "plugin", "enable", PluginName)
	Container(t, e, "st-new", "--network", "st-old")
	pa, pn := portOf(t, e, a, "st-old"), portOf(t, e, "st-new", "st-old")
	e.Run(t, "plugin", "disable", PluginName)
	// Only the old backup is left, and the state file is empty.
	for _, n := range []string{"state.db.backup.2", "state.db.backup.3"} {
		os.Remove(filepath.Join(dir, n))
	}
	if err := os.WriteFile(filepath.Join(dir, "state.db.backup.1"), old, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(filepath.Join(dir, "state.db"), 0); err != nil {
		t.Fatal(err)
	}
	e.Run(t, "plugin", "set", PluginName, "STATE_RECOVER=backup")
	e.Run(t, "plugin", "enable", PluginName)
	t.Cleanup(func() { e.setPlugin(t, "STATE_RECOVER=") })
	checked := func() []string {
		t.Helper()
		got, _, err := f.Ports()
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	// The recovered state knows a and b only; st-new keeps its checks, also
	// after a repair round.
	time.Sleep(6 * time.Second)
	if got := checked(); !slices.Contains(got, pa) || !slices.Contains(got, pn) {
		t.Fatalf("after the recovery and a repair round: checks on %v, want %s's (%s) and st-new's (%s)", got, a, pa, pn)
	}
	if err := e.Ping("st-new", a); err != nil {
		t.Fatal(err)
	}
	e.Run(t, "rm", "-f", "st-new")
	waitFor(t, 20*time.Second, "st-new's checks gone with it", func() error {
		if got := checked(); slices.Contains(got, pn) {
			return fmt.Errorf("checks on %v", got)
		}
		return nil
	})
}

// Case 5: a corrupt state file never panics the plugin: it listens, every
// call fails naming the file and the way out, one log line says the same,
// the containers keep running; STATE_RECOVER=fresh starts over.
func TestStateFileCorrupt(t *testing.T) {
	e := NewEngine(t)
	a, b := twoOnNet(t, e, "st-bad", "198.18.132.0/24")
	dir := e.StateDir(t)
	e.Run(t, "plugin", "disable", PluginName)
	for _, f := range []string{"state.db.backup.1", "state.db.backup.2", "state.db.backup.3"} {
		os.Remove(filepath.Join(dir, f)) // no backup: the message must say so
	}
	path := filepath.Join(dir, "state.db")
	raw, err := os.ReadFile(path)
	if err != nil || len(raw) < 4*4096 {
		t.Fatalf("state file: %d bytes, %v", len(raw), err)
	}
	// Random pages over the meta pages and the first data pages.
	junk := make([]byte, 4*4096)
	_, _ = rand.Read(junk)
	copy(raw, junk)
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	e.Run(t, "plugin", "enable", PluginName)
	if d := time.Since(start); d > 8*time.Second {
		t.Fatalf("enabling over a corrupt state file took %s (it must listen at once)", d)
	}
	msg := e.Fails(t, "network", "create", "-d", "ournet", "--ipam-driver", "ournet", "--subnet", "198.18.133.0/24", "st-bad2")
	for _, w := range []string{"state file /var/lib/ournet/state.db is damaged", "No backup of it exists", "STATE_RECOVER=fresh"} {
		if !strings.Contains(msg, w) {
			t.Fatalf("network create with a corrupt state file says %q; want %q", msg, w)
		}
	}
	if log := e.LogTail(400); strings.Contains(log, "panic") || strings.Contains(log, "goroutine ") {
		t.Fatalf("the plugin panicked:\n%s", log)
	}
	if err := e.Ping(a, b); err != nil {
		t.Fatalf("with a corrupt state file the running containers lost their network: %v", err)
	}

	// Starting over removes ournet's objects; dockerd's networks are then
	// removed and created again.
	e.setPlugin(t, "STATE_RECOVER=fresh")
	bridge := "ournet-" + e.Run(t, "network", "inspect", "-f", "{{.Id}}", "st-bad")[:8]
	waitFor(t, 10*time.Second, "fresh start removes the old bridge", func() error {
		if e.LinkExists(bridge) {
			return fmt.Errorf("bridge %s still there", bridge)
		}
		return nil
	})
	e.Run(t, "rm", "-f", a, b)
	e.Run(t, "network", "rm", "st-bad")
	twoOnNet(t, e, "st-bad", "198.18.132.0/24")
	e.setPlugin(t, "STATE_RECOVER=")
}

// Case 3: an overlapping create never deletes a live network dockerd
// still has, even one ournet's run did not create: it is refused by name.
func TestOverlapNeverDeletesLiveNetwork(t *testing.T) {
	e := NewEngine(t)
	aID := Net(t, e, "ov-a", "-d", "ournet", "--subnet", "198.18.140.0/24")
	pid, err := e.PluginPID()
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "plugin back", func() error {
		p, err := e.PluginPID()
		if err == nil && p == pid {
			return fmt.Errorf("still the old pid")
		}
		return err
	})
	var msg string
	waitFor(t, 30*time.Second, "the overlapping create answered", func() error {
		out, err := e.Docker(time.Minute, "network", "create", "-d", "ournet", "--ipam-driver", "ournet", "--subnet", "198.18.140.0/24", "ov-b")
		if err == nil {
			_, _ = e.Docker(time.Minute, "network", "rm", "ov-b")
			t.Fatalf("an overlapping network was created: %s", out)
		}
		msg = err.Error()
		if strings.Contains(msg, "run the command again") {
			return err
		}
		return nil
	})
	if want := "overlaps subnet 198.18.140.0/24 of ournet network " + aID[:12]; !strings.Contains(msg, want) {
		t.Fatalf("overlapping create says %q; want %q", msg, want)
	}
	Container(t, e, "ov-a1", "--network", "ov-a")
	Container(t, e, "ov-a2", "--network", "ov-a")
	if err := e.Ping("ov-a1", "ov-a2"); err != nil {
		t.Fatalf("network A after the refused overlap: %v", err)
	}
}

// Case 4 and 6: subnets no network can use are refused by name, with
// ournet's IPAM and with the engine's (whose own checks let a subnet that
// covers a host route through: ournet's driver refuses it); a /31 (and an IPv6 /127) holds the
// gateway and one container; overlap messages name each side right.
func TestUnusableSubnets(t *testing.T) {
	u := NewUplink(t, eng) // the host now routes 198.51.100.0/24
	_ = u
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--ipam-driver", "ournet", "--subnet", "0.0.0.0/0"}, "subnet 0.0.0.0/0 is every IPv4 address"},
		{[]string{"--ipam-driver", "ournet", "--subnet", "198.18.142.7/32"}, "subnet 198.18.142.7/32 holds a single address"},
		{[]string{"--ipam-driver", "ournet", "--subnet", "198.51.0.0/16"}, "subnet 198.51.0.0/16 covers 198.51.100.0/24, a route of this host"},
		{[]string{"--subnet", "198.51.0.0/16"}, "subnet 198.51.0.0/16 covers 198.51.100.0/24, a route of this host"},
		{[]string{"--ipam-driver", "ournet", "--ipv6", "--subnet", "198.18.142.0/24", "--subnet", "2001:db8:142::1/128"}, "give at least a /127"},
	} {
		msg := eng.Fails(t, append(append([]string{"network", "create", "-d", "ournet"}, tc.args...), "unusable")...)
		if !strings.Contains(msg, tc.want) {
			t.Errorf("network create %v says %q; want %q", tc.args, msg, tc.want)
		}
		if out := eng.Run(t, "network", "ls", "-q", "--filter", "name=unusable"); out != "" {
			t.Fatalf("the refused network exists")
		}
	}
	// Nothing of the refused creates is left: the same subnets' neighbours
	// still work, and no pool is held.
	Net(t, eng, "p2p", "-d", "ournet", "--ipam-driver", "ournet", "--ipv6", "--subnet", "198.18.142.0/31", "--subnet", "2001:db8:142::/127")
	Container(t, eng, "p2p-a", "--network", "p2p")
	if ip := eng.IP(t, "p2p-a", "p2p"); ip != "198.18.142.1" {
		t.Fatalf("/31: the container got %s, want 198.18.142.1 (the gateway has .0)", ip)
	}
	if err := eng.Ping("p2p-a", "198.18.142.0"); err != nil {
		t.Fatalf("/31: %v", err)
	}
	if out, err := eng.Exec("p2p-a", "ping6", "-c", "1", "-W", "2", "2001:db8:142::"); err != nil {
		t.Fatalf("/127: the container cannot reach its gateway: %v %s", err, out)
	}
	msg := eng.Fails(t, "run", "--rm", "--network", "p2p", Image, "true")
	if !strings.Contains(msg, "no free address") {
		t.Fatalf("a second container on a /31: %s", msg)
	}
	// The overlap message names the new subnet and the other network's.
	xID := Net(t, eng, "ovl-x", "-d", "ournet", "--subnet", "198.18.143.0/24")
	msg = eng.Fails(t, "network", "create", "-d", "ournet", "--ipam-driver", "ournet", "--subnet", "198.18.143.128/25", "ovl-y")
	if want := "subnet 198.18.143.128/25 overlaps subnet 198.18.143.0/24 of ournet network " + xID[:12]; !strings.Contains(msg, want) {
		t.Fatalf("overlap says %q; want %q", msg, want)
	}
}

// Case 2: with the state file's filesystem full (a create is refused, and
// fails cleanly), deletes still remove everything in the kernel, and are
// remembered: once there is room they are written, the subnet can be used
// again and an uninstall leaves nothing.
func TestFullDiskDeletes(t *testing.T) {
	e := NewEngine(t)
	dir := e.StateDir(t)
	// The state directory on a small filesystem of its own, in the engine's
	// mount namespace, with the state it had.
	e.Run(t, "plugin", "disable", PluginName)
	keep := t.TempDir()
	if out, err := exec.Command("cp", "-a", dir+"/.", keep).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	if out, err := e.InMountNS("mount", "-t", "tmpfs", "-o", "size=8m", "ournet-state", dir); err != nil {
		t.Fatalf("mounting a small filesystem on the state directory: %v %s", err, out)
	}
	t.Cleanup(func() { _, _ = e.InMountNS("umount", "-l", dir) })
	if out, err := e.InMountNS("cp", "-a", keep+"/.", dir); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	e.Run(t, "plugin", "enable", PluginName)
	if out, _ := e.InMountNS("ls", dir); !strings.Contains(out, "state.db.reserve") {
		t.Fatalf("the plugin does not use the small filesystem (no reserve there): %s", out)
	}

	nid := Net(t, e, "full", "-d", "ournet", "--ipam-driver", "ournet", "--subnet", "198.18.134.0/24")
	Net(t, e, "full2", "-d", "ournet", "--ipam-driver", "ournet", "--subnet", "198.18.135.0/24")
	Container(t, e, "full-a", "--network", "full", "-p", "18134:80")
	Container(t, e, "full-b", "--network", "full")
	e.Run(t, "network", "connect", "full2", "full-b")
	epA := e.Run(t, "inspect", "-f", "{{(index .NetworkSettings.Networks \"full\").EndpointID}}", "full-a")
	epB2 := e.Run(t, "inspect", "-f", "{{(index .NetworkSettings.Networks \"full2\").EndpointID}}", "full-b")

	// Fill it (dd stops at ENOSPC).
	_, _ = e.InMountNS("dd", "if=/dev/zero", "of="+dir+"/fill", "bs=64k")
	if out, _ := e.InMountNS("df", "--output=avail", dir); !strings.Contains(out, "\n0") && !strings.HasSuffix(strings.TrimSpace(out), " 0") {
		t.Fatalf("the filesystem is not full after filling it: %s", out)
	}
	// bbolt writes into free pages of its own file first: creates fill
	// them until one cannot be saved (at most 40), and fails cleanly, so
	// that the deletes below do meet a full disk.
	nets := []string{"full", "full2"}
	for i := 0; ; i++ {
		if i == 40 {
			t.Fatalf("40 creates fitted in the state file on a full disk: the full-disk case is not exercised")
		}
		name := fmt.Sprintf("fill%d", i)
		links := e.Links(t)
		_, err := e.Docker(time.Minute, "network", "create", "-d", "ournet", "--ipam-driver", "ournet", "--subnet", fmt.Sprintf("198.18.%d.0/24", 160+i), name)
		if err == nil {
			nets = append(nets, name)
			continue
		}
		if !strings.Contains(err.Error(), "no space left on device") {
			t.Fatalf("create on a full disk: %v", err)
		}
		e.NoNewLinks(t, links, "a create refused on the full disk")
		t.Logf("the full disk refused create %d: %v", i+1, err)
		break
	}

	e.Run(t, "network", "disconnect", "-f", "full2", "full-b")
	e.Run(t, "rm", "-f", "full-a", "full-b")
	e.Run(t, append([]string{"network", "rm"}, nets...)...)
	// A delete frees pages of bbolt's file, so it mostly fits there; the
	// reserve and the memory are for one that does not (internal/store's
	// tests force that). Said here, not checked.
	if out, _ := e.ournetStatus("--json"); strings.Contains(out, `"Unsaved"`) || strings.Contains(e.LogTail(400), "used the space reserved for deletes") {
		t.Logf("the deletes on the full disk used the reserve or memory")
	}
	gone := func(stage string) {
		t.Helper()
		links, _ := e.Sh("ip", "-o", "link")
		for _, l := range []string{"ournet-" + nid[:8], "ov" + epA[:12], "ov" + epB2[:12]} {
			if strings.Contains(links, l) {
				t.Errorf("%s: link %s is left", stage, l)
			}
		}
		if dump := e.Rules(); strings.Contains(dump, nid[:12]) || strings.Contains(dump, epA[:12]) || strings.Contains(dump, "18134") {
			t.Errorf("%s: the firewall keeps rules of the removed network or its ports", stage)
		}
	}
	gone("on the full disk")

	// Room again: what was kept in memory is written, and survives.
	if out, err := e.InMountNS("rm", "-f", dir+"/fill"); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	waitFor(t, 20*time.Second, "the deletions written", func() error {
		out, err := e.ournetStatus("--json")
		if err != nil || strings.Contains(out, `"Unsaved"`) || strings.Contains(out, "198.18.134.0/24") || strings.Contains(out, "198.18.160.0/24") {
			return fmt.Errorf("%v %s", err, out)
		}
		return nil
	})
	pid, _ := e.PluginPID()
	_ = syscall.Kill(pid, syscall.SIGKILL)
	waitFor(t, 30*time.Second, "plugin back", func() error {
		if p, err := e.PluginPID(); err != nil || p == pid {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	time.Sleep(2 * time.Second)
	gone("after a restart")
	Net(t, e, "full-again", "-d", "ournet", "--ipam-driver", "ournet", "--subnet", "198.18.134.0/24")
	Container(t, e, "full-c", "--network", "full-again")
	e.Run(t, "rm", "-f", "full-c")
	e.Run(t, "network", "rm", "full-again")
	e.Run(t, "plugin", "disable", PluginName)
	e.Run(t, "plugin", "rm", PluginName)
	for _, tool := range []string{"iptables-save", "ip6tables-save"} {
		if dump, _ := e.Sh(tool); strings.Contains(dump, "OURNET") {
			t.Errorf("after uninstall %s keeps ournet's rules", tool)
		}
	}
	if out, _ := e.Sh("nft", "list", "tables"); strings.Contains(out, "ournet") {
		t.Errorf("after uninstall nftables keeps ournet's table: %s", out)
	}
	if out, _ := e.Sh("ip", "-o", "link"); strings.Contains(out, "ournet") {
		t.Errorf("after uninstall links are left: %s", out)
	}
}

// Self-healing endpoints: a container's veth deleted by hand is plumbed
// into the container again within seconds, with its address, MAC, MTU and
// routes, its published port works again, and ournet-status says so.
func TestEndpointHeals(t *testing.T) {
	u := NewUplink(t, eng)
	u.WhoAmI(t)
	Net(t, eng, "heal", "-d", "ournet", "--subnet", "198.18.137.0/24", "-o", "com.docker.network.driver.mtu=1400")
	Container(t, eng, "heal-a", "--network", "heal", "-p", "18137:80")
	Container(t, eng, "heal-b", "--network", "heal")
	eng.Serve(t, "heal-a", 80)
	before, _ := eng.Exec("heal-a", "ip", "-o", "link", "show", "eth0")
	ep := eng.Run(t, "inspect", "-f", "{{(index .NetworkSettings.Networks \"heal\").EndpointID}}", "heal-a")
	if err := eng.Ping("heal-b", "heal-a"); err != nil {
		t.Fatal(err)
	}
	// Let a repair round learn the container's interface name first.
	time.Sleep(6 * time.Second)
	if out, err := eng.Sh("ip", "link", "del", "ov"+ep[:12]); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	// The deletion took the container's eth0 with it: it is gone, or
	// (ournet repairs as soon as the kernel announces the change) another
	// link already, with another index.
	if out, _ := eng.Exec("heal-a", "ip", "-o", "link", "show", "eth0"); strings.Contains(out, "eth0") && linkIndex(out) == linkIndex(before) {
		t.Fatalf("the container still has its eth0 after its veth was deleted: %s", out)
	}
	waitFor(t, 15*time.Second, "the endpoint plumbed again", func() error { return eng.Ping("heal-b", "heal-a") })
	after, _ := eng.Exec("heal-a", "ip", "-o", "link", "show", "eth0")
	for _, want := range []string{"mtu 1400", "link/ether 02:42:c6:12:89:"} {
		if !strings.Contains(after, want) {
			t.Errorf("eth0 after healing lacks %q:\n%s\nbefore:\n%s", want, after, before)
		}
	}
	if route, _ := eng.Exec("heal-a", "ip", "route", "show", "default"); !strings.Contains(route, "via 198.18.137.1") {
		t.Errorf("default route after healing: %q", route)
	}
	if got, err := eng.SeenAs("heal-a", UplinkPeerIP); err != nil || got != UplinkHostIP {
		t.Errorf("outbound after healing: %q %v", got, err)
	}
	if out, err := u.Exec("curl", "-sf", "-m", "3", "http://"+UplinkHostIP+":18137/"); err != nil || !strings.Contains(out, "hello from heal-a") {
		t.Errorf("published port after healing: %q %v", out, err)
	}
	if out, err := eng.ournetStatus(); err != nil || !strings.Contains(out, "re-plumbed into its container") {
		t.Errorf("ournet-status after healing: %v\n%s", err, out)
	}
}

// linkIndex is the "N: name@ifM" head of a line of `ip -o link show`.
func linkIndex(line string) string {
	head, _, _ := strings.Cut(line, ":")
	return strings.TrimSpace(head)
}
