package driver

import (
	"strings"
	"testing"

	"github.com/docker/go-plugins-helpers/network"
)

func generic(kv ...string) map[string]any {
	g := map[string]any{}
	for i := 0; i+1 < len(kv); i += 2 {
		g[kv[i]] = kv[i+1]
	}
	return map[string]any{optGeneric: g, optEnableIPv6: false}
}

func TestParseOptionsDefaults(t *testing.T) {
	o, err := ParseOptions("0123456789abcdef", generic())
	if err != nil {
		t.Fatal(err)
	}
	if o.BridgeName != "ournet-01234567" || !o.ICC || !o.Masquerade || o.Internal || o.MTU != 0 || o.IfacePrefix != "eth" || o.AntiSpoofingOff {
		t.Fatalf("defaults = %+v", o)
	}
}

func TestParseOptions(t *testing.T) {
	for _, tc := range []struct {
		opts    map[string]any
		check   func(NetworkOptions) bool
		wantErr string
	}{
		{generic(optICC, "false"), func(o NetworkOptions) bool { return !o.ICC }, ""},
		{generic(optAntiSpoofing, "false"), func(o NetworkOptions) bool { return o.AntiSpoofingOff }, ""},
		{generic(optAntiSpoofing, "true"), func(o NetworkOptions) bool { return !o.AntiSpoofingOff }, ""},
		{generic(optAntiSpoofing, "no"), nil, `ournet.anti_spoofing="no" is not a boolean`},
		{generic(optMasquerade, "false"), func(o NetworkOptions) bool { return !o.Masquerade }, ""},
		{generic(optMTU, "1400"), func(o NetworkOptions) bool { return o.MTU == 1400 }, ""},
		{generic(optBridgeName, "mybr0"), func(o NetworkOptions) bool { return o.BridgeName == "mybr0" }, ""},
		{generic(optHostBindingV4, "127.0.0.1"), func(o NetworkOptions) bool { return o.HostBindingV4.String() == "127.0.0.1" }, ""},
		{generic(optIfacePrefix, "net"), func(o NetworkOptions) bool { return o.IfacePrefix == "net" }, ""},
		{map[string]any{optInternal: true, optEnableIPv6: true}, func(o NetworkOptions) bool { return o.Internal && o.EnableIPv6 }, ""},
		{generic("com.example.label", "anything"), func(o NetworkOptions) bool { return o.ICC }, ""},
		{generic(optICC, "maybe"), nil, `enable_icc="maybe" is not a boolean`},
		{generic(optMTU, "9"), nil, "MTU from 68 to 65535"},
		{generic(optMTU, "abc"), nil, "MTU from 68"},
		{generic(optBridgeName, "a-bridge-name-too-long"), nil, "at most 15"},
		{generic(optHostBindingV4, "::1"), nil, "not an IPv4 address"},
		{generic(optGwModeV4, "bogus"), nil, "use nat, nat-unprotected, routed or isolated"},
		// Docker 28's trusted_host_interfaces: names joined by ':'.
		{generic(optTrusted, "vxlan0::eth1:eth1"), func(o NetworkOptions) bool { return strings.Join(o.TrustedIfaces, ",") == "eth1,vxlan0" }, ""},
		{generic(optTrusted, ""), func(o NetworkOptions) bool { return o.TrustedIfaces == nil }, ""},
		{generic(optTrusted, "eth1:an-interface-too-long"), nil, "at most 15"},
		{generic(optTrusted, "eth 1"), nil, "give interface names joined by ':'"},
		{generic(optGwModeV4, "nat-unprotected"), func(o NetworkOptions) bool { return o.GwModeV4 == gwUnprotected }, ""},
		{generic(optGwModeV6, "isolated"), nil, "gateway_mode_ipv6=isolated is only for internal networks; add --internal"},
		{map[string]any{optInternal: true, optGeneric: map[string]any{optGwModeV4: "isolated"}},
			func(o NetworkOptions) bool { return o.GwModeV4 == gwIsolated && o.noGatewayV4() && !o.noGatewayV6() }, ""},
		{map[string]any{optInternal: true, optGeneric: map[string]any{optInhibitIPv4: "true"}}, func(o NetworkOptions) bool { return o.noGatewayV4() }, ""},
		{generic(optInhibitIPv4, "true"), func(o NetworkOptions) bool { return !o.noGatewayV4() }, ""},
		// Engine 28's --ipv4=false: a JSON bool at the top, or -o as a string.
		{map[string]any{optEnableIPv4: false, optEnableIPv6: true}, func(o NetworkOptions) bool { return o.IPv4Off && o.EnableIPv6 }, ""},
		{map[string]any{optEnableIPv4: true, optEnableIPv6: false}, func(o NetworkOptions) bool { return !o.IPv4Off }, ""},
		{map[string]any{optEnableIPv6: true, optGeneric: map[string]any{optEnableIPv4: "false"}}, func(o NetworkOptions) bool { return o.IPv4Off }, ""},
		{map[string]any{optEnableIPv4: false, optEnableIPv6: false}, nil, "IPv4 disabled needs IPv6: add --ipv6"},
		{generic("com.docker.network.bridge.enable_icx", "true"), nil, `unknown option "com.docker.network.bridge.enable_icx"`},
		{generic("ournet.nonsense", "1"), nil, `unknown option "ournet.nonsense"`},
		{generic(optDefaultBridge, "true"), nil, "Docker's own default bridge"},
		{generic(optHostIPv4, "198.51.100.7"), nil, "option com.docker.network.host_ipv4 (a fixed source address for the network's outgoing traffic) is not supported"},
		{generic(optHostIPv6, "2001:db8::7"), nil, "add an SNAT rule for the subnet to iptables' nat POSTROUTING chain"},
	} {
		o, err := ParseOptions("0123456789abcdef", tc.opts)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%v: err = %v, want %q", tc.opts, err, tc.wantErr)
			}
			continue
		}
		if err != nil || !tc.check(o) {
			t.Errorf("%v: %+v, %v", tc.opts, o, err)
		}
	}
}

