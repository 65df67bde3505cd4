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
	routedPublish(t, u)
	trustedPublish(t, u)

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

// routedPublish: on a routed family, -p opens the container's port at its
// own address and ignores the host port (no DNAT), as the bridge driver's
// routed mode; the container's other ports stay closed, and the opening
// goes with the container: another one given its address later, publishing
// nothing, is not reached. IPv4 and IPv6.
func routedPublish(t *testing.T, u *Uplink) {
	Net(t, eng, "gw-rpub", "-d", "ournet", "--ipv6", "--subnet", "198.18.62.0/24", "--subnet", "2001:db8:62::/64",
		"-o", "com.docker.network.bridge.gateway_mode_ipv4=routed", "-o", "com.docker.network.bridge.gateway_mode_ipv6=routed")
	u.RouteVia(t, "198.18.62.0/24")
	u.RouteVia(t, "2001:db8:62::/64")
	Container(t, eng, "gw-rpub1", "--network", "gw-rpub", "-p", "18160:8080")
	ip4, ip6 := eng.IP(t, "gw-rpub1", "gw-rpub"), eng.IP6(t, "gw-rpub1", "gw-rpub")
	eng.Serve(t, "gw-rpub1", 8080)
	eng.Serve(t, "gw-rpub1", 8081)
	for _, url := range []string{"http://" + ip4, "http://[" + ip6 + "]"} {
		if out, err := u.Exec("curl", "-sf", "-m", "3", url+":8080/"); err != nil || !strings.Contains(out, "hello from gw-rpub1") {
			t.Errorf("routed: the published port at %s:8080 from the uplink: %q %v", url, out, err)
		}
		if out, err := u.Exec("curl", "-sf", "-m", "3", url+":8081/"); err == nil {
			t.Errorf("routed: the uplink reached %s:8081, which is not published: %q", url, out)
		}
	}
	for _, url := range []string{"http://" + UplinkHostIP, "http://[" + UplinkHostIP6 + "]"} {
		if out, err := u.Exec("curl", "-sf", "-m", "3", url+":18160/"); err == nil {
			t.Errorf("routed: host port 18160 at %s was published (DNATed): %q", url, out)
		}
	}
	eng.Run(t, "rm", "-f", "gw-rpub1")
	Container(t, eng, "gw-rpub2", "--network", "gw-rpub", "--ip", ip4, "--ip6", ip6)
	eng.Serve(t, "gw-rpub2", 8080)
	if out, err := eng.Sh("curl", "-sf", "-m", "3", "http://"+ip4+":8080/"); err != nil || !strings.Contains(out, "hello from gw-rpub2") {
		t.Fatalf("the host cannot reach the second container, so the next check would prove nothing: %v %s", err, out)
	}
	for _, url := range []string{"http://" + ip4, "http://[" + ip6 + "]"} {
		if out, err := u.Exec("curl", "-sf", "-m", "3", url+":8080/"); err == nil {
			t.Errorf("routed: after the publishing container's removal, the uplink reached %s:8080 of one that publishes nothing: %q", url, out)
		}
	}
}

// trusted_host_interfaces (Docker 28): from a listed interface a nat
// network's published port answers at the container's own address too;
// its unpublished port does not, nor does a network that does not list
// the interface, and the opening goes with the container.
func trustedPublish(t *testing.T, u *Uplink) {
	Net(t, eng, "gw-trust", "-d", "ournet", "--ipv6", "--subnet", "198.18.63.0/24", "--subnet", "2001:db8:63::/64",
		"-o", "com.docker.network.bridge.trusted_host_interfaces=lo:"+UplinkHostIf)
	Net(t, eng, "gw-untrust", "-d", "ournet", "--subnet", "198.18.64.0/24")
	for _, p := range []string{"198.18.63.0/24", "2001:db8:63::/64", "198.18.64.0/24"} {
		u.RouteVia(t, p)
	}
	Container(t, eng, "gw-trust1", "--network", "gw-trust", "-p", "18162:8080")
	Container(t, eng, "gw-untrust1", "--network", "gw-untrust", "-p", "18163:8080")
	ip4, ip6 := eng.IP(t, "gw-trust1", "gw-trust"), eng.IP6(t, "gw-trust1", "gw-trust")
	other := eng.IP(t, "gw-untrust1", "gw-untrust")
	eng.Serve(t, "gw-trust1", 8080)
	eng.Serve(t, "gw-trust1", 8081)
	eng.Serve(t, "gw-untrust1", 8080)
	for _, url := range []string{"http://" + ip4, "http://[" + ip6 + "]"} {
		if out, err := u.Exec("curl", "-sf", "-m", "3", url+":8080/"); err != nil || !strings.Contains(out, "hello from gw-trust1") {
			t.Errorf("trusted interface: the published port at %s:8080: %q %v", url, out, err)
		}
		if out, err := u.Exec("curl", "-sf", "-m", "3", url+":8081/"); err == nil {
			t.Errorf("trusted interface: reached %s:8081, which is not published: %q", url, out)
		}
	}
	if out, err := u.Exec("curl", "-sf", "-m", "3", "http://"+UplinkHostIP+":18162/"); err != nil || !strings.Contains(out, "hello from gw-trust1") {
		t.Errorf("trusted interface: host port 18162 is not published as well: %q %v", out, err)
	}
	if out, err := eng.Sh("curl", "-sf", "-m", "3", "http://"+other+":8080/"); err != nil || !strings.Contains(out, "hello from gw-untrust1") {
		t.Fatalf("the host cannot reach gw-untrust1, so the next check would prove nothing: %v %s", err, out)
	}
	if out, err := u.Exec("curl", "-sf", "-m", "3", "http://"+other+":8080/"); err == nil {
		t.Errorf("a network that trusts no interface: the uplink reached its published port at %s:8080: %q", other, out)
	}
	eng.Run(t, "rm", "-f", "gw-trust1")
	Container(t, eng, "gw-trust2", "--network", "gw-trust", "--ip", ip4, "--ip6", ip6)
	eng.Serve(t, "gw-trust2", 8080)
	if out, err := eng.Sh("curl", "-sf", "-m", "3", "http://"+ip4+":8080/"); err != nil || !strings.Contains(out, "hello from gw-trust2") {
		t.Fatalf("the host cannot reach gw-trust2, so the next check would prove nothing: %v %s", err, out)
	}
	for _, url := range []string{"http://" + ip4, "http://[" + ip6 + "]"} {
		if out, err := u.Exec("curl", "-sf", "-m", "3", url+":8080/"); err == nil {
			t.Errorf("trusted interface: after the publishing container's removal, reached %s:8080 of one that publishes nothing: %q", url, out)
		}
	}
}
