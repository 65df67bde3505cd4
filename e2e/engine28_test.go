package e2e

// What engines 28 and 29 changed in the protocol (../shared/docs and
// docs/architecture.md): IPv6-only networks, the gateway allocation check,
// the gateway modes nat-unprotected and isolated, gateways chosen per
// container, and a firewall without DOCKER-USER. Each test asserts what its
// engine does: where an engine before 28 behaves otherwise, that behaviour
// is asserted instead, so every test runs on every engine.

import (
	"strconv"
	"strings"
	"testing"
	"time"
)

// major is the engine's major version (20, 26, 28, ...).
func (e *Engine) major(t *testing.T) int {
	t.Helper()
	v := e.Run(t, "version", "--format", "{{.Server.Version}}")
	n, err := strconv.Atoi(strings.SplitN(v, ".", 2)[0])
	if err != nil {
		t.Fatalf("engine version %q: %v", v, err)
	}
	return n
}

func (e *Engine) bridgeOf(t *testing.T, network string) string {
	t.Helper()
	return "ournet-" + e.Run(t, "network", "inspect", "-f", "{{.Id}}", network)[:8]
}

// An IPv6-only network (28: --ipv4=false): no IPv4 on the bridge or in the
// containers; IPv6 between containers, from the host, masqueraded to the
// outside and published with -p; ournet's IPAM picks the subnet. Engines
// before 28 refuse the option by name (they would give the network an IPv4
// subnet all the same).
func TestIPv6Only(t *testing.T) {
	if eng.major(t) < 28 {
		msg := eng.Fails(t, "network", "create", "-d", "ournet", "--ipv6", "--subnet", "2001:db8:150::/64",
			"-o", "com.docker.network.enable_ipv4=false", "v6only-old")
		if !strings.Contains(msg, "IPv6-only networks need Docker 28 or later") {
			t.Fatalf("IPv6-only on an engine before 28: %s", msg)
		}
		if out := eng.Run(t, "network", "ls", "-q", "--filter", "name=v6only-old"); out != "" {
			t.Fatalf("the refused network exists: %s", out)
		}
		return
	}
	u := NewUplink(t, eng)
	u.WhoAmI(t)
	Net(t, eng, "v6only", "-d", "ournet", "--ipam-driver", "ournet", "--ipv4=false", "--ipv6", "--subnet", "2001:db8:150::/64")
	Container(t, eng, "v6o-a", "--network", "v6only", "-p", "18150:80")
	Container(t, eng, "v6o-b", "--network", "v6only")
	bridge := eng.bridgeOf(t, "v6only")
	if out, _ := eng.Sh("ip", "-4", "-o", "addr", "show", "dev", bridge); out != "" {
		t.Fatalf("IPv6-only bridge %s has IPv4 addresses: %s", bridge, out)
	}
	if out, err := eng.Exec("v6o-a", "ip", "-4", "-o", "addr", "show", "dev", "eth0"); err != nil || strings.TrimSpace(out) != "" {
		t.Fatalf("IPv6-only container has IPv4 addresses, or ip failed: %v %s", err, out)
	}
	ipA, ipB := containerIP6(t, eng, "v6o-a", "v6only"), containerIP6(t, eng, "v6o-b", "v6only")
	if out, err := eng.Exec("v6o-b", "ping6", "-c", "1", "-W", "2", ipA); err != nil {
		t.Fatalf("ping6 between IPv6-only containers: %v %s", err, out)
	}
	if out, err := eng.Sh("busybox", "ping6", "-c", "1", "-W", "2", ipB); err != nil {
		t.Fatalf("the host cannot ping6 an IPv6-only container: %v %s", err, out)
	}
	if route, _ := eng.Exec("v6o-a", "ip", "-6", "route", "show", "default"); !strings.Contains(route, "via 2001:db8:150::1") {
		t.Fatalf("IPv6 default route = %q", route)
	}
	if got, err := eng.SeenAs("v6o-a", UplinkPeerIP6); err != nil || got != UplinkHostIP6 {
		t.Fatalf("IPv6 masquerade: the uplink saw %q (%v), want %s", got, err, UplinkHostIP6)
	}
	eng.Serve(t, "v6o-a", 80)
	if out, err := u.Exec("curl", "-sf", "-m", "3", "http://["+UplinkHostIP6+"]:18150/"); err != nil || !strings.Contains(out, "hello from v6o-a") {
		t.Fatalf("-p 18150:80 on an IPv6-only network, from the uplink: %q %v", out, err)
	}
	if out, err := u.Exec("curl", "-sf", "-m", "3", "http://"+UplinkHostIP+":18150/"); err == nil {
		t.Fatalf("an IPv6-only container answered on the host's IPv4 address: %q", out)
	}
}

