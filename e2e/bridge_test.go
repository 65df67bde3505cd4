package e2e

// Issue #4: the bridge driver's options and protections, each proven with
// real packets on the real engine.

import (
	"strings"
	"testing"
)

func TestICCOff(t *testing.T) {
	Net(t, eng, "icc-off", "-d", "ournet", "--subnet", "198.18.10.0/24", "-o", "com.docker.network.bridge.enable_icc=false")
	Container(t, eng, "icc-a", "--network", "icc-off")
	Container(t, eng, "icc-b", "--network", "icc-off")
	if err := eng.Ping("icc-a", eng.IP(t, "icc-b", "icc-off")); err == nil {
		t.Fatal("icc=false: icc-a reached icc-b")
	}
	// The gateway (the host) stays reachable: icc is about container pairs.
	if err := eng.Ping("icc-a", "198.18.10.1"); err != nil {
		t.Fatal(err)
	}
	// The same holds when br_netfilter does not pass bridged traffic to
	// iptables: port isolation enforces it at layer 2.
	if _, err := eng.Sh("sysctl", "-w", "net.bridge.bridge-nf-call-iptables=0"); err != nil {
		t.Fatal(err)
	}
	defer eng.Sh("sysctl", "-w", "net.bridge.bridge-nf-call-iptables=1")
	if err := eng.Ping("icc-a", eng.IP(t, "icc-b", "icc-off")); err == nil {
		t.Fatal("icc=false without br_netfilter: icc-a reached icc-b")
	}
}

func TestICCOnWithoutBrNetfilter(t *testing.T) {
	Net(t, eng, "icc-on", "-d", "ournet", "--subnet", "198.18.11.0/24")
	Container(t, eng, "iccon-a", "--network", "icc-on")
	Container(t, eng, "iccon-b", "--network", "icc-on")
	if _, err := eng.Sh("sysctl", "-w", "net.bridge.bridge-nf-call-iptables=0"); err != nil {
		t.Fatal(err)
	}
	defer eng.Sh("sysctl", "-w", "net.bridge.bridge-nf-call-iptables=1")
	if err := eng.Ping("iccon-a", eng.IP(t, "iccon-b", "icc-on")); err != nil {
		t.Fatal(err)
	}
}

// No traffic between two ournet networks, nor between ournet and the
// engine's own bridges (docker0 and a user-defined -d bridge network), in
// either direction.
func TestIsolation(t *testing.T) {
	Net(t, eng, "iso-a", "-d", "ournet", "--subnet", "198.18.12.0/24")
	Net(t, eng, "iso-b", "-d", "ournet", "--ipam-driver", "ournet", "--subnet", "198.18.13.0/24")
	Net(t, eng, "iso-docker", "-d", "bridge", "--subnet", "198.18.14.0/24")
	Container(t, eng, "iso-a1", "--network", "iso-a")
	Container(t, eng, "iso-b1", "--network", "iso-b")
	Container(t, eng, "iso-d1", "--network", "iso-docker")
	Container(t, eng, "iso-def", "--network", "bridge") // docker0
	for _, c := range []string{"iso-a1", "iso-b1", "iso-d1", "iso-def"} {
		eng.Serve(t, c, 8080)
	}
	ips := map[string]string{
		"iso-a1": eng.IP(t, "iso-a1", "iso-a"), "iso-b1": eng.IP(t, "iso-b1", "iso-b"),
		"iso-d1": eng.IP(t, "iso-d1", "iso-docker"), "iso-def": eng.IP(t, "iso-def", "bridge"),
	}
	for _, pair := range [][2]string{
		{"iso-a1", "iso-b1"}, {"iso-b1", "iso-a1"},
		{"iso-a1", "iso-d1"}, {"iso-d1", "iso-a1"},
		{"iso-a1", "iso-def"}, {"iso-def", "iso-a1"},
	} {
		// Short timeouts: these are expected to fail, and a dropped SYN
		// never answers.
		if out, err := eng.Exec(pair[0], "timeout", "2", "wget", "-q", "-O", "-", "http://"+ips[pair[1]]+":8080/"); err == nil {
			t.Errorf("%s reached %s: %q", pair[0], pair[1], out)
		}
		if _, err := eng.Exec(pair[0], "ping", "-c", "1", "-W", "1", ips[pair[1]]); err == nil {
			t.Errorf("%s pinged %s", pair[0], pair[1])
		}
	}
	// Same-network traffic still works on both sides of the wall.
	if err := eng.Ping("iso-a1", "198.18.12.1"); err != nil {
		t.Fatal(err)
	}
}

