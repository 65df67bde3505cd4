package driver

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/docker/go-plugins-helpers/network"

	"github.com/ournet/ournet/internal/firewall"
	"github.com/ournet/ournet/internal/netdev"
	"github.com/ournet/ournet/internal/portmap"
	"github.com/ournet/ournet/internal/store"
)

// fakePorts publishes each binding on 0.0.0.0 with its host port (or 40000).
type fakePorts struct {
	mapped   map[string][]portmap.Mapping
	restored map[string][]portmap.Mapping
	lastEp   portmap.Endpoint
	kept     []string
	fail     error
	unmapErr error
}

func newFakePorts() *fakePorts {
	return &fakePorts{mapped: map[string][]portmap.Mapping{}, restored: map[string][]portmap.Mapping{}}
}

func (f *fakePorts) Map(ep portmap.Endpoint, req []portmap.Binding) ([]portmap.Mapping, error) {
	f.lastEp = ep
	delete(f.mapped, ep.ID)
	if f.fail != nil {
		return nil, f.fail
	}
	var ms []portmap.Mapping
	for _, b := range req {
		hp := b.HostPort
		switch {
		case ep.RoutedV4:
			hp = 0 // Direct: open at the container's address
		case hp == 0:
			hp = 40000
		}
		ms = append(ms, portmap.Mapping{Proto: b.Proto, HostIP: netip.IPv4Unspecified(), HostPort: hp, ContainerIP: ep.IPv4, ContainerPort: b.Port})
	}
	f.mapped[ep.ID] = ms
	return ms, nil
}
func (f *fakePorts) Restore(ep portmap.Endpoint, _ []portmap.Binding, ms []portmap.Mapping) error {
	f.restored[ep.ID] = ms
	return nil
}
func (f *fakePorts) Unmap(id string) error {
	if f.unmapErr != nil {
		return f.unmapErr
	}
	delete(f.mapped, id)
	return nil
}
func (f *fakePorts) Prune(keep []string) error    { f.kept = keep; return nil }
func (f *fakePorts) Reconcile() ([]string, error) { return nil, nil }
func portmapOpt(entries ...map[string]any) map[string]any {
	list := make([]any, len(entries))
	for i, e := range entries {
		list[i] = e
	}
	return map[string]any{portmap.OptPortMap: list}
}

// As the helper decodes the engine's JSON: numbers are float64.
var tcp8080 = map[string]any{"Proto": float64(6), "IP": "", "Port": float64(80), "HostIP": "", "HostPort": float64(8080), "HostPortEnd": float64(8080)}
var anyUDP = map[string]any{"Proto": float64(17), "IP": "", "Port": float64(53), "HostIP": "", "HostPort": float64(0), "HostPortEnd": float64(0)}

func storedEndpoint(t *testing.T, st *store.Store, id string) *Endpoint {
	t.Helper()
	eps, err := store.LoadAll[Endpoint](st, bucketEndpoints)
	if err != nil {
		t.Fatal(err)
	}
	return eps[id]
}