// Gateway mode isolated (internal networks only): the bridge gets no
// gateway address, containers reach each other and nothing else. On 28
// the engine asks first (GwAllocCheck) and reserves no gateway, so a /30
// holds two containers; before 28 the gateway is reserved (unused) and the
// second container finds the pool full.
func TestGatewayModeIsolated(t *testing.T) {
	msg := eng.Fails(t, "network", "create", "-d", "ournet", "--ipam-driver", "ournet", "--subnet", "198.18.151.0/24",
		"-o", "com.docker.network.bridge.gateway_mode_ipv4=isolated", "iso-notinternal")
	if !strings.Contains(msg, "gateway_mode_ipv4=isolated is only for internal networks; add --internal") {
		t.Fatalf("isolated on a network that is not internal: %s", msg)
	}
	if out := eng.Run(t, "network", "ls", "-q", "--filter", "name=iso-notinternal"); out != "" {
		t.Fatalf("the refused network exists: %s", out)
	}
	Net(t, eng, "isolated", "-d", "ournet", "--ipam-driver", "ournet", "--internal", "--ipv6",
		"--subnet", "198.18.151.0/30", "--subnet", "2001:db8:151::/64",
		"-o", "com.docker.network.bridge.gateway_mode_ipv4=isolated", "-o", "com.docker.network.bridge.gateway_mode_ipv6=isolated")
	bridge := eng.bridgeOf(t, "isolated")
	if out, _ := eng.Sh("ip", "-o", "addr", "show", "dev", bridge); out != "" {
		t.Fatalf("isolated: bridge %s has addresses (link-local included): %s", bridge, out)
	}
	Container(t, eng, "isol-a", "--network", "isolated")
	ipA := eng.IP(t, "isol-a", "isolated")
	if out, err := eng.Sh("busybox", "ping", "-c", "1", "-W", "1", ipA); err == nil || !strings.Contains(out, "PING") && !strings.Contains(out, "unreachable") {
		t.Fatalf("isolated: the host reaches a container, or ping did not run: %v %s", err, out)
	}
	if eng.major(t) < 28 {
		msg := eng.Fails(t, "run", "-d", "--name", "isol-b", "--network", "isolated", Image, "sleep", "600")
		_, _ = eng.Docker(time.Minute, "rm", "-f", "isol-b")
		if !strings.Contains(msg, "no free address") {
			t.Fatalf("before 28 the gateway of a /30 is reserved, so a second container must not fit: %s", msg)
		}
		return
	}
	if gw := eng.Run(t, "network", "inspect", "-f", "{{range .IPAM.Config}}{{.Gateway}}{{end}}", "isolated"); gw != "" {
		t.Fatalf("isolated on 28: the engine reserved gateway %q", gw)
	}
	Container(t, eng, "isol-b", "--network", "isolated")
	if err := eng.Ping("isol-b", ipA); err != nil {
		t.Fatal(err)
	}
	if out, err := eng.Exec("isol-b", "ping6", "-c", "1", "-W", "2", containerIP6(t, eng, "isol-a", "isolated")); err != nil {
		t.Fatalf("isolated: IPv6 between containers: %v %s", err, out)
	}
}

// A network that asks for no gateway (gateway mode isolated: on 28 the
// engine asks for no address in its pool at all) keeps its pool through a
// plugin restart before its first container: that container then starts.
func TestGatewaylessNetworkSurvivesRestart(t *testing.T) {
	e := NewEngine(t)
	Net(t, e, "gwless", "-d", "ournet", "--ipam-driver", "ournet", "--internal", "--subnet", "198.18.158.0/29",
		"-o", "com.docker.network.bridge.gateway_mode_ipv4=isolated")
	e.Run(t, "plugin", "disable", PluginName)
	e.Run(t, "plugin", "enable", PluginName)
	Container(t, e, "gwless-a", "--network", "gwless")
	Container(t, e, "gwless-b", "--network", "gwless")
	if err := e.Ping("gwless-a", e.IP(t, "gwless-b", "gwless")); err != nil {
		t.Fatal(err)
	}
}