func TestMasquerade(t *testing.T) {
	u := NewUplink(t, eng)
	u.WhoAmI(t)
	Net(t, eng, "masq-on", "-d", "ournet", "--subnet", "198.18.15.0/24")
	Net(t, eng, "masq-off", "-d", "ournet", "--subnet", "198.18.16.0/24", "-o", "com.docker.network.bridge.enable_ip_masquerade=false")
	Container(t, eng, "masq-on1", "--network", "masq-on")
	Container(t, eng, "masq-off1", "--network", "masq-off")

	if got, err := eng.SeenAs("masq-on1", UplinkPeerIP); err != nil || got != UplinkHostIP {
		t.Fatalf("masquerade on: uplink saw %q (%v), want the host's %s", got, err, UplinkHostIP)
	}
	// Routed: the outside sees the container's own address (and needs a
	// route back to the subnet).
	u.RouteVia(t, "198.18.16.0/24")
	want := eng.IP(t, "masq-off1", "masq-off")
	if got, err := eng.SeenAs("masq-off1", UplinkPeerIP); err != nil || got != want {
		t.Fatalf("masquerade off: uplink saw %q (%v), want the container's %s", got, err, want)
	}
}

func TestInternal(t *testing.T) {
	u := NewUplink(t, eng)
	u.WhoAmI(t)
	Net(t, eng, "internal", "-d", "ournet", "--internal", "--subnet", "198.18.17.0/24")
	Container(t, eng, "int-a", "--network", "internal")
	Container(t, eng, "int-b", "--network", "internal")
	eng.Serve(t, "int-b", 8080)
	ipB := eng.IP(t, "int-b", "internal")
	if out, err := eng.Fetch("int-a", "http://"+ipB+":8080/"); err != nil || !strings.Contains(out, "hello from int-b") {
		t.Fatalf("internal: containers cannot talk: %q %v", out, err)
	}
	if got, err := eng.SeenAs("int-a", UplinkPeerIP); err == nil {
		t.Fatalf("internal: container reached the uplink (seen as %s)", got)
	}
	u.RouteVia(t, "198.18.17.0/24")
	if out, err := u.Exec("curl", "-sf", "-m", "3", "http://"+ipB+":8080/"); err == nil {
		t.Fatalf("internal: the uplink reached a container: %q", out)
	}
	if route, err := eng.Exec("int-a", "ip", "route"); err != nil || strings.Contains(route, "default") {
		t.Fatalf("internal: container has a default route, or ip route failed: %v %s", err, route)
	}
}

// A neighbour that routes a container subnet via this host reaches no
// unpublished port, even with FORWARD's policy set to ACCEPT (Docker only
// closed this in 28.x).
func TestNoDirectRouting(t *testing.T) {
	u := NewUplink(t, eng)
	Net(t, eng, "direct", "-d", "ournet", "--subnet", "198.18.18.0/24")
	Container(t, eng, "direct-a", "--network", "direct")
	eng.Serve(t, "direct-a", 8080)
	ip := eng.IP(t, "direct-a", "direct")
	u.RouteVia(t, "198.18.18.0/24")
	for _, policy := range []string{"DROP", "ACCEPT"} {
		if _, err := eng.Sh("iptables", "-P", "FORWARD", policy); err != nil {
			t.Fatal(err)
		}
		if out, err := u.Exec("curl", "-sf", "-m", "3", "http://"+ip+":8080/"); err == nil {
			t.Errorf("FORWARD policy %s: the uplink reached an unpublished port: %q", policy, out)
		}
	}
	if _, err := eng.Sh("iptables", "-P", "FORWARD", "DROP"); err != nil {
		t.Fatal(err)
	}
	// The same container still reaches the outside (replies come back in).
	u.WhoAmI(t)
	if _, err := eng.SeenAs("direct-a", UplinkPeerIP); err != nil {
		t.Fatal(err)
	}
}

// The user's rules in DOCKER-USER apply to ournet's traffic too.
func TestDockerUserApplies(t *testing.T) {
	u := NewUplink(t, eng)
	u.WhoAmI(t)
	Net(t, eng, "user", "-d", "ournet", "--subnet", "198.18.19.0/24")
	Container(t, eng, "user-a", "--network", "user")
	ip := eng.IP(t, "user-a", "user")
	if _, err := eng.SeenAs("user-a", UplinkPeerIP); err != nil {
		t.Fatal(err)
	}
	rule := []string{"DOCKER-USER", "-s", ip, "-d", UplinkPeerIP, "-j", "DROP"}
	if out, err := eng.Sh(append([]string{"iptables", "-I"}, rule...)...); err != nil {
		t.Fatal(out, err)
	}
	defer eng.Sh(append([]string{"iptables", "-D"}, rule...)...)
	if got, err := eng.SeenAs("user-a", UplinkPeerIP); err == nil {
		t.Fatalf("a DOCKER-USER drop rule did not apply to ournet traffic (seen as %s)", got)
	}
}

