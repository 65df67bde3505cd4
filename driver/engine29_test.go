package driver

import (
	"fmt"
	"io"
	"net/netip"
	"slices"
	"sync"
	"testing"

	"github.com/docker/go-plugins-helpers/network"

	"github.com/ournet/ournet/internal/firewall"
	"github.com/ournet/ournet/internal/iptables"
	"github.com/ournet/ournet/internal/netdev"
	"github.com/ournet/ournet/internal/portmap"
)

// Engine 29's remote shim sends ProgramExternalConnectivity whenever the
// endpoint becomes the IPv4 and/or IPv6 gateway, possibly again without a
// Revoke (an IPv4-only gateway becoming dual-stack), sends Revoke when it
// stops being either (Leave included, so Revoke may come for an endpoint
// never programmed), and, keeping this in memory only, sends Program again
// after every restart. These tests play those sequences against the real
// port mapper, over an in-memory iptables and host ports.

// nopTables accepts every iptables-restore script; its tables are empty.
type nopTables struct{}

func (nopTables) Save(iptables.Family, string) (string, error) { return "", nil }
func (nopTables) Restore(iptables.Family, string) error        { return nil }

// hostPorts stands in for the host's sockets.
type hostPorts struct {
	mu   sync.Mutex
	held map[string]int
}

type closeFunc func() error

func (c closeFunc) Close() error { return c() }

func (h *hostPorts) reserve(p portmap.Proto, ap netip.AddrPort) (io.Closer, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	k := fmt.Sprintf("%s/%s", ap, p)
	if h.held[k] > 0 {
		return nil, portmap.ErrInUse
	}
	h.held[k]++
	return closeFunc(func() error {
		h.mu.Lock()
		defer h.mu.Unlock()
		if h.held[k]--; h.held[k] == 0 {
			delete(h.held, k)
		}
		return nil
	}), nil
}

