package e2e

// The uplink: a network namespace that plays the outside world, joined to the
// host by a veth on 198.51.100.0/24 (TEST-NET-2). Tests send traffic only to
// it and to containers on this machine.

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"
)

const (
	UplinkNS     = "ournet-uplink"
	UplinkHostIP = "198.51.100.1" // the host's side
	UplinkPeerIP = "198.51.100.2" // the outside host
	uplinkHostIf = "ournet-up0"
)

// Uplink is the outside host.
type Uplink struct{}

// NewUplink creates the uplink namespace and veth (replacing leftovers).
func NewUplink() (*Uplink, error) {
	u := &Uplink{}
	u.Remove()
	steps := [][]string{
		{"ip", "netns", "add", UplinkNS},
		{"ip", "link", "add", uplinkHostIf, "type", "veth", "peer", "name", "eth0", "netns", UplinkNS},
		{"ip", "addr", "add", UplinkHostIP + "/24", "dev", uplinkHostIf},
		{"ip", "link", "set", uplinkHostIf, "up"},
		{"ip", "-n", UplinkNS, "addr", "add", UplinkPeerIP + "/24", "dev", "eth0"},
		{"ip", "-n", UplinkNS, "link", "set", "eth0", "up"},
		{"ip", "-n", UplinkNS, "link", "set", "lo", "up"},
	}
	for _, s := range steps {
		if out, err := exec.Command(s[0], s[1:]...).CombinedOutput(); err != nil {
			u.Remove()
			return nil, fmt.Errorf("%s: %w: %s", strings.Join(s, " "), err, out)
		}
	}
	return u, nil
}

// Remove deletes the namespace and the host's veth end.
func (u *Uplink) Remove() {
	_ = exec.Command("ip", "link", "del", uplinkHostIf).Run()
	_ = exec.Command("ip", "netns", "del", UplinkNS).Run()
}

// Exec runs a command inside the uplink namespace.
func (u *Uplink) Exec(args ...string) (string, error) {
	out, err := exec.Command("ip", append([]string{"netns", "exec", UplinkNS}, args...)...).CombinedOutput()
	return string(out), err
}

// RouteVia makes the uplink route prefix through the host, as a LAN
// neighbour that knows the container subnets would.
func (u *Uplink) RouteVia(t testing.TB, prefix string) {
	t.Helper()
	if out, err := u.Exec("ip", "route", "replace", prefix, "via", UplinkHostIP); err != nil {
		t.Fatalf("uplink route %s: %v: %s", prefix, err, out)
	}
}