// Engine 28's --ipv4=false: no IPv4 subnet, no IPv4 gateway in Join, the
// IPv6 one given (without it the engine would attach docker_gwbridge).
func TestIPv6OnlyNetwork(t *testing.T) {
	d, l, fw, _ := newTestDriver(t)
	req := &network.CreateNetworkRequest{NetworkID: nid,
		Options:  map[string]any{optEnableIPv4: false, optEnableIPv6: true, optGeneric: map[string]any{}},
		IPv4Data: []*network.IPAMData{},
		IPv6Data: []*network.IPAMData{{Pool: "2001:db8:9::/64", Gateway: "2001:db8:9::1/64"}}}
	if err := d.CreateNetwork(req); err != nil {
		t.Fatal(err)
	}
	br := l.bridges["ournet-aaaaaaaa"]
	if len(br.Addrs) != 1 || br.Addrs[0].String() != "2001:db8:9::1/64" {
		t.Fatalf("bridge addresses %v, want only the IPv6 gateway", br.Addrs)
	}
	if s := fw.nets[nid].Subnets; len(s) != 1 || !s[0].Addr().Is6() {
		t.Fatalf("firewall subnets %v", s)
	}
	res, err := d.CreateEndpoint(&network.CreateEndpointRequest{NetworkID: nid, EndpointID: eid,
		Interface: &network.EndpointInterface{AddressIPv6: "2001:db8:9::5/64"}})
	if err != nil || res.Interface == nil || res.Interface.MacAddress == "" {
		t.Fatalf("CreateEndpoint = %+v, %v", res, err)
	}
	j, err := d.Join(&network.JoinRequest{NetworkID: nid, EndpointID: eid, SandboxKey: "/x"})
	if err != nil || j.Gateway != "" || j.GatewayIPv6 != "2001:db8:9::1" {
		t.Fatalf("Join = %+v, %v; want no IPv4 gateway and 2001:db8:9::1", j, err)
	}

	// IPv4 data with IPv4 off, or no IPv6 subnet at all: refused by name.
	bad := *req
	bad.NetworkID = "b" + nid[1:]
	bad.IPv4Data = []*network.IPAMData{{Pool: "198.18.9.0/24"}}
	if err := d.CreateNetwork(&bad); err == nil || !strings.Contains(err.Error(), "IPv4 is disabled on this network (com.docker.network.enable_ipv4=false) but it was given IPv4 subnet 198.18.9.0/24") {
		t.Fatalf("IPv4 subnet on an IPv6-only network: %v", err)
	}
	bad.IPv4Data, bad.IPv6Data = nil, nil
	if err := d.CreateNetwork(&bad); err == nil || !strings.Contains(err.Error(), "needs an IPv6 subnet") {
		t.Fatalf("IPv6-only network without a subnet: %v", err)
	}
}

// GwAllocCheck answers as the bridge driver: skip the gateway where it
// would serve nothing, and refuse bad options before any address is held.
func TestGwAllocCheck(t *testing.T) {
	d, _, _, _ := newTestDriver(t)
	if !d.Capabilities().GwAllocChecker {
		t.Fatal("GwAllocChecker not advertised")
	}
	for _, tc := range []struct {
		opts        map[string]any
		skip4, skp6 bool
		err         string
	}{
		{map[string]any{optGeneric: map[string]any{}}, false, false, ""},
		{map[string]any{optGeneric: map[string]any{optInhibitIPv4: "true"}}, false, false, ""},
		{map[string]any{optInternal: true, optGeneric: map[string]any{optInhibitIPv4: "true"}}, true, false, ""},
		{map[string]any{optInternal: true, optGeneric: map[string]any{optGwModeV4: "isolated", optGwModeV6: "isolated"}}, true, true, ""},
		{map[string]any{optInternal: true, optGeneric: map[string]any{optGwModeV6: "isolated"}}, false, true, ""},
		{map[string]any{optGeneric: map[string]any{optGwModeV4: "isolated"}}, false, false, "only for internal networks"},
		{map[string]any{optGeneric: map[string]any{optICC: "sometimes"}}, false, false, "not a boolean"},
	} {
		res, err := d.GwAllocCheck(&GwAllocCheckRequest{Options: tc.opts})
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%v: err %v, want %q", tc.opts, err, tc.err)
			}
			continue
		}
		if err != nil || res.SkipIPv4 != tc.skip4 || res.SkipIPv6 != tc.skp6 {
			t.Errorf("%v: %+v %v, want skip %v/%v", tc.opts, res, err, tc.skip4, tc.skp6)
		}
	}
	// Gateway mode isolated on an engine before 28 (which does not ask):
	// the gateway it reserved anyway is not put on the bridge.
	d2, l, _, _ := newTestDriver(t)
	req := createReq(optGwModeV4, "isolated")
	req.Options[optInternal] = true
	if err := d2.CreateNetwork(req); err != nil {
		t.Fatal(err)
	}
	if br := l.bridges["ournet-aaaaaaaa"]; len(br.Addrs) != 0 {
		t.Fatalf("isolated: bridge has addresses %v", br.Addrs)
	}
}
