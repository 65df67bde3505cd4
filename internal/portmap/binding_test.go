package portmap

import (
	"encoding/json"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// options decodes a request body's Options the way the plugin helper does,
// so the tests see the engine's JSON as ournet will.
func options(t *testing.T, body string) map[string]any {
	t.Helper()
	var o map[string]any
	if err := json.Unmarshal([]byte(body), &o); err != nil {
		t.Fatal(err)
	}
	return o
}

func TestParseEngineJSON(t *testing.T) {
	// As engine 20.10 sends it for -p 8080:80 -p 127.0.0.1:53:53/udp
	// -p 8000-8005:81 -p [2001:db8::1]::82/sctp -P (port 83).
	o := options(t, `{"com.docker.network.endpoint.exposedports":[{"Proto":6,"Port":80}],
	 "com.docker.network.portmap":[
	  {"Proto":6,"IP":"","Port":80,"HostIP":"","HostPort":8080,"HostPortEnd":8080},
	  {"Proto":17,"IP":"","Port":53,"HostIP":"127.0.0.1","HostPort":53,"HostPortEnd":53},
	  {"Proto":6,"IP":"","Port":81,"HostIP":"","HostPort":8000,"HostPortEnd":8005},
	  {"Proto":132,"IP":"","Port":82,"HostIP":"2001:db8::1","HostPort":0,"HostPortEnd":0},
	  {"Proto":6,"IP":"","Port":83,"HostIP":"","HostPort":0,"HostPortEnd":0}]}`)
	got, found, err := Parse(o)
	if err != nil || !found {
		t.Fatalf("Parse = %v, %v", found, err)
	}
	want := []Binding{
		{Proto: TCP, Port: 80, HostPort: 8080},
		{Proto: UDP, Port: 53, HostIP: netip.MustParseAddr("127.0.0.1"), HostPort: 53},
		{Proto: TCP, Port: 81, HostPort: 8000, HostPortEnd: 8005},
		{Proto: SCTP, Port: 82, HostIP: netip.MustParseAddr("2001:db8::1")},
		{Proto: TCP, Port: 83},
	}
	if !slices.Equal(got, want) {
		t.Fatalf("Parse =\n%v\nwant\n%v", got, want)
	}
	if _, found, err := Parse(options(t, `{"com.docker.network.endpoint.exposedports":[]}`)); found || err != nil {
		t.Fatalf("no portmap: found=%v err=%v", found, err)
	}
	if b, found, err := Parse(options(t, `{"com.docker.network.portmap":[]}`)); !found || err != nil || len(b) != 0 {
		t.Fatalf("empty portmap: %v %v %v", b, found, err)
	}
}

func TestParseRefusesBadBindings(t *testing.T) {
	for body, want := range map[string]string{
		`[{"Proto":1,"Port":80}]`:                                    "protocol number 1",
		`[{"Proto":6,"Port":0}]`:                                     "container port 0",
		`[{"Proto":6,"Port":80,"HostPort":9000,"HostPortEnd":8000}]`: "backwards",
		`[{"Proto":6,"Port":80,"HostIP":"not-an-ip","HostPort":1}]`:  `"not-an-ip" of port 80/tcp`,
		`[{"Proto":6,"Port":80,"HostPort":70000}]`:                   "not valid",
		`{"Proto":6}`: "not a list",
	} {
		_, _, err := Parse(options(t, `{"com.docker.network.portmap":`+body+`}`))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: err = %v, want %q", body, err, want)
		}
	}
}

var (
	c4     = netip.MustParseAddr("198.18.50.2")
	c6     = netip.MustParseAddr("2001:db8:50::2")
	any4   = netip.IPv4Unspecified()
	any6   = netip.IPv6Unspecified()
	lo4    = netip.MustParseAddr("127.0.0.1")
	dual   = Endpoint{ID: "e1", Bridge: "br0", HostVeth: "ov1", IPv4: c4, IPv6: c6}
	only4  = Endpoint{ID: "e1", Bridge: "br0", HostVeth: "ov1", IPv4: c4}
	only6  = Endpoint{ID: "e1", Bridge: "br0", HostVeth: "ov1", IPv6: c6}
	local4 = Endpoint{ID: "e1", Bridge: "br0", HostVeth: "ov1", IPv4: c4, IPv6: c6, DefaultHostIPv4: lo4}
)

// Host addresses follow Docker's bridge driver: no address is 0.0.0.0 and
// :: (each when the container has that family), the network's default
// replaces 0.0.0.0 and then drops ::, an explicit address stands alone.
func TestResolveHostAddresses(t *testing.T) {
	for _, tc := range []struct {
		ep   Endpoint
		b    Binding
		want []netip.Addr
	}{
		{dual, Binding{Proto: TCP, Port: 80}, []netip.Addr{any4, any6}},
		{only4, Binding{Proto: TCP, Port: 80}, []netip.Addr{any4}},
		{only6, Binding{Proto: TCP, Port: 80}, []netip.Addr{any6}},
		{local4, Binding{Proto: TCP, Port: 80}, []netip.Addr{lo4}},
		{dual, Binding{Proto: TCP, Port: 80, HostIP: any4}, []netip.Addr{any4}},
		{dual, Binding{Proto: TCP, Port: 80, HostIP: any6}, []netip.Addr{any6}},
		{dual, Binding{Proto: UDP, Port: 80, HostIP: lo4}, []netip.Addr{lo4}},
	} {
		ws, err := resolve(tc.ep, []Binding{tc.b})
		if err != nil || len(ws) != 1 || !slices.Equal(ws[0].hostIPs, tc.want) {
			t.Errorf("%v on %+v: %v %v, want %v", tc.b, tc.ep, ws, err, tc.want)
		}
	}
	for _, tc := range []struct {
		ep   Endpoint
		b    Binding
		want string
	}{
		{dual, Binding{Proto: TCP, Port: 80, HostIP: netip.IPv6Loopback()}, "cannot publish a free host port on ::1 (to container port 80/tcp): the kernel does not forward"},
		{only4, Binding{Proto: TCP, Port: 80, HostIP: any6}, "no IPv6 address"},
		{only6, Binding{Proto: TCP, Port: 80, HostIP: lo4}, "no IPv4 address"},
	} {
		if _, err := resolve(tc.ep, []Binding{tc.b}); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v on %+v: err = %v, want %q", tc.b, tc.ep, err, tc.want)
		}
	}
}

func TestProtoText(t *testing.T) {
	b, _ := json.Marshal(Mapping{Proto: SCTP, HostIP: any4, HostPort: 1, ContainerIP: c4, ContainerPort: 2})
	if !strings.Contains(string(b), `"Proto":"sctp"`) {
		t.Fatalf("state shows %s", b)
	}
	var m Mapping
	if err := json.Unmarshal(b, &m); err != nil || m.Proto != SCTP || m.HostIP != any4 {
		t.Fatalf("round trip: %+v %v", m, err)
	}
}
