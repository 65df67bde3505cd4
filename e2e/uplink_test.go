package e2e

// The uplink: a network namespace that plays the outside world, joined to the
// engine's host namespace by a veth on 198.51.100.0/24 (TEST-NET-2) and
// 2001:db8:51::/64. Tests send traffic only to it and to containers on this
// machine.

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"
)

const (
	UplinkHostIP  = "198.51.100.1" // the engine host's side
	UplinkPeerIP  = "198.51.100.2" // the outside host
	UplinkHostIP6 = "2001:db8:51::1"
	UplinkPeerIP6 = "2001:db8:51::2"
	UplinkHostIf  = "uplink0" // in the engine's namespace
)

// Uplink is the outside host of one engine.
type Uplink struct {
	NS  string
	eng *Engine
}

// NewUplink creates the uplink namespace and veth (replacing leftovers) and
// removes them when the test ends.
func NewUplink(t testing.TB, e *Engine) *Uplink {
	t.Helper()
	u := &Uplink{NS: e.NetNS + "-up", eng: e}
	u.Remove()
	steps := [][]string{
		{"ip", "netns", "add", u.NS},
		{"ip", "-n", e.NetNS, "link", "add", UplinkHostIf, "type", "veth", "peer", "name", "eth0", "netns", u.NS},
		{"ip", "-n", e.NetNS, "addr", "add", UplinkHostIP + "/24", "dev", UplinkHostIf},
		{"ip", "-n", e.NetNS, "addr", "add", UplinkHostIP6 + "/64", "dev", UplinkHostIf, "nodad"},
		{"ip", "-n", e.NetNS, "link", "set", UplinkHostIf, "up"},
		{"ip", "-n", u.NS, "addr", "add", UplinkPeerIP + "/24", "dev", "eth0"},
		{"ip", "-n", u.NS, "addr", "add", UplinkPeerIP6 + "/64", "dev", "eth0", "nodad"},
		{"ip", "-n", u.NS, "link", "set", "eth0", "up"},
		{"ip", "-n", u.NS, "link", "set", "lo", "up"},
	}
	for _, s := range steps {
		if out, err := exec.Command(s[0], s[1:]...).CombinedOutput(); err != nil {
			u.Remove()
			t.Fatalf("%s: %v: %s", strings.Join(s, " "), err, out)
		}
	}
	t.Cleanup(u.Remove)
	return u
}

// Remove deletes the namespace and the host's veth end.
func (u *Uplink) Remove() {
	_ = exec.Command("ip", "-n", u.eng.NetNS, "link", "del", UplinkHostIf).Run()
	_ = exec.Command("ip", "netns", "del", u.NS).Run()
}

// Exec runs a command inside the uplink namespace.
func (u *Uplink) Exec(args ...string) (string, error) {
	out, err := exec.Command("ip", append([]string{"netns", "exec", u.NS}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("uplink: %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// RouteVia makes the uplink route prefix through the engine's host, as a LAN
// neighbour that knows the container subnets would.
func (u *Uplink) RouteVia(t testing.TB, prefix string) {
	t.Helper()
	via := UplinkHostIP
	if strings.Contains(prefix, ":") {
		via = UplinkHostIP6
	}
	if out, err := u.Exec("ip", "route", "replace", prefix, "via", via); err != nil {
		t.Fatalf("uplink route %s: %v: %s", prefix, err, out)
	}
}
