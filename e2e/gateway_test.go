package e2e

import (
	"strings"
	"testing"
)

// gateway_mode_ipv4=routed: the outside sees a container by its own address
// (no masquerade), pings it, and still reaches no unpublished port, which
// the host does reach. inhibit_ipv4: the bridge gets no IPv4 address, and the
// network's containers still reach each other.
func TestGatewayModeRoutedAndInhibit(t *testing.T) {
	u := NewUplink(t, eng)
	u.WhoAmI(t)
	Net(t, eng, "gw-routed", "-d", "ournet", "--subnet", "198.18.60.0/24", "-o", "com.docker.network.bridge.gateway_mode_ipv4=routed")
	Container(t, eng, "gw-routed1", "--network", "gw-routed")
	u.RouteVia(t, "198.18.60.0/24")
	ip := eng.IP(t, "gw-routed1", "gw-routed")
	if got, err := eng.SeenAs("gw-routed1", UplinkPeerIP); err != nil || got != ip {
		t.Fatalf("routed: the uplink saw %q (%v), want the container's %s", got, err, ip)
	}
	eng.Serve(t, "gw-routed1", 8080)
	if out, err := eng.Sh("curl", "-sf", "-m", "3", "http://"+ip+":8080/"); err != nil {
		t.Fatalf("the host cannot reach the container's port, so the next check would prove nothing: %v %s", err, out)
	}
	if out, err := u.Exec("curl", "-sf", "-m", "3", "http://"+ip+":8080/"); err == nil {
		t.Errorf("routed: the uplink reached an unpublished port: %q", out)
	}
	// ICMP gets in, as with the bridge driver's routed mode.
	if out, err := u.Exec("busybox", "ping", "-c", "1", "-W", "2", ip); err != nil {
		t.Errorf("routed: the uplink's ping of the container got no answer: %v %s", err, out)
	}

	id := Net(t, eng, "gw-inhibit", "-d", "ournet", "--subnet", "198.18.61.0/24", "-o", "com.docker.network.bridge.inhibit_ipv4=true")
	bridge := "ournet-" + id[:8]
	if out, err := eng.Sh("ip", "-4", "-o", "addr", "show", "dev", bridge); err != nil || strings.TrimSpace(out) != "" {
		t.Fatalf("inhibit_ipv4: bridge %s has IPv4 addresses %q (%v)", bridge, out, err)
	}
	Container(t, eng, "gw-inh1", "--network", "gw-inhibit")
	Container(t, eng, "gw-inh2", "--network", "gw-inhibit")
	if err := eng.Ping("gw-inh1", "gw-inh2"); err != nil {
		t.Fatal(err)
	}
}
