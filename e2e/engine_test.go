package e2e

// Helpers that drive a private Docker engine: start and stop it, import the
// test image offline, install the plugin, run docker commands. Every e2e test
// (issues #2 to #7) builds on these.

import (
	"bytes"
	"context"
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

// Engine is one private dockerd with its own data-root, exec-root and socket,
// running in a network namespace of its own (the engine's "host": its
// bridges, iptables and plugin live there, never in the real host's) and a
// mount namespace in which /run/docker/plugins, where the engine discovers
// the plain "ournet" socket, is a directory of its own. So several engines,
// and several test runs, never see each other.
type Engine struct {
	Dir     string // holds data/, exec/, plugins/, docker.sock, dockerd.log
	Host    string // DOCKER_HOST value
	NetNS   string // the engine's network namespace (/run/netns/NetNS)
	Dockerd string // the dockerd binary
	cmd     *exec.Cmd
	log     *os.File
	extra   []string
	holder  *exec.Cmd // keeps the engine's mount namespace alive across restarts
	// failures are what Errorf reported, said again after the log's tail
	// (which would otherwise bury them at the end of a failed test).
	failures []string
}

// Errorf fails t with a message that is repeated after the engine's log
// tail when the test ends.
func (e *Engine) Errorf(t *testing.T, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	e.failures = append(e.failures, msg)
	t.Error(msg)
}

// E2E_ENGINE_PATH (directories, colon separated) goes first in PATH, for
// dockerd and the docker CLI alike: an engine unpacked beside the system's
// (scripts/engine.sh) then finds its own containerd, shims,
// docker-init and docker-proxy, and the system's runc after them.
func init() {
	if p := os.Getenv("E2E_ENGINE_PATH"); p != "" {
		os.Setenv("PATH", p+string(os.PathListSeparator)+os.Getenv("PATH"))
	}
}

// StartEngine creates the engine's namespace and starts dockerd (the binary
// in $E2E_DOCKERD, else dockerd in PATH), waiting until it answers. extra are
// more dockerd flags.
func StartEngine(dir string, extra ...string) (*Engine, error) {
	bin := os.Getenv("E2E_DOCKERD")
	if bin == "" {
		bin = "dockerd"
	}
	if err := os.MkdirAll(filepath.Join(dir, "plugins"), 0o700); err != nil {
		return nil, err
	}
	e := &Engine{Dir: dir, Host: "unix://" + filepath.Join(dir, "docker.sock"), Dockerd: bin, extra: extra,
		NetNS: "oe-" + filepath.Base(dir)[len(filepath.Base(dir))-6:]}
	for _, c := range [][]string{
		{"mkdir", "-p", "/run/docker/plugins"},
		{"ip", "netns", "add", e.NetNS},
		{"ip", "-n", e.NetNS, "link", "set", "lo", "up"},
		// As on a real host, where dockerd turns forwarding on and sets
		// FORWARD's policy to DROP (in a new netns it may find forwarding
		// already on and leave the policy ACCEPT): ournet must work under DROP.
		{"ip", "netns", "exec", e.NetNS, "iptables", "-P", "FORWARD", "DROP"},
		{"ip", "netns", "exec", e.NetNS, "ip6tables", "-P", "FORWARD", "DROP"},
	} {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			return e, fmt.Errorf("%s: %w: %s", strings.Join(c, " "), err, out)
		}
	}
	if err := e.holdMountNS(); err != nil {
		return e, err
	}
	return e, e.Start()
}