func TestPortsProgramRevokeDelete(t *testing.T) {
	d, _, _, st := newTestDriver(t)
	p := newFakePorts()
	d.setPorts(p)
	if err := d.CreateNetwork(createReq(optHostBindingV4, "127.0.0.1")); err != nil {
		t.Fatal(err)
	}
	if _, err := d.CreateEndpoint(&network.CreateEndpointRequest{NetworkID: nid, EndpointID: eid, Options: portmapOpt(tcp8080),
		Interface: &network.EndpointInterface{Address: "198.18.7.5/24"}}); err != nil {
		t.Fatal(err)
	}
	// Engine 20.10 sends the port map again with ProgramExternalConnectivity;
	// without it, the one from CreateEndpoint is used.
	if err := d.ProgramExternalConnectivity(&network.ProgramExternalConnectivityRequest{NetworkID: nid, EndpointID: eid}); err != nil {
		t.Fatal(err)
	}
	if ms := p.mapped[eid]; len(ms) != 1 || ms[0].HostPort != 8080 {
		t.Fatalf("mapped from CreateEndpoint's options: %v", ms)
	}
	want := portmap.Endpoint{ID: eid, Bridge: "ournet-aaaaaaaa", HostVeth: "ov" + eid[:12],
		IPv4: netip.MustParseAddr("198.18.7.5"), DefaultHostIPv4: netip.MustParseAddr("127.0.0.1")}
	if p.lastEp != want {
		t.Fatalf("endpoint given to the mapper = %+v, want %+v", p.lastEp, want)
	}
	if err := d.ProgramExternalConnectivity(&network.ProgramExternalConnectivityRequest{NetworkID: nid, EndpointID: eid, Options: portmapOpt(tcp8080, anyUDP)}); err != nil {
		t.Fatal(err)
	}
	if ep := storedEndpoint(t, st, eid); len(ep.Ports) != 2 || len(ep.PortReq) != 2 || ep.Ports[1].HostPort != 40000 {
		t.Fatalf("saved endpoint = %+v", ep)
	}
	if err := d.RevokeExternalConnectivity(&network.RevokeExternalConnectivityRequest{NetworkID: nid, EndpointID: eid}); err != nil {
		t.Fatal(err)
	}
	if len(p.mapped) != 0 || len(storedEndpoint(t, st, eid).Ports) != 0 {
		t.Fatalf("after revoke: %v, saved %+v", p.mapped, storedEndpoint(t, st, eid))
	}
	// DeleteEndpoint without a revoke (a failed start) unpublishes too.
	if err := d.ProgramExternalConnectivity(&network.ProgramExternalConnectivityRequest{NetworkID: nid, EndpointID: eid}); err != nil {
		t.Fatal(err)
	}
	if err := d.DeleteEndpoint(&network.DeleteEndpointRequest{NetworkID: nid, EndpointID: eid}); err != nil {
		t.Fatal(err)
	}
	if len(p.mapped) != 0 {
		t.Fatalf("after DeleteEndpoint: %v", p.mapped)
	}
	if err := d.RevokeExternalConnectivity(&network.RevokeExternalConnectivityRequest{NetworkID: nid, EndpointID: eid}); err != nil {
		t.Fatalf("revoke of a gone endpoint: %v", err)
	}
}

func TestPortsFailure(t *testing.T) {
	d, _, _, st := newTestDriver(t)
	p := newFakePorts()
	d.setPorts(p)
	if err := d.CreateNetwork(createReq()); err != nil {
		t.Fatal(err)
	}
	bad := map[string]any{"Proto": float64(1), "Port": float64(80)}
	_, err := d.CreateEndpoint(&network.CreateEndpointRequest{NetworkID: nid, EndpointID: eid, Options: portmapOpt(bad),
		Interface: &network.EndpointInterface{Address: "198.18.7.5/24"}})
	if err == nil || !strings.Contains(err.Error(), "protocol number 1") || storedEndpoint(t, st, eid) != nil {
		t.Fatalf("bad port map: %v", err)
	}
	if _, err := d.CreateEndpoint(&network.CreateEndpointRequest{NetworkID: nid, EndpointID: eid, Options: portmapOpt(tcp8080),
		Interface: &network.EndpointInterface{Address: "198.18.7.5/24"}}); err != nil {
		t.Fatal(err)
	}
	p.fail = errors.New("ournet: host port 8080/tcp on 0.0.0.0 is already in use; choose another host port")
	err = d.ProgramExternalConnectivity(&network.ProgramExternalConnectivityRequest{NetworkID: nid, EndpointID: eid, Options: portmapOpt(tcp8080)})
	if err == nil || err.Error() != p.fail.Error() {
		t.Fatalf("err = %v, want the mapper's message as is", err)
	}
	if ep := storedEndpoint(t, st, eid); len(ep.Ports) != 0 {
		t.Fatalf("saved ports after a failure: %v", ep.Ports)
	}
}

func TestPortsNotOnInternalNetworks(t *testing.T) {
	d, _, _, _ := newTestDriver(t)
	p := newFakePorts()
	d.setPorts(p)
	req := createReq()
	req.Options[optInternal] = true
	if err := d.CreateNetwork(req); err != nil {
		t.Fatal(err)
	}
	if _, err := d.CreateEndpoint(&network.CreateEndpointRequest{NetworkID: nid, EndpointID: eid, Options: portmapOpt(tcp8080),
		Interface: &network.EndpointInterface{Address: "198.18.7.5/24"}}); err != nil {
		t.Fatal(err)
	}
	if err := d.ProgramExternalConnectivity(&network.ProgramExternalConnectivityRequest{NetworkID: nid, EndpointID: eid}); err != nil || len(p.mapped) != 0 {
		t.Fatalf("internal network published %v (%v)", p.mapped, err)
	}
}

