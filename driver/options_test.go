package driver

import (
	"strings"
	"testing"
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
		{generic(optGwModeV4, "bogus"), nil, "use nat or routed"},
		{generic("com.docker.network.bridge.enable_icx", "true"), nil, `unknown option "com.docker.network.bridge.enable_icx"`},
		{generic("ournet.nonsense", "1"), nil, `unknown option "ournet.nonsense"`},
		{generic(optDefaultBridge, "true"), nil, "Docker's own default bridge"},
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