// holdMountNS creates the engine's mount namespace, with its own
// /run/docker/plugins, held by a sleeping process so that a restarted
// dockerd finds the mounts (netns files, plugin sockets) of the one before,
// as live-restore needs.
func (e *Engine) holdMountNS() error {
	script := `mount --make-rprivate / && mount --bind "$0" /run/docker/plugins && exec sleep infinity`
	e.holder = exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c", script, filepath.Join(e.Dir, "plugins"))
	e.holder.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := e.holder.Start(); err != nil {
		return fmt.Errorf("creating the engine's mount namespace: %w", err)
	}
	for i := 0; i < 50; i++ {
		info, _ := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", e.holder.Process.Pid))
		if strings.Contains(string(info), " /run/docker/plugins ") {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("the engine's mount namespace did not get its /run/docker/plugins")
}

// Start (re)starts the engine's process.
func (e *Engine) Start() error {
	args := append([]string{
		"--data-root", filepath.Join(e.Dir, "data"),
		"--exec-root", filepath.Join(e.Dir, "exec"),
		"--pidfile", filepath.Join(e.Dir, "dockerd.pid"),
		"-H", e.Host,
	}, e.extra...)
	// nsenter, not "ip netns exec": the latter remounts /sys, which hides
	// the cgroups from dockerd.
	args = append([]string{"--net=/run/netns/" + e.NetNS, fmt.Sprintf("--mount=/proc/%d/ns/mnt", e.holder.Process.Pid), e.Dockerd}, args...)
	f, err := os.OpenFile(filepath.Join(e.Dir, "dockerd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	e.log = f
	e.cmd = exec.Command("nsenter", args...)
	e.cmd.Stdout, e.cmd.Stderr = f, f
	e.cmd.Env = append(os.Environ(), "PATH="+os.Getenv("PATH"))
	e.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := e.cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", e.Dockerd, err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := e.Docker(10*time.Second, "version", "--format", "{{.Server.Version}}"); err == nil {
			return nil
		}
		if e.cmd.ProcessState != nil {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("dockerd did not answer within 60s; its log:\n%s", e.LogTail(40))
}

// Stop sends SIGTERM and waits for the engine to exit (SIGKILL after 60s).
func (e *Engine) Stop() {
	if e.cmd == nil || e.cmd.Process == nil {
		return
	}
	_ = e.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = e.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		_ = e.cmd.Process.Kill()
		<-done
	}
	e.log.Close()
	e.cmd = nil
}

// Kill stops the engine at once, as a crash would. The containerd it
// started dies with it (20.10 starts it with a parent-death signal); on
// this machine nothing reaps that zombie, and a zombie's pid still answers
// kill(pid, 0), so the next dockerd would wait for a containerd that is
// gone: its pid file goes too, as a reboot would take it.
func (e *Engine) Kill() {
	if e.cmd == nil || e.cmd.Process == nil {
		return
	}
	_ = e.cmd.Process.Kill()
	_ = e.cmd.Wait()
	e.log.Close()
	e.cmd = nil
	pidfile := filepath.Join(e.Dir, "exec", "containerd", "containerd.pid")
	for i := 0; i < 20; i++ {
		raw, err := os.ReadFile(pidfile)
		if err != nil {
			return
		}
		stat, err := os.ReadFile("/proc/" + strings.TrimSpace(string(raw)) + "/stat")
		if f := strings.Fields(string(stat)); err != nil || len(f) > 2 && f[2] == "Z" {
			_ = os.Remove(pidfile)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Remove stops the engine and deletes its directory, unmounting what the
// engine left mounted under it.
func (e *Engine) Remove() {
	e.Stop()
	out, _ := exec.Command("findmnt", "-rn", "-o", "TARGET").Output()
	var mounts []string
	for _, m := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(m, e.Dir+"/") {
			mounts = append(mounts, m)
		}
	}
	for i := len(mounts) - 1; i >= 0; i-- {
		_ = exec.Command("umount", "-l", mounts[i]).Run()
	}
	_ = os.RemoveAll(e.Dir)
	_ = exec.Command("ip", "netns", "del", e.NetNS).Run()
	// Shims (and the plugin under one) outlive a dockerd that was killed.
	_ = exec.Command("pkill", "-9", "-f", e.Dir+"/").Run()
	if e.holder != nil && e.holder.Process != nil {
		_ = e.holder.Process.Kill()
		_ = e.holder.Wait()
	}
}

// Sh runs a command in the engine's network namespace (its "host").
func (e *Engine) Sh(args ...string) (string, error) {
	out, err := exec.Command("nsenter", append([]string{"--net=/run/netns/" + e.NetNS}, args...)...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// Links is the sorted list of the link names in the engine's namespace.
func (e *Engine) Links(t testing.TB) []string {
	t.Helper()
	out, err := e.Sh("ip", "-o", "link")
	if err != nil {
		t.Fatal(out, err)
	}
	var names []string
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 1 {
			names = append(names, strings.SplitN(strings.TrimSuffix(f[1], ":"), "@", 2)[0])
		}
	}
	slices.Sort(names)
	return names
}

// NoNewLinks fails t if the namespace has a link now that was not among
// before (from Links): what it is doing left it behind.
func (e *Engine) NoNewLinks(t testing.TB, before []string, what string) {
	t.Helper()
	var left []string
	for _, l := range e.Links(t) {
		if !slices.Contains(before, l) {
			left = append(left, l)
		}
	}
	if len(left) > 0 {
		t.Errorf("%s left links behind: %v", what, left)
	}
}

// Rules is the engine host's whole firewall as text: iptables-save,
// ip6tables-save and ournet's nftables table (table inet ournet: the
// networks' own rules, "chain net-<id>", each rule commented
// "ournet:<id> ...").
func (e *Engine) Rules() string {
	var b strings.Builder
	for _, tool := range [][]string{{"iptables-save"}, {"ip6tables-save"}, {"nft", "list", "table", "inet", "ournet"}} {
		out, _ := e.Sh(tool...)
		b.WriteString(out + "\n")
	}
	return b.String()
}

// LinkExists reports whether the engine's host has a link of that name.
func (e *Engine) LinkExists(name string) bool {
	_, err := e.Sh("ip", "link", "show", name)
	return err == nil
}

// LogTail returns the last n lines of the engine's log.
func (e *Engine) LogTail(n int) string {
	b, _ := os.ReadFile(filepath.Join(e.Dir, "dockerd.log"))
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Docker runs the docker CLI against this engine. The error includes stderr.
func (e *Engine) Docker(timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "docker", args...)
	cmd.Env = append(os.Environ(), "DOCKER_HOST="+e.Host)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ctx.Err() != nil {
		return out.String(), fmt.Errorf("docker %s: timed out after %s", strings.Join(args, " "), timeout)
	}
	if err != nil {
		return out.String(), fmt.Errorf("docker %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return strings.TrimSpace(out.String()), nil
}

// Run is Docker with a 2 minute bound that fails the test on error.
func (e *Engine) Run(t testing.TB, args ...string) string {
	t.Helper()
	out, err := e.Docker(2*time.Minute, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Fails runs a docker command that must fail and returns its error text.
func (e *Engine) Fails(t testing.TB, args ...string) string {
	t.Helper()
	out, err := e.Docker(2*time.Minute, args...)
	if err == nil {
		t.Fatalf("docker %s succeeded, want an error; output: %s", strings.Join(args, " "), out)
	}
	return err.Error()
}

// Script runs a script of the repo (scripts/NAME) against this engine.
func (e *Engine) Script(name string, args ...string) (string, error) {
	cmd := exec.Command(filepath.Join(repoRoot(), "scripts", name), args...)
	cmd.Env = append(os.Environ(), "DOCKER_HOST="+e.Host)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("scripts/%s: %w: %s", name, err, out)
	}
	return string(out), nil
}

// TestSettings keep every address the plugin picks by itself inside the
// ranges tests may use (198.18.0.0/15 and documentation IPv6).
const TestSettings = "LOG_LEVEL=debug DEFAULT_POOLS=base=198.19.0.0/16,size=24 DEFAULT_POOLS_V6=base=2001:db8:e2e::/48,size=64"

// PluginName is the managed plugin's name (the driver is plain "ournet").
const PluginName = "ournet/ournet"

// InstallPlugin installs build/plugin on this engine with TestSettings.
func (e *Engine) InstallPlugin() error { return e.InstallPluginWith("") }

// InstallPluginWith is InstallPlugin with more settings ("KEY=VALUE ...")
// after TestSettings.
func (e *Engine) InstallPluginWith(settings string) error {
	all := TestSettings
	if settings != "" {
		all += " " + settings
	}
	cmd := exec.Command(filepath.Join(repoRoot(), "scripts", "install-plugin.sh"), pluginDir())
	cmd.Env = append(os.Environ(), "DOCKER_HOST="+e.Host, "OURNET_SETTINGS="+all)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("installing the plugin: %w: %s", err, out)
	}
	return nil
}

// ImportImage imports the busybox test image as name, built offline from
// Debian's busybox-static.
func (e *Engine) ImportImage(name string) error {
	return e.importImage(name, []string{"sh", "ip", "ping", "ping6", "nc", "wget", "httpd", "sleep", "true", "cat", "echo",
		"hostname", "ifconfig", "route", "arping", "ls", "grep", "awk", "seq", "timeout", "udhcpc", "sed", "head", "wc"}, nil)
}

// importImage imports, as name, an image of the host's busybox with
// applets linked to it, after add (if not nil) has put more into its root.
func (e *Engine) importImage(name string, applets []string, add func(root string) error) error {
	dir, err := os.MkdirTemp("", "ournet-img")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	for _, d := range []string{"bin", "tmp", "etc", "var/www", "proc", "sys", "dev"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return err
		}
	}
	_ = os.Chmod(filepath.Join(dir, "tmp"), 0o1777)
	bb, err := exec.LookPath("busybox")
	if err != nil {
		return fmt.Errorf("busybox not found: apt-get install busybox-static")
	}
	raw, err := os.ReadFile(bb)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "bin/busybox"), raw, 0o755); err != nil {
		return err
	}
	for _, applet := range applets {
		if err := os.Symlink("busybox", filepath.Join(dir, "bin", applet)); err != nil {
			return err
		}
	}
	if add != nil {
		if err := add(dir); err != nil {
			return err
		}
	}
	cmd := exec.Command("sh", "-c", "tar -C "+dir+" -c . | docker import -c 'ENV PATH=/bin' - "+name)
	cmd.Env = append(os.Environ(), "DOCKER_HOST="+e.Host)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("importing image %s: %w: %s", name, err, out)
	}
	return nil
}

// repoRoot is the repository's top directory (the e2e package is one below).
func repoRoot() string {
	wd, _ := os.Getwd()
	return filepath.Dir(wd)
}

func pluginDir() string {
	if d := os.Getenv("E2E_PLUGIN_DIR"); d != "" {
		return d
	}
	return filepath.Join(repoRoot(), "build", "plugin")
}