// After a restart, ports come back for endpoints whose veth exists, with
// the host ports they had; the rules of the others are pruned.
func TestPortsRestore(t *testing.T) {
	d, l, _, st := newTestDriver(t)
	d.setPorts(newFakePorts())
	if err := d.CreateNetwork(createReq()); err != nil {
		t.Fatal(err)
	}
	gone := "e2" + eid[2:]
	for i, id := range []string{eid, gone} {
		if _, err := d.CreateEndpoint(&network.CreateEndpointRequest{NetworkID: nid, EndpointID: id, Options: portmapOpt(anyUDP),
			Interface: &network.EndpointInterface{Address: "198.18.7." + string(rune('5'+i)) + "/24"}}); err != nil {
			t.Fatal(err)
		}
		if err := d.ProgramExternalConnectivity(&network.ProgramExternalConnectivityRequest{NetworkID: nid, EndpointID: id}); err != nil {
			t.Fatal(err)
		}
	}
	l2 := &fakeLinks{bridges: map[string]netdev.Bridge{}, veths: map[string]netdev.Veth{"ov" + eid[:12]: l.veths["ov"+eid[:12]]}, foreign: map[string]bool{}}
	p2 := newFakePorts()
	d2 := New(Deps{Links: l2, Firewall: &fakeFW{nets: map[string]firewall.Network{}}, Sysctls: fakeSysctl{}, Store: st})
	d2.setPorts(p2)
	if err := d2.Restore(); err != nil {
		t.Fatal(err)
	}
	if ms := p2.restored[eid]; len(ms) != 1 || ms[0].HostPort != 40000 || ms[0].Proto != portmap.UDP {
		t.Fatalf("restored %v", p2.restored)
	}
	if _, ok := p2.restored[gone]; ok || !slices.Equal(p2.kept, []string{eid}) {
		t.Fatalf("restored the endpoint whose veth is gone: %v, kept %v", p2.restored, p2.kept)
	}
}

