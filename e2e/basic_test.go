package e2e

import (
	"strings"
	"testing"
)

// TestTwoContainersTalk is issue #2's contract: an ournet network on a real
// engine, two containers that reach each other by IP and by name through a
// default route via the gateway, and nothing left behind after rm.
func TestTwoContainersTalk(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"default-ipam", []string{"-d", "ournet", "--subnet", "198.18.1.0/24"}},
		{"ournet-ipam", []string{"-d", "ournet", "--ipam-driver", "ournet", "--subnet", "198.18.2.0/24"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nw := "talk-" + tc.name
			id := Net(t, eng, nw, tc.args...)
			bridge := "ournet-" + id[:8]
			if !eng.LinkExists(bridge) {
				t.Fatalf("bridge %s does not exist after network create", bridge)
			}
			a, b := nw+"-a", nw+"-b"
			Container(t, eng, a, "--network", nw)
			Container(t, eng, b, "--network", nw)

			ipB := eng.IP(t, b, nw)
			if err := eng.Ping(a, ipB); err != nil {
				t.Fatal(err)
			}
			if err := eng.Ping(b, eng.IP(t, a, nw)); err != nil {
				t.Fatal(err)
			}
			if err := eng.Ping(a, b); err != nil {
				t.Fatalf("by name: %v", err)
			}
			gw := strings.TrimSuffix(tc.args[len(tc.args)-1], "0/24") + "1"
			route, err := eng.Exec(a, "ip", "route", "show", "default")
			if err != nil || !strings.Contains(route, "via "+gw) {
				t.Fatalf("default route in container = %q (%v), want via %s", route, err, gw)
			}

			epA := eng.Run(t, "inspect", "-f", "{{(index .NetworkSettings.Networks \""+nw+"\").EndpointID}}", a)
			if !eng.LinkExists("ov" + epA[:12]) {
				t.Fatalf("host end ov%s of %s's veth does not exist", epA[:12], a)
			}
			eng.Run(t, "rm", "-f", a, b)
			if eng.LinkExists("ov" + epA[:12]) {
				t.Fatalf("host end ov%s of %s's veth remains after rm", epA[:12], a)
			}
			eng.Run(t, "network", "rm", nw)
			if eng.LinkExists(bridge) {
				t.Fatalf("bridge %s still exists after network rm", bridge)
			}
			if out := eng.Rules(); strings.Contains(out, `"ournet:`+id[:12]) {
				t.Fatalf("rules of the removed network remain:\n%s", out)
			}
		})
	}
}