func (h *hostPorts) list() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for k := range h.held {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func newMapper(h *hostPorts) *portmap.Mapper {
	return portmap.New(portmap.Config{
		Runner: nopTables{}, Families: []iptables.Family{iptables.IPv4, iptables.IPv6},
		Reserve: h.reserve,
		Sysctl:  func(string, string) error { return nil },
		Hairpin: func(string) error { return nil },
		Range:   func() (uint16, uint16) { return 41000, 41009 },
		Forget:  func([]portmap.Mapping, bool) error { return nil },
	})
}

// dualStack makes a dual-stack network and one endpoint on it whose
// CreateEndpoint carries -p 8080:80 and -p 53/udp (a host port picked).
func dualStack(t *testing.T, d *Driver) {
	t.Helper()
	req := createReq(optEnableIPv6, "true")
	req.Options[optEnableIPv6] = true
	req.IPv6Data = []*network.IPAMData{{Pool: "2001:db8:7::/64", Gateway: "2001:db8:7::1/64"}}
	if err := d.CreateNetwork(req); err != nil {
		t.Fatal(err)
	}
	if _, err := d.CreateEndpoint(&network.CreateEndpointRequest{NetworkID: nid, EndpointID: eid, Options: portmapOpt(tcp8080, anyUDP),
		Interface: &network.EndpointInterface{Address: "198.18.7.5/24", AddressIPv6: "2001:db8:7::5/64"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Join(&network.JoinRequest{NetworkID: nid, EndpointID: eid, SandboxKey: "/var/run/docker/netns/x"}); err != nil {
		t.Fatal(err)
	}
}

func program(t *testing.T, d *Driver, opts map[string]any) {
	t.Helper()
	if err := d.ProgramExternalConnectivity(&network.ProgramExternalConnectivityRequest{NetworkID: nid, EndpointID: eid, Options: opts}); err != nil {
		t.Fatalf("ProgramExternalConnectivity: %v", err)
	}
}

func revoke(t *testing.T, d *Driver, id string) {
	t.Helper()
	if err := d.RevokeExternalConnectivity(&network.RevokeExternalConnectivityRequest{NetworkID: nid, EndpointID: id}); err != nil {
		t.Fatalf("RevokeExternalConnectivity: %v", err)
	}
}

func TestEngine29ProgramAgainWithoutRevoke(t *testing.T) {
	d, _, _, st := newTestDriver(t)
	h := &hostPorts{held: map[string]int{}}
	d.setPorts(newMapper(h))
	dualStack(t, d)

	// Becoming the IPv4 gateway, then the IPv6 one too: Program twice, the
	// second time with 28's/29's extra option. The same request keeps the
	// same host ports, the picked one included, and holds each once.
	program(t, d, portmapOpt(tcp8080, anyUDP))
	first := storedEndpoint(t, st, eid).Ports
	held := h.list()
	want := []string{"0.0.0.0:41000/udp", "0.0.0.0:8080/tcp", "[::]:41000/udp", "[::]:8080/tcp"}
	if !slices.Equal(held, want) {
		t.Fatalf("host ports held after Program: %v, want %v", held, want)
	}
	again := portmapOpt(tcp8080, anyUDP)
	again["com.docker.network.driver.private.no_proxy_6to4"] = true
	program(t, d, again)
	if got := storedEndpoint(t, st, eid).Ports; !slices.Equal(got, first) || !slices.Equal(h.list(), held) {
		t.Fatalf("Program again changed the publication: %v -> %v, held %v -> %v", first, got, held, h.list())
	}
	// And with no port map at all (it came with CreateEndpoint): the same.
	program(t, d, nil)
	if got := storedEndpoint(t, st, eid).Ports; !slices.Equal(got, first) {
		t.Fatalf("Program without options changed the publication: %v -> %v", first, got)
	}

	// Program with another port map replaces the publication whole: the
	// UDP port is given back, nothing of the old one stays.
	program(t, d, portmapOpt(tcp8080))
	if got := h.list(); !slices.Equal(got, []string{"0.0.0.0:8080/tcp", "[::]:8080/tcp"}) {
		t.Fatalf("after Program with -p 8080:80 only, host ports held: %v", got)
	}
	if got := storedEndpoint(t, st, eid).Ports; len(got) != 2 || got[0].ContainerPort != 80 || got[1].ContainerPort != 80 {
		t.Fatalf("saved ports after the new request: %v", got)
	}

	// Revoke, then Leave and DeleteEndpoint: nothing held, nothing saved.
	revoke(t, d, eid)
	if got := h.list(); len(got) != 0 || len(storedEndpoint(t, st, eid).Ports) != 0 {
		t.Fatalf("after Revoke: held %v, saved %v", got, storedEndpoint(t, st, eid).Ports)
	}
	if err := d.Leave(&network.LeaveRequest{NetworkID: nid, EndpointID: eid}); err != nil {
		t.Fatal(err)
	}
	if err := d.DeleteEndpoint(&network.DeleteEndpointRequest{NetworkID: nid, EndpointID: eid}); err != nil {
		t.Fatal(err)
	}
}

func TestEngine29RevokeWithoutProgram(t *testing.T) {
	d, _, _, st := newTestDriver(t)
	h := &hostPorts{held: map[string]int{}}
	d.setPorts(newMapper(h))
	dualStack(t, d)

	// Never the gateway: Revoke comes on Leave all the same, and again.
	revoke(t, d, eid)
	revoke(t, d, eid)
	if got := h.list(); len(got) != 0 {
		t.Fatalf("Revoke without Program holds %v", got)
	}
	// The request from CreateEndpoint survives a Revoke: the endpoint can
	// become the gateway later and publish what was asked.
	program(t, d, nil)
	if got := storedEndpoint(t, st, eid).Ports; len(got) != 4 {
		t.Fatalf("Program after a Revoke without Program published %v, want 4 mappings", got)
	}
	// Revoke after Leave (29's order), then of a deleted endpoint and of
	// one ournet never saw: success each time.
	if err := d.Leave(&network.LeaveRequest{NetworkID: nid, EndpointID: eid}); err != nil {
		t.Fatal(err)
	}
	revoke(t, d, eid)
	if got := h.list(); len(got) != 0 {
		t.Fatalf("Revoke after Leave left %v held", got)
	}
	if err := d.DeleteEndpoint(&network.DeleteEndpointRequest{NetworkID: nid, EndpointID: eid}); err != nil {
		t.Fatal(err)
	}
	revoke(t, d, eid)
	revoke(t, d, "ffff"+eid[4:])
}

func TestEngine29ProgramAfterPluginRestart(t *testing.T) {
	d, l, _, st := newTestDriver(t)
	h := &hostPorts{held: map[string]int{}}
	d.setPorts(newMapper(h))
	dualStack(t, d)
	program(t, d, portmapOpt(tcp8080, anyUDP))
	before := storedEndpoint(t, st, eid).Ports

	// The plugin dies: its sockets are closed by the kernel. A new run
	// restores the ports the endpoint had (its veth still exists) ...
	h2 := &hostPorts{held: map[string]int{}}
	l2 := &fakeLinks{bridges: map[string]netdev.Bridge{}, veths: map[string]netdev.Veth{"ov" + eid[:12]: l.veths["ov"+eid[:12]]}, foreign: map[string]bool{}}
	d2 := New(Deps{Links: l2, Firewall: &fakeFW{nets: map[string]firewall.Network{}}, Sysctls: fakeSysctl{}, Store: st})
	d2.setPorts(newMapper(h2))
	if err := d2.Restore(); err != nil {
		t.Fatal(err)
	}
	restored := h2.list()
	if len(restored) != 4 {
		t.Fatalf("after the restart, host ports held: %v", restored)
	}
	// ... and the engine's Program after its own restart keeps them: the
	// port the mapper picked for -p 53/udp does not move.
	program(t, d2, portmapOpt(tcp8080, anyUDP))
	if got := storedEndpoint(t, st, eid).Ports; !slices.Equal(got, before) || !slices.Equal(h2.list(), restored) {
		t.Fatalf("Program after a restart moved the ports: %v -> %v, held %v -> %v", before, got, restored, h2.list())
	}
	revoke(t, d2, eid)
	if got := h2.list(); len(got) != 0 {
		t.Fatalf("Revoke after a restart left %v held", got)
	}
}