// On a routed network the published ports are opened at the container's
// address by the firewall: each endpoint's in the network's Open list from
// ProgramExternalConnectivity until its revoke or delete, kept over a
// restart; a firewall that refuses fails the start and leaves nothing.
func TestRoutedPortsOpenInTheFirewall(t *testing.T) {
	d, _, fw, st := newTestDriver(t)
	p := newFakePorts()
	d.setPorts(p)
	if err := d.CreateNetwork(createReq(optGwModeV4, "routed")); err != nil {
		t.Fatal(err)
	}
	const eid2 = "ffffffffffff0000000000000000000000000000000000000000000000000000"
	for id, addr := range map[string]string{eid: "198.18.7.5/24", eid2: "198.18.7.4/24"} {
		if _, err := d.CreateEndpoint(&network.CreateEndpointRequest{NetworkID: nid, EndpointID: id,
			Interface: &network.EndpointInterface{Address: addr}}); err != nil {
			t.Fatal(err)
		}
	}
	open := func(what string, want ...firewall.Opening) {
		t.Helper()
		if got := fw.nets[nid].Open; !slices.Equal(got, want) {
			t.Fatalf("%s: open %v, want %v", what, got, want)
		}
	}
	a5, a4 := netip.MustParseAddr("198.18.7.5"), netip.MustParseAddr("198.18.7.4")
	if err := d.ProgramExternalConnectivity(&network.ProgramExternalConnectivityRequest{NetworkID: nid, EndpointID: eid, Options: portmapOpt(tcp8080)}); err != nil {
		t.Fatal(err)
	}
	if !p.lastEp.RoutedV4 || p.lastEp.RoutedV6 {
		t.Fatalf("the mapper was not told the network is routed for IPv4 only: %+v", p.lastEp)
	}
	open("one endpoint", firewall.Opening{Proto: 6, Addr: a5, Port: 80})
	if err := d.ProgramExternalConnectivity(&network.ProgramExternalConnectivityRequest{NetworkID: nid, EndpointID: eid2, Options: portmapOpt(tcp8080, anyUDP)}); err != nil {
		t.Fatal(err)
	}
	both := []firewall.Opening{{Proto: 6, Addr: a4, Port: 80}, {Proto: 17, Addr: a4, Port: 53}, {Proto: 6, Addr: a5, Port: 80}}
	open("two endpoints", both...)

	// A restart: the saved ports are open again from the first rules.
	d2 := New(Deps{Links: d.links, Firewall: &fakeFW{nets: map[string]firewall.Network{}}, Sysctls: fakeSysctl{}, Store: st})
	d2.setPorts(newFakePorts())
	if err := d2.Restore(); err != nil {
		t.Fatal(err)
	}
	if got := d2.fw.(*fakeFW).nets[nid].Open; !slices.Equal(got, both) {
		t.Fatalf("after a restart: open %v, want %v", got, both)
	}

	if err := d.RevokeExternalConnectivity(&network.RevokeExternalConnectivityRequest{NetworkID: nid, EndpointID: eid2}); err != nil {
		t.Fatal(err)
	}
	open("after the revoke", firewall.Opening{Proto: 6, Addr: a5, Port: 80})
	if err := d.DeleteEndpoint(&network.DeleteEndpointRequest{NetworkID: nid, EndpointID: eid}); err != nil {
		t.Fatal(err)
	}
	open("after a delete without a revoke")

	fw.fail = errors.New("netlink: no buffer space")
	err := d.ProgramExternalConnectivity(&network.ProgramExternalConnectivityRequest{NetworkID: nid, EndpointID: eid2, Options: portmapOpt(tcp8080)})
	if err == nil || !strings.Contains(err.Error(), "at the container's address") || !strings.Contains(err.Error(), "no buffer space") {
		t.Fatalf("a firewall that refuses: %v", err)
	}
	if len(p.mapped) != 0 || len(storedEndpoint(t, st, eid2).Ports) != 0 {
		t.Fatalf("a failed start left ports: mapped %v, saved %+v", p.mapped, storedEndpoint(t, st, eid2).Ports)
	}
}

// With trusted_host_interfaces a nat network's published ports are open
// at the containers' addresses from those interfaces (the firewall's
// Trusted): the container side of every mapping, until the revoke. A nat
// network without them opens nothing.
func TestTrustedInterfacesOpenPublishedPorts(t *testing.T) {
	for _, trusted := range []string{"", "eth1::eth0:eth1"} {
		d, _, fw, _ := newTestDriver(t)
		p := newFakePorts()
		d.setPorts(p)
		if err := d.CreateNetwork(createReq(optTrusted, trusted)); err != nil {
			t.Fatal(err)
		}
		if _, err := d.CreateEndpoint(&network.CreateEndpointRequest{NetworkID: nid, EndpointID: eid,
			Interface: &network.EndpointInterface{Address: "198.18.7.5/24"}}); err != nil {
			t.Fatal(err)
		}
		if err := d.ProgramExternalConnectivity(&network.ProgramExternalConnectivityRequest{NetworkID: nid, EndpointID: eid, Options: portmapOpt(tcp8080, anyUDP)}); err != nil {
			t.Fatal(err)
		}
		if ms := p.mapped[eid]; len(ms) != 2 || ms[0].Direct() {
			t.Fatalf("%q: a nat network's ports were not DNATed: %v", trusted, ms)
		}
		var want []firewall.Opening
		var wantIfs []string
		if trusted != "" {
			a := netip.MustParseAddr("198.18.7.5")
			want = []firewall.Opening{{Proto: 6, Addr: a, Port: 80}, {Proto: 17, Addr: a, Port: 53}}
			wantIfs = []string{"eth0", "eth1"}
		}
		if got := fw.nets[nid]; !slices.Equal(got.Open, want) || !slices.Equal(got.Trusted, wantIfs) {
			t.Fatalf("%q: open %v from %v, want %v from %v", trusted, got.Open, got.Trusted, want, wantIfs)
		}
		if err := d.RevokeExternalConnectivity(&network.RevokeExternalConnectivityRequest{NetworkID: nid, EndpointID: eid}); err != nil {
			t.Fatal(err)
		}
		if got := fw.nets[nid].Open; len(got) != 0 {
			t.Fatalf("%q: after the revoke, open %v", trusted, got)
		}
	}
}