func TestOptionsReachTheKernel(t *testing.T) {
	Net(t, eng, "opts", "-d", "ournet", "--subnet", "198.18.20.0/24",
		"-o", "com.docker.network.driver.mtu=1400",
		"-o", "com.docker.network.bridge.name=ourbr-opts",
		"-o", "com.docker.network.container_iface_prefix=net")
	Container(t, eng, "opts-a", "--network", "opts")
	link, err := eng.Exec("opts-a", "ip", "link", "show", "net0")
	if err != nil || !strings.Contains(link, "mtu 1400") {
		t.Fatalf("container interface net0 with mtu 1400: %q %v", link, err)
	}
	br, err := eng.Sh("ip", "link", "show", "ourbr-opts")
	if err != nil || !strings.Contains(br, "mtu 1400") {
		t.Fatalf("bridge ourbr-opts with mtu 1400: %q %v", br, err)
	}
	ep := eng.Run(t, "inspect", "-f", "{{(index .NetworkSettings.Networks \"opts\").EndpointID}}", "opts-a")
	if host, err := eng.Sh("ip", "link", "show", "ov"+ep[:12]); err != nil || !strings.Contains(host, "mtu 1400") {
		t.Fatalf("host end of the veth with mtu 1400: %q %v", host, err)
	}
}

// Bad input is refused with a message that says what was wrong, and leaves
// no bridge behind.
func TestBadOptionsRefused(t *testing.T) {
	before := eng.Links(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-o", "com.docker.network.bridge.enable_icx=false"}, `unknown option "com.docker.network.bridge.enable_icx"`},
		{[]string{"-o", "com.docker.network.bridge.enable_icc=perhaps"}, "is not a boolean"},
		{[]string{"-o", "com.docker.network.driver.mtu=20"}, "MTU from 68 to 65535"},
		{[]string{"-o", "com.docker.network.bridge.name=a-bridge-name-too-long"}, "Linux allows at most 15"},
		{[]string{"-o", "com.docker.network.bridge.name=lo"}, "already exists"},
	} {
		args := append([]string{"network", "create", "-d", "ournet", "--subnet", "198.18.21.0/24"}, tc.args...)
		msg := eng.Fails(t, append(args, "bad-opts")...)
		if !strings.Contains(msg, tc.want) {
			t.Errorf("%v: error %q does not say %q", tc.args, msg, tc.want)
		}
	}
	eng.NoNewLinks(t, before, "the refused networks")
	if out, _ := eng.Sh("iptables-save"); strings.Contains(out, "198.18.21.0") {
		t.Fatalf("refused networks left rules behind:\n%s", out)
	}
}

func TestIPv6DualStack(t *testing.T) {
	u := NewUplink(t, eng)
	u.WhoAmI(t)
	Net(t, eng, "v6", "-d", "ournet", "--ipv6", "--subnet", "198.18.22.0/24", "--subnet", "2001:db8:22::/64")
	Container(t, eng, "v6-a", "--network", "v6")
	Container(t, eng, "v6-b", "--network", "v6")
	ipB := eng.IP6(t, "v6-b", "v6")
	if !strings.HasPrefix(ipB, "2001:db8:22::") {
		t.Fatalf("v6-b's IPv6 address = %q", ipB)
	}
	if out, err := eng.Exec("v6-a", "ping6", "-c", "1", "-W", "2", ipB); err != nil {
		t.Fatalf("ping6 between containers: %v %s", err, out)
	}
	if route, _ := eng.Exec("v6-a", "ip", "-6", "route", "show", "default"); !strings.Contains(route, "via 2001:db8:22::1") {
		t.Fatalf("IPv6 default route = %q", route)
	}
	if got, err := eng.SeenAs("v6-a", UplinkPeerIP6); err != nil || got != UplinkHostIP6 {
		t.Fatalf("IPv6 masquerade: uplink saw %q (%v), want %s", got, err, UplinkHostIP6)
	}
	bridge := "ournet-" + eng.Run(t, "network", "inspect", "-f", "{{.Id}}", "v6")[:8]
	if ra, err := eng.Sh("cat", "/proc/sys/net/ipv6/conf/"+bridge+"/accept_ra"); err != nil || ra != "0" {
		t.Fatalf("accept_ra on %s = %q %v, want 0", bridge, ra, err)
	}
	// icc=false holds for IPv6 too.
	Net(t, eng, "v6-icc", "-d", "ournet", "--ipv6", "--subnet", "198.18.23.0/24", "--subnet", "2001:db8:23::/64",
		"-o", "com.docker.network.bridge.enable_icc=false")
	Container(t, eng, "v6icc-a", "--network", "v6-icc")
	Container(t, eng, "v6icc-b", "--network", "v6-icc")
	ipIB := eng.IP6(t, "v6icc-b", "v6-icc")
	if _, err := eng.Exec("v6icc-a", "ping6", "-c", "1", "-W", "2", ipIB); err == nil {
		t.Fatal("icc=false: IPv6 ping between containers passed")
	}
}
