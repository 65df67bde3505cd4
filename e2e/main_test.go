// Package e2e is ournet's end-to-end suite: it drives a real, private Docker
// engine with the plugin installed, and checks behaviour with real packets.
// It never skips: a missing prerequisite fails the run.
package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Image is the offline busybox test image.
const Image = "ournet-test:busybox"

// eng is the engine every test shares unless it needs one of its own.
var eng *Engine

// engineVersion is the shared engine's version: kept logs carry it in their
// name, since the suite runs on several engines at once (make e2e).
var engineVersion string

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "e2e: must run as root (it starts dockerd and creates network namespaces)")
		return 1
	}
	for _, bin := range []string{"dockerd", "docker", "busybox", "iptables", "ip", "nsenter", "unshare"} {
		if _, err := exec.LookPath(bin); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: %s not found: run 'make deps'\n", bin)
			return 1
		}
	}
	if _, err := os.Stat(pluginDir() + "/config.json"); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: no plugin at %s: run 'make plugin'\n", pluginDir())
		return 1
	}
	dir, err := os.MkdirTemp("/tmp", "ournet-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	start := time.Now()
	eng, err = StartEngine(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		if eng != nil {
			eng.Remove()
		}
		return 1
	}
	defer eng.Remove()
	ver, _ := eng.Docker(10*time.Second, "version", "--format", "{{.Server.Version}}")
	engineVersion = strings.TrimSpace(ver)
	if err := eng.ImportImage(Image); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	if err := eng.InstallPlugin(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		fmt.Fprintln(os.Stderr, eng.LogTail(30))
		return 1
	}
	fmt.Printf("e2e: engine %s ready with plugin in %s\n", ver, time.Since(start).Round(time.Millisecond))
	code := m.Run()
	if code != 0 {
		fmt.Println("e2e: last lines of dockerd's log:\n" + eng.LogTail(60))
	}
	return code
}

// NewEngine starts an engine of the test's own, with the test image and the
// plugin, removed when the test ends: for tests that restart or break it.
func NewEngine(t *testing.T, extra ...string) *Engine {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "ournet-e2e-")
	if err != nil {
		t.Fatal(err)
	}
	e, err := StartEngine(dir, extra...)
	if e != nil {
		t.Cleanup(e.Remove)
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := e.ImportImage(Image); err != nil {
		t.Fatal(err)
	}
	if err := e.InstallPlugin(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Log("last lines of this engine's log:\n" + e.LogTail(80))
			// The whole log, kept past the engine's removal.
			keep := filepath.Join(os.TempDir(), "ournet-e2e-"+engineVersion+"-"+t.Name()+".log")
			if raw, err := os.ReadFile(filepath.Join(e.Dir, "dockerd.log")); err == nil && os.WriteFile(keep, raw, 0o644) == nil {
				t.Logf("the engine's whole log: %s", keep)
			}
			if len(e.failures) > 0 {
				t.Log("what failed, again:\n\t" + strings.Join(e.failures, "\n\t"))
			}
		}
	})
	return e
}

// Net creates a network and removes it when the test ends.
func Net(t *testing.T, e *Engine, name string, args ...string) string {
	t.Helper()
	id := e.Run(t, append(append([]string{"network", "create"}, args...), name)...)
	t.Cleanup(func() { _, _ = e.Docker(time.Minute, "network", "rm", name) })
	return id
}

// Container starts a detached busybox container that sleeps, removed when the
// test ends. args go before the image (e.g. --network, --ip).
func Container(t *testing.T, e *Engine, name string, args ...string) {
	t.Helper()
	e.Run(t, append(append([]string{"run", "-d", "--name", name}, args...), Image, "sleep", "600")...)
	t.Cleanup(func() { _, _ = e.Docker(time.Minute, "rm", "-f", name) })
}

// Exec runs a command in a container and returns its output and error.
func (e *Engine) Exec(container string, cmd ...string) (string, error) {
	return e.Docker(time.Minute, append([]string{"exec", container}, cmd...)...)
}

// IP is a container's IPv4 address on a network.
func (e *Engine) IP(t testing.TB, container, network string) string {
	t.Helper()
	return e.netAddr(t, container, network, "IPAddress")
}

// IP6 is a container's global IPv6 address on a network.
func (e *Engine) IP6(t testing.TB, container, network string) string {
	t.Helper()
	return e.netAddr(t, container, network, "GlobalIPv6Address")
}

func (e *Engine) netAddr(t testing.TB, container, network, field string) string {
	t.Helper()
	ip := e.Run(t, "inspect", "-f", "{{(index .NetworkSettings.Networks \""+network+"\")."+field+"}}", container)
	if ip == "" {
		t.Fatalf("container %s has no %s on %s", container, field, network)
	}
	return ip
}

// Ping checks that from reaches addr (one echo, 2 s).
func (e *Engine) Ping(from, addr string) error {
	out, err := e.Exec(from, "ping", "-c", "1", "-W", "2", addr)
	if err != nil {
		return fmt.Errorf("%s cannot ping %s: %v %s", from, addr, err, out)
	}
	return nil
}