// Gateway mode nat-unprotected: masquerade as nat, but the outside reaches
// every port of a container by routing to it; other container networks
// (ournet's and the engine's docker0) still do not.
func TestGatewayModeNatUnprotected(t *testing.T) {
	u := NewUplink(t, eng)
	u.WhoAmI(t)
	Net(t, eng, "unprot", "-d", "ournet", "--subnet", "198.18.152.0/24", "-o", "com.docker.network.bridge.gateway_mode_ipv4=nat-unprotected")
	Net(t, eng, "unprot-other", "-d", "ournet", "--subnet", "198.18.153.0/24")
	Container(t, eng, "unp-a", "--network", "unprot")
	Container(t, eng, "unp-other", "--network", "unprot-other")
	Container(t, eng, "unp-def", "--network", "bridge")
	ip := eng.IP(t, "unp-a", "unprot")
	eng.Serve(t, "unp-a", 8080)
	if got, err := eng.SeenAs("unp-a", UplinkPeerIP); err != nil || got != UplinkHostIP {
		t.Fatalf("nat-unprotected masquerades: the uplink saw %q (%v), want %s", got, err, UplinkHostIP)
	}
	u.RouteVia(t, "198.18.152.0/24")
	if out, err := u.Exec("curl", "-sf", "-m", "3", "http://"+ip+":8080/"); err != nil || !strings.Contains(out, "hello from unp-a") {
		t.Fatalf("nat-unprotected: the uplink cannot reach an unpublished port directly: %q %v", out, err)
	}
	for _, from := range []string{"unp-other", "unp-def"} {
		if out, err := eng.Exec(from, "timeout", "2", "wget", "-q", "-O", "-", "http://"+ip+":8080/"); err == nil {
			t.Errorf("nat-unprotected: %s on another network reached the container: %q", from, out)
		}
	}
	// And on a nat network, with the same kind of route, the same port
	// stays closed.
	Net(t, eng, "prot", "-d", "ournet", "--subnet", "198.18.154.0/24")
	Container(t, eng, "prot-a", "--network", "prot")
	eng.Serve(t, "prot-a", 8080)
	u.RouteVia(t, "198.18.154.0/24")
	if out, err := u.Exec("curl", "-sf", "-m", "3", "http://"+eng.IP(t, "prot-a", "prot")+":8080/"); err == nil {
		t.Fatalf("gateway mode nat: the uplink reached an unpublished port directly: %q", out)
	}
}