// An opening never outlives its endpoint's ports, whatever fails on the
// way: a second ProgramExternalConnectivity whose mapping fails (the
// mapper no longer holds the old one), a revoke whose save fails. The
// address is free for the next container once the endpoint is deleted.
func TestRoutedOpeningsCloseWhenAChangeFails(t *testing.T) {
	for _, c := range []struct {
		what string
		fail func(d *Driver, p *fakePorts, st *store.Store) error
	}{
		{"a failed program", func(d *Driver, p *fakePorts, _ *store.Store) error {
			p.fail = errors.New("host port in use")
			return d.ProgramExternalConnectivity(&network.ProgramExternalConnectivityRequest{NetworkID: nid, EndpointID: eid, Options: portmapOpt(tcp8080, anyUDP)})
		}},
		{"a revoke that cannot save", func(d *Driver, _ *fakePorts, st *store.Store) error {
			st.Close()
			return d.RevokeExternalConnectivity(&network.RevokeExternalConnectivityRequest{NetworkID: nid, EndpointID: eid})
		}},
		{"a delete whose iptables fail", func(d *Driver, p *fakePorts, _ *store.Store) error {
			p.unmapErr = errors.New("iptables-save: resource busy")
			return d.DeleteEndpoint(&network.DeleteEndpointRequest{NetworkID: nid, EndpointID: eid})
		}},
	} {
		t.Run(c.what, func(t *testing.T) {
			d, p, _, fw, st := routedEndpoint(t)
			if err := c.fail(d, p, st); err == nil {
				t.Fatal("the change did not fail, so the test proves nothing")
			}
			if o := fw.nets[nid].Open; len(o) != 0 {
				t.Fatalf("the endpoint has no ports any more, still open: %v", o)
			}
			_ = d.DeleteEndpoint(&network.DeleteEndpointRequest{NetworkID: nid, EndpointID: eid})
			if o := fw.nets[nid].Open; len(o) != 0 {
				t.Fatalf("the endpoint is deleted, still open: %v", o)
			}
		})
	}
}

// A firewall that refuses to close a routed network's openings does not
// stop a container's removal: its veth goes all the same.
func TestRoutedDeleteGoesOnWhenTheFirewallRefuses(t *testing.T) {
	d, _, l, fw, _ := routedEndpoint(t)
	fw.fail = errors.New("netlink: no buffer space")
	if err := d.DeleteEndpoint(&network.DeleteEndpointRequest{NetworkID: nid, EndpointID: eid}); err != nil {
		t.Fatalf("DeleteEndpoint: %v", err)
	}
	if _, ok := l.veths["ov"+eid[:12]]; ok {
		t.Fatal("the container's veth stayed")
	}
}

// routedEndpoint is a routed network with endpoint eid at 198.18.7.5, its
// port 80 published (open).
func routedEndpoint(t *testing.T) (*Driver, *fakePorts, *fakeLinks, *fakeFW, *store.Store) {
	t.Helper()
	d, l, fw, st := newTestDriver(t)
	p := newFakePorts()
	d.setPorts(p)
	if err := d.CreateNetwork(createReq(optGwModeV4, "routed")); err != nil {
		t.Fatal(err)
	}
	if _, err := d.CreateEndpoint(&network.CreateEndpointRequest{NetworkID: nid, EndpointID: eid,
		Interface: &network.EndpointInterface{Address: "198.18.7.5/24"}}); err != nil {
		t.Fatal(err)
	}
	if err := d.ProgramExternalConnectivity(&network.ProgramExternalConnectivityRequest{NetworkID: nid, EndpointID: eid, Options: portmapOpt(tcp8080)}); err != nil {
		t.Fatal(err)
	}
	if len(fw.nets[nid].Open) != 1 {
		t.Fatalf("not opened: %v", fw.nets[nid].Open)
	}
	return d, p, l, fw, st
}