// A container on two ournet networks: its ports are published, and its
// traffic masqueraded, through the network the engine makes its gateway,
// and follow when the engine moves it (the engine orders gateway
// candidates by name when no gw-priority is given, on every engine).
func TestGatewayFollowsTheEngine(t *testing.T) {
	u := NewUplink(t, eng)
	u.WhoAmI(t)
	Net(t, eng, "mgw-b", "-d", "ournet", "--subnet", "198.18.155.0/24")
	Net(t, eng, "mgw-a", "-d", "ournet", "--subnet", "198.18.156.0/24")
	Container(t, eng, "mgw-c", "--network", "mgw-b", "-p", "18155:80")
	eng.Serve(t, "mgw-c", 80)
	check := func(stage, gwNet, gw string) {
		t.Helper()
		if route, _ := eng.Exec("mgw-c", "ip", "route", "show", "default"); !strings.Contains(route, "via "+gw) {
			t.Fatalf("%s: default route %q, want via %s (%s)", stage, route, gw, gwNet)
		}
		if out, err := u.Exec("curl", "-sf", "-m", "3", "http://"+UplinkHostIP+":18155/"); err != nil || !strings.Contains(out, "hello from mgw-c") {
			t.Fatalf("%s: published port 18155 from the uplink: %q %v", stage, out, err)
		}
		if got, err := eng.SeenAs("mgw-c", UplinkPeerIP); err != nil || got != UplinkHostIP {
			t.Fatalf("%s: outbound seen as %q (%v), want %s", stage, got, err, UplinkHostIP)
		}
		ports, err := eng.ournetStatus("--ports", "--json")
		want := eng.Run(t, "inspect", "-f", "{{(index .NetworkSettings.Networks \""+gwNet+"\").EndpointID}}", "mgw-c")
		if err != nil || strings.Count(ports, `"HostPort": 18155`) == 0 || !strings.Contains(ports, want) {
			t.Fatalf("%s: ournet-status --ports does not show 18155 on %s's endpoint %s: %v\n%s", stage, gwNet, want[:12], err, ports)
		}
		if strings.Count(ports, `"Endpoint"`) != strings.Count(ports, want) {
			t.Fatalf("%s: ports published on an endpoint other than the gateway's (%s):\n%s", stage, want[:12], ports)
		}
	}
	check("on mgw-b alone", "mgw-b", "198.18.155.1")
	eng.Run(t, "network", "connect", "mgw-a", "mgw-c")
	check("mgw-a connected (sorts first)", "mgw-a", "198.18.156.1")
	eng.Run(t, "network", "disconnect", "mgw-a", "mgw-c")
	check("mgw-a disconnected", "mgw-b", "198.18.155.1")
	if eng.major(t) >= 28 {
		// 28's gw-priority outranks the name order: a network that sorts
		// first but has a lower priority does not take the gateway.
		eng.Run(t, "network", "connect", "--gw-priority", "-1", "mgw-a", "mgw-c")
		check("mgw-a connected with gw-priority -1", "mgw-b", "198.18.155.1")
		eng.Run(t, "network", "disconnect", "mgw-a", "mgw-c")
		eng.Run(t, "network", "connect", "--gw-priority", "5", "mgw-a", "mgw-c")
		check("mgw-a connected with gw-priority 5", "mgw-a", "198.18.156.1")
	}
}

// Engine 29's nftables firewall backend leaves no DOCKER-USER chain and
// does not touch FORWARD's policy. An engine run with --iptables=false is
// the same for ournet: it must work with no DOCKER-USER under either
// policy, and keep containers unreachable by direct routing.
func TestNoDockerUserChain(t *testing.T) {
	e := NewEngine(t, "--iptables=false")
	if out, err := e.Sh("iptables", "-S", "DOCKER-USER"); err == nil {
		t.Fatalf("the engine made DOCKER-USER, so this test proves nothing: %s", out)
	}
	u := NewUplink(t, e)
	u.WhoAmI(t)
	Net(t, e, "nouser", "-d", "ournet", "--subnet", "198.18.157.0/24")
	Container(t, e, "nu-a", "--network", "nouser", "-p", "18157:80")
	Container(t, e, "nu-b", "--network", "nouser")
	e.Serve(t, "nu-a", 80)
	e.Serve(t, "nu-a", 8080)
	u.RouteVia(t, "198.18.157.0/24")
	ip := e.IP(t, "nu-a", "nouser")
	for _, policy := range []string{"DROP", "ACCEPT"} {
		if out, err := e.Sh("iptables", "-P", "FORWARD", policy); err != nil {
			t.Fatalf("%v %s", err, out)
		}
		if err := e.Ping("nu-b", "nu-a"); err != nil {
			t.Fatalf("FORWARD %s: %v", policy, err)
		}
		if got, err := e.SeenAs("nu-a", UplinkPeerIP); err != nil || got != UplinkHostIP {
			t.Fatalf("FORWARD %s: outbound seen as %q (%v), want %s", policy, got, err, UplinkHostIP)
		}
		if out, err := u.Exec("curl", "-sf", "-m", "3", "http://"+UplinkHostIP+":18157/"); err != nil || !strings.Contains(out, "hello from nu-a") {
			t.Fatalf("FORWARD %s: published port from the uplink: %q %v", policy, out, err)
		}
		if out, err := u.Exec("curl", "-sf", "-m", "3", "http://"+ip+":8080/"); err == nil {
			t.Fatalf("FORWARD %s: the uplink reached an unpublished port directly: %q", policy, out)
		}
	}
}
