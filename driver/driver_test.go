package driver

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	ipamapi "github.com/docker/go-plugins-helpers/ipam"
	"github.com/docker/go-plugins-helpers/network"

	"github.com/ournet/ournet/internal/firewall"
	"github.com/ournet/ournet/internal/netdev"
	"github.com/ournet/ournet/internal/store"
	"github.com/ournet/ournet/internal/subnet"
	"github.com/ournet/ournet/ipam"
)

// fakeLinks and fakeFW record what exists, so tests can check that a failed
// create leaves nothing behind.
type fakeLinks struct {
	bridges map[string]netdev.Bridge
	veths   map[string]netdev.Veth
	foreign map[string]bool
	failVet error
	// sandboxes that exist, and what Replumb made in them
	sandboxes map[string]bool
	plumbed   []netdev.Plumb
}

func (f *fakeLinks) EnsureBridge(b netdev.Bridge) error {
	if f.foreign[b.Name] {
		return netdev.ErrNotOurs
	}
	f.bridges[b.Name] = b
	return nil
}
func (f *fakeLinks) DeleteBridge(name, owner string) error { delete(f.bridges, name); return nil }
func (f *fakeLinks) EnsureVeth(v netdev.Veth) error {
	if f.failVet != nil {
		return f.failVet
	}
	f.veths[v.Host] = v
	return nil
}
func (f *fakeLinks) DeleteVeth(host, owner string) error { delete(f.veths, host); return nil }
func (f *fakeLinks) DeleteLink(name, owner string) error {
	delete(f.veths, name)
	delete(f.bridges, name)
	return nil
}
func (f *fakeLinks) Owned() (map[string]string, error) {
	out := map[string]string{}
	for n, b := range f.bridges {
		out[n] = b.Owner
	}
	for n, v := range f.veths {
		out[n] = v.Owner
	}
	return out, nil
}
func (f *fakeLinks) SandboxIfName(string, net.HardwareAddr) (string, error) { return "eth0", nil }
func (f *fakeLinks) Replumb(sandbox string, p netdev.Plumb) error {
	if f.sandboxes == nil || !f.sandboxes[sandbox] {
		return netdev.ErrNoSandbox
	}
	f.veths[p.Host] = p.Veth
	f.plumbed = append(f.plumbed, p)
	return nil
}
func (f *fakeLinks) HostRoutes() subnet.Routes {
	return subnet.List{netip.MustParsePrefix("198.51.100.0/24"), netip.MustParsePrefix("0.0.0.0/0")}
}
func (f *fakeLinks) Exists(name string) (bool, error) {
	_, b := f.bridges[name]
	_, v := f.veths[name]
	return b || v || f.foreign[name], nil
}

type fakeFW struct {
	nets map[string]firewall.Network
	fail error
	// rounds counts the full comparisons (Drifted).
	rounds atomic.Int32
}

func (f *fakeFW) AddNetwork(n firewall.Network) error {
	if f.fail != nil {
		return f.fail
	}
	f.nets[n.ID] = n
	return nil
}
func (f *fakeFW) DelNetwork(id string) error {
	for full := range f.nets {
		if strings.HasPrefix(full, id) {
			delete(f.nets, full)
		}
	}
	return nil
}
func (f *fakeFW) Setup() error { return nil }
func (f *fakeFW) AddNetworks(nets []firewall.Network) error {
	for _, n := range nets {
		if err := f.AddNetwork(n); err != nil {
			return err
		}
	}
	return nil
}
func (f *fakeFW) Drifted(nets []firewall.Network) ([]firewall.Network, error) {
	f.rounds.Add(1)
	var out []firewall.Network
	for _, n := range nets {
		if _, ok := f.nets[n.ID]; !ok {
			out = append(out, n)
		}
	}
	return out, nil
}
func (f *fakeFW) OwnedNetworks() (map[string]bool, error) {
	out := map[string]bool{}
	for id := range f.nets {
		out[id[:12]] = true
	}
	return out, nil
}

type fakeSysctl map[string]string

func (f fakeSysctl) Set(k, v string) error { f[k] = v; return nil }

func newTestDriver(t *testing.T) (*Driver, *fakeLinks, *fakeFW, *store.Store) {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	l := &fakeLinks{bridges: map[string]netdev.Bridge{}, veths: map[string]netdev.Veth{}, foreign: map[string]bool{}}
	fw := &fakeFW{nets: map[string]firewall.Network{}}
	d := New(Deps{Links: l, Firewall: fw, Sysctls: fakeSysctl{}, Store: st})
	if err := d.Restore(); err != nil {
		t.Fatal(err)
	}
	return d, l, fw, st
}

const nid = "aaaaaaaaaaaa0000000000000000000000000000000000000000000000000000"
const eid = "eeeeeeeeeeee0000000000000000000000000000000000000000000000000000"

func createReq(opts ...string) *network.CreateNetworkRequest {
	return &network.CreateNetworkRequest{
		NetworkID: nid, Options: generic(opts...),
		IPv4Data: []*network.IPAMData{{Pool: "198.18.7.0/24", Gateway: "198.18.7.1/24"}},
	}
}

func TestCreateJoinDelete(t *testing.T) {
	d, l, fw, st := newTestDriver(t)
	if err := d.CreateNetwork(createReq(optMTU, "1450")); err != nil {
		t.Fatal(err)
	}
	br, ok := l.bridges["ournet-aaaaaaaa"]
	if !ok || br.MTU != 1450 || len(br.Addrs) != 1 || br.Addrs[0].String() != "198.18.7.1/24" {
		t.Fatalf("bridge = %+v", br)
	}
	if _, ok := fw.nets[nid]; !ok {
		t.Fatal("no firewall rules")
	}
	res, err := d.CreateEndpoint(&network.CreateEndpointRequest{NetworkID: nid, EndpointID: eid,
		Interface: &network.EndpointInterface{Address: "198.18.7.5/24"}})
	if err != nil {
		t.Fatal(err)
	}
	if res.Interface == nil || res.Interface.MacAddress != "02:42:c6:12:07:05" || res.Interface.Address != "" {
		t.Fatalf("CreateEndpoint must fill only the MAC: %+v", res.Interface)
	}
	if v := l.veths["ov"+eid[:12]]; v.MTU != 1450 || v.Bridge != "ournet-aaaaaaaa" {
		t.Fatalf("veth = %+v", v)
	}
	// A MAC the engine gave is kept, and nothing is returned.
	res2, err := d.CreateEndpoint(&network.CreateEndpointRequest{NetworkID: nid, EndpointID: "e2" + eid[2:],
		Interface: &network.EndpointInterface{Address: "198.18.7.6/24", MacAddress: "02:00:00:00:00:01"}})
	if err != nil || res2.Interface != nil {
		t.Fatalf("CreateEndpoint with a MAC = %+v, %v", res2.Interface, err)
	}
	j, err := d.Join(&network.JoinRequest{NetworkID: nid, EndpointID: eid, SandboxKey: "/var/run/docker/netns/x"})
	if err != nil {
		t.Fatal(err)
	}
	if j.InterfaceName.SrcName != "oc"+eid[:12] || j.InterfaceName.DstPrefix != "eth" || j.Gateway != "198.18.7.1" {
		t.Fatalf("Join = %+v", j)
	}
	if err := d.DeleteEndpoint(&network.DeleteEndpointRequest{NetworkID: nid, EndpointID: eid}); err != nil {
		t.Fatal(err)
	}
	if _, ok := l.veths["ov"+eid[:12]]; ok {
		t.Fatal("veth remains after DeleteEndpoint")
	}
	if err := d.DeleteNetwork(&network.DeleteNetworkRequest{NetworkID: nid}); err != nil {
		t.Fatal(err)
	}
	if len(l.bridges)+len(l.veths)+len(fw.nets) != 0 {
		t.Fatalf("left behind: %v %v %v", l.bridges, l.veths, fw.nets)
	}
	nets, _ := store.LoadAll[Network](st, bucketNetworks)
	eps, _ := store.LoadAll[Endpoint](st, bucketEndpoints)
	if len(nets)+len(eps) != 0 {
		t.Fatalf("state left behind: %v %v", nets, eps)
	}
}

func TestInternalHasNoGateway(t *testing.T) {
	d, _, fw, _ := newTestDriver(t)
	req := createReq()
	req.Options[optInternal] = true
	if err := d.CreateNetwork(req); err != nil {
		t.Fatal(err)
	}
	if !fw.nets[nid].Internal {
		t.Fatal("firewall not told the network is internal")
	}
	if _, err := d.CreateEndpoint(&network.CreateEndpointRequest{NetworkID: nid, EndpointID: eid,
		Interface: &network.EndpointInterface{Address: "198.18.7.5/24"}}); err != nil {
		t.Fatal(err)
	}
	j, err := d.Join(&network.JoinRequest{NetworkID: nid, EndpointID: eid})
	if err != nil || j.Gateway != "" {
		t.Fatalf("Join on internal = %+v, %v", j, err)
	}
}

func TestCreateFailureLeavesNothing(t *testing.T) {
	d, l, fw, st := newTestDriver(t)
	fw.fail = errors.New("iptables exploded")
	err := d.CreateNetwork(createReq())
	if err == nil || !strings.Contains(err.Error(), "iptables exploded") {
		t.Fatalf("err = %v", err)
	}
	if len(l.bridges) != 0 {
		t.Fatalf("bridge left behind: %v", l.bridges)
	}
	if nets, _ := store.LoadAll[Network](st, bucketNetworks); len(nets) != 0 {
		t.Fatalf("record left behind: %v", nets)
	}
	fw.fail = nil
	l.failVet = errors.New("no veth for you")
	if err := d.CreateNetwork(createReq()); err != nil {
		t.Fatal(err)
	}
	if _, err := d.CreateEndpoint(&network.CreateEndpointRequest{NetworkID: nid, EndpointID: eid,
		Interface: &network.EndpointInterface{Address: "198.18.7.5/24"}}); err == nil {
		t.Fatal("CreateEndpoint succeeded without a veth")
	}
	if eps, _ := store.LoadAll[Endpoint](st, bucketEndpoints); len(eps) != 0 {
		t.Fatalf("endpoint record left behind: %v", eps)
	}
}

func TestBadInputRefused(t *testing.T) {
	d, l, _, _ := newTestDriver(t)
	l.foreign["eth9"] = true
	for _, tc := range []struct {
		req  *network.CreateNetworkRequest
		want string
	}{
		{createReq(optBridgeName, "eth9"), "already exists"},
		{createReq(optBridgeName, "much-too-long-bridge"), "at most 15"},
		{createReq(optICC, "perhaps"), "not a boolean"},
		{&network.CreateNetworkRequest{NetworkID: nid, Options: generic(),
			IPv4Data: []*network.IPAMData{{Pool: "198.18.7.0/24", Gateway: "198.18.8.1/24"}}}, "outside subnet"},
	} {
		if err := d.CreateNetwork(tc.req); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("err = %v, want %q", err, tc.want)
		}
	}
	if len(l.bridges) != 0 {
		t.Fatalf("bridges left behind: %v", l.bridges)
	}
}

func TestUnknownIDsAreGone(t *testing.T) {
	d, _, _, _ := newTestDriver(t)
	if err := d.DeleteNetwork(&network.DeleteNetworkRequest{NetworkID: nid}); err != nil {
		t.Fatal(err)
	}
	if err := d.DeleteEndpoint(&network.DeleteEndpointRequest{NetworkID: nid, EndpointID: eid}); err != nil {
		t.Fatal(err)
	}
	if err := d.Leave(&network.LeaveRequest{NetworkID: nid, EndpointID: eid}); err != nil {
		t.Fatal(err)
	}
	_, err := d.CreateEndpoint(&network.CreateEndpointRequest{NetworkID: nid, EndpointID: eid})
	if err == nil || !strings.Contains(err.Error(), "unknown to ournet") {
		t.Fatalf("CreateEndpoint on an unknown network: %v", err)
	}
}

func TestRestoreReprogramsFromStore(t *testing.T) {
	d, _, _, st := newTestDriver(t)
	if err := d.CreateNetwork(createReq()); err != nil {
		t.Fatal(err)
	}
	l2 := &fakeLinks{bridges: map[string]netdev.Bridge{}, veths: map[string]netdev.Veth{}, foreign: map[string]bool{}}
	fw2 := &fakeFW{nets: map[string]firewall.Network{}}
	d2 := New(Deps{Links: l2, Firewall: fw2, Sysctls: fakeSysctl{}, Store: st})
	if err := d2.Restore(); err != nil {
		t.Fatal(err)
	}
	if _, ok := l2.bridges["ournet-aaaaaaaa"]; !ok {
		t.Fatal("restore did not recreate the bridge")
	}
	if _, ok := fw2.nets[nid]; !ok {
		t.Fatal("restore did not reprogram the rules")
	}
}

// Orphans (links and rules of IDs the store does not know) are removed at
// restore when the journal shows ournet was creating or deleting them;
// objects of IDs nobody knows are left alone and reported; what the store
// knows stays. Drift is repaired by Reconcile.
func TestRestoreRemovesOrphansAndReconcileRepairs(t *testing.T) {
	d, _, _, st := newTestDriver(t)
	if err := d.CreateNetwork(createReq()); err != nil {
		t.Fatal(err)
	}
	// A create of network bbbb and a delete of endpoint cccc interrupted.
	d.mu.Lock()
	if err := d.journalCreate("network", "bbbbbbbbbbbb0000"); err != nil {
		t.Fatal(err)
	}
	d.forget("endpoint", bucketEndpoints, "cccccccccccc0000")
	d.mu.Unlock()
	l2 := &fakeLinks{bridges: map[string]netdev.Bridge{
		"ournet-bbbbbbbb": {Name: "ournet-bbbbbbbb", Owner: "bbbbbbbbbbbb0000"},
		"ournet-dddddddd": {Name: "ournet-dddddddd", Owner: "dddddddddddd0000"},
	}, veths: map[string]netdev.Veth{"ovcccccccccccc": {Host: "ovcccccccccccc", Owner: "cccccccccccc0000"}}, foreign: map[string]bool{}}
	fw2 := &fakeFW{nets: map[string]firewall.Network{"bbbbbbbbbbbb0000": {ID: "bbbbbbbbbbbb0000"}, "dddddddddddd0000": {ID: "dddddddddddd0000"}}}
	d2 := New(Deps{Links: l2, Firewall: fw2, Sysctls: fakeSysctl{}, Store: st})
	if err := d2.Restore(); err != nil {
		t.Fatal(err)
	}
	if _, ok := l2.bridges["ournet-dddddddd"]; !ok {
		t.Fatal("a bridge of an ID in neither state nor journal was removed")
	}
	if _, ok := fw2.nets["dddddddddddd0000"]; !ok {
		t.Fatal("rules of an ID in neither state nor journal were removed")
	}
	if got := strings.Join(d2.strays, "; "); !strings.Contains(got, "link ournet-dddddddd") || !strings.Contains(got, "rules of network dddddddddddd") {
		t.Fatalf("strays = %q", got)
	}
	if j := d2.journaled(); len(j) != 0 {
		t.Fatalf("journal after the orphans were removed: %v", j)
	}
	if _, ok := l2.bridges["ournet-bbbbbbbb"]; ok {
		t.Fatal("orphan bridge kept")
	}
	if _, ok := l2.veths["ovcccccccccccc"]; ok {
		t.Fatal("orphan veth kept")
	}
	if _, ok := fw2.nets["bbbbbbbbbbbb0000"]; ok {
		t.Fatal("orphan rules kept")
	}
	if _, ok := l2.bridges["ournet-aaaaaaaa"]; !ok {
		t.Fatal("known bridge removed")
	}
	delete(l2.bridges, "ournet-aaaaaaaa")
	delete(fw2.nets, nid)
	d2.Reconcile()
	if _, ok := l2.bridges["ournet-aaaaaaaa"]; !ok {
		t.Fatal("Reconcile did not recreate the deleted bridge")
	}
	if _, ok := fw2.nets[nid]; !ok {
		t.Fatal("Reconcile did not restore the rules")
	}
}

// A network from an earlier run whose CreateNetwork was never answered
// (the plugin died in that call), and overlaps a new one, is the leftover
// of a create dockerd never saw succeed: it is removed. One whose creation
// was answered is refused by name, used or not, whatever the run: dockerd
// may still have it (issue #16, case 3).
func TestReclaimOverlapping(t *testing.T) {
	d, _, _, st := newTestDriver(t)
	if err := d.CreateNetwork(createReq()); err != nil {
		t.Fatal(err)
	}
	other := createReq()
	other.NetworkID = "bbbbbbbbbbbb" + nid[12:]
	other.IPv4Data = []*network.IPAMData{{Pool: "198.18.7.0/25"}}
	want := "ournet: subnet 198.18.7.0/25 overlaps subnet 198.18.7.0/24 of ournet network aaaaaaaaaaaa (bridge ournet-aaaaaaaa)"
	if err := d.CreateNetwork(other); err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("overlap in the same run: %v, want %q", err, want)
	}
	restart := func() (*Driver, *fakeLinks) {
		l2 := &fakeLinks{bridges: map[string]netdev.Bridge{}, veths: map[string]netdev.Veth{}, foreign: map[string]bool{}}
		d2 := New(Deps{Links: l2, Firewall: &fakeFW{nets: map[string]firewall.Network{}}, Sysctls: fakeSysctl{}, Store: st})
		if err := d2.Restore(); err != nil {
			t.Fatal(err)
		}
		return d2, l2
	}
	// Never answered (no CreateAnswered: the plugin died first).
	d2, l2 := restart()
	if err := d2.CreateNetwork(other); err != nil {
		t.Fatalf("unanswered leftover not reclaimed: %v", err)
	}
	if _, ok := l2.bridges["ournet-aaaaaaaa"]; ok {
		t.Fatal("leftover bridge kept")
	}
	// Answered, never used: dockerd has it. A kill -9 later changes nothing.
	d2.CreateAnswered(other.NetworkID)
	d3, l3 := restart()
	if err := d3.CreateNetwork(createReq()); err == nil || !strings.Contains(err.Error(), "overlaps subnet 198.18.7.0/25 of ournet network bbbbbbbbbbbb") {
		t.Fatalf("an answered network was reclaimed, or the message is off: %v", err)
	}
	if _, ok := l3.bridges["ournet-bbbbbbbb"]; !ok {
		t.Fatal("the answered network's bridge was removed")
	}
	// The IPAM's side (its RequestPool overlaps the pool): an answered
	// network is kept, an unanswered one of an earlier run is removed and
	// its subnets named.
	if got, known := d3.ReclaimUnlearnt(netip.MustParsePrefix("198.18.7.0/24")); got != nil || !known {
		t.Fatalf("the IPAM reclaimed %v (%v) of an answered network", got, known)
	}
	if _, ok := l3.bridges["ournet-bbbbbbbb"]; !ok {
		t.Fatal("the answered network's bridge was removed by the IPAM's reclaim")
	}
	third := createReq()
	third.NetworkID = "cccccccccccc" + nid[12:]
	third.IPv4Data = []*network.IPAMData{{Pool: "198.18.9.0/24"}}
	if err := d3.CreateNetwork(third); err != nil {
		t.Fatal(err)
	}
	if got, known := d3.ReclaimUnlearnt(netip.MustParsePrefix("198.18.9.0/25")); got != nil || !known {
		t.Fatalf("the IPAM reclaimed %v (%v) of this run's network", got, known)
	}
	d4, l4 := restart()
	got, known := d4.ReclaimUnlearnt(netip.MustParsePrefix("198.18.9.0/25"))
	if !slices.Equal(got, []netip.Prefix{netip.MustParsePrefix("198.18.9.0/24")}) || !known {
		t.Fatalf("the IPAM's reclaim of an unlearnt network named %v (%v), want its subnet", got, known)
	}
	if _, ok := l4.bridges["ournet-cccccccc"]; ok {
		t.Fatal("the unlearnt network's bridge was kept")
	}
	if got, known := d4.ReclaimUnlearnt(netip.MustParsePrefix("198.18.9.0/24")); got != nil || known {
		t.Fatalf("a second reclaim named %v (%v)", got, known)
	}
}

// The whole of a create cut short on an engine that gave up on it: the
// plugin saved the network and died before answering, stayed down past
// dockerd's retries, and lost dockerd's ReleasePool of the pool too (its
// empty retry found no orphan). The user's next create of the same subnet
// gets the pool (the IPAM asks the driver, as the plugin wires them) and
// the network, and the leftover bridge is gone.
func TestCreateCutShortAndPoolReleaseLost(t *testing.T) {
	st, err := store.Open(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	start := func() (*Driver, *ipam.Allocator, *fakeLinks) {
		a, err := ipam.New(ipam.Config{}, st)
		if err != nil {
			t.Fatal(err)
		}
		l := &fakeLinks{bridges: map[string]netdev.Bridge{}, veths: map[string]netdev.Veth{}, foreign: map[string]bool{}}
		d := New(Deps{Links: l, Firewall: &fakeFW{nets: map[string]firewall.Network{}}, Sysctls: fakeSysctl{}, Store: st, Pools: a})
		a.SetReclaim(d.ReclaimUnlearnt)
		if err := d.Restore(); err != nil {
			t.Fatal(err)
		}
		return d, a, l
	}
	create := func(d *Driver, a *ipam.Allocator, id string) error {
		pool, err := a.RequestPool(&ipamapi.RequestPoolRequest{Pool: "198.18.7.0/24"})
		if err != nil {
			return err
		}
		if _, err := a.RequestAddress(&ipamapi.RequestAddressRequest{PoolID: pool.PoolID,
			Options: map[string]string{"RequestAddressType": "com.docker.network.gateway"}}); err != nil {
			return err
		}
		req := createReq()
		req.NetworkID = id
		return d.CreateNetwork(req)
	}
	d, a, _ := start()
	if err := create(d, a, nid); err != nil { // never answered: the plugin died
		t.Fatal(err)
	}
	d2, a2, l2 := start()
	if n := a2.SweepOrphans(); n != 0 {
		t.Fatalf("the lost ReleasePool's empty retry freed %d pools", n)
	}
	if err := create(d2, a2, "bbbbbbbbbbbb"+nid[12:]); err != nil {
		t.Fatalf("the next create of the subnet: %v", err)
	}
	if _, ok := l2.bridges["ournet-aaaaaaaa"]; ok {
		t.Fatal("the leftover network's bridge was kept")
	}
	if got := len(a2.Pools()); got != 1 {
		t.Fatalf("%d pools held, want the new network's", got)
	}
}

// An endpoint whose veth is gone while its container runs is plumbed into
// the container again, as it was; one whose container is gone is not.
func TestHealEndpoints(t *testing.T) {
	d, l, _, st := newTestDriver(t)
	if err := d.CreateNetwork(createReq()); err != nil {
		t.Fatal(err)
	}
	gone := "e2" + eid[2:]
	for i, id := range []string{eid, gone} {
		if _, err := d.CreateEndpoint(&network.CreateEndpointRequest{NetworkID: nid, EndpointID: id,
			Interface: &network.EndpointInterface{Address: "198.18.7." + string(rune('5'+i)) + "/24"}}); err != nil {
			t.Fatal(err)
		}
		if _, err := d.Join(&network.JoinRequest{NetworkID: nid, EndpointID: id, SandboxKey: "/run/netns/" + id[:4]}); err != nil {
			t.Fatal(err)
		}
	}
	// eid is its container's gateway (the engine programmed it).
	if err := d.ProgramExternalConnectivity(&network.ProgramExternalConnectivityRequest{NetworkID: nid, EndpointID: eid}); err != nil {
		t.Fatal(err)
	}
	l.sandboxes = map[string]bool{"/run/netns/" + eid[:4]: true}
	d.Reconcile() // learns the interface names
	if ep := storedEndpoint(t, st, eid); ep.Sandbox != "/run/netns/eeee" || ep.IfName != "eth0" {
		t.Fatalf("saved endpoint: sandbox %q, interface %q", ep.Sandbox, ep.IfName)
	}
	delete(l.veths, "ov"+eid[:12])
	delete(l.veths, "ov"+gone[:12])
	d.Reconcile()
	if len(l.plumbed) != 1 {
		t.Fatalf("plumbed %d endpoints, want 1: %+v", len(l.plumbed), l.plumbed)
	}
	p := l.plumbed[0]
	if p.Host != "ov"+eid[:12] || p.IfName != "eth0" || p.Bridge != "ournet-aaaaaaaa" || len(p.Addrs) != 1 ||
		p.Addrs[0].String() != "198.18.7.5/24" || p.GatewayV4.String() != "198.18.7.1" || p.PeerMAC.String() != "02:42:c6:12:07:05" {
		t.Fatalf("plumbed %+v", p)
	}
	// Not the gateway (another network of its container is): no route.
	if err := d.RevokeExternalConnectivity(&network.RevokeExternalConnectivityRequest{NetworkID: nid, EndpointID: eid}); err != nil {
		t.Fatal(err)
	}
	delete(l.veths, "ov"+eid[:12])
	d.Reconcile()
	if len(l.plumbed) != 2 || l.plumbed[1].GatewayV4.IsValid() {
		t.Fatalf("a non-gateway endpoint plumbed again with routes: %+v", l.plumbed)
	}
	status, err := d.Status()
	if err != nil {
		t.Fatal(err)
	}
	healed := map[string]string{}
	for _, es := range status[0].Endpoints {
		healed[es.ID] = es.Healed
	}
	if healed[eid] == "" || healed[gone] != "" {
		t.Fatalf("status says healed: %v", healed)
	}
}

// With the state file unwritable (a disk too full even for the reserve),
// deletes still remove everything in the kernel and keep the deletion in
// memory for the repair loop to write.
func TestDeletesCompleteWithoutTheStore(t *testing.T) {
	d, l, fw, st := newTestDriver(t)
	if err := d.CreateNetwork(createReq()); err != nil {
		t.Fatal(err)
	}
	if _, err := d.CreateEndpoint(&network.CreateEndpointRequest{NetworkID: nid, EndpointID: eid,
		Interface: &network.EndpointInterface{Address: "198.18.7.5/24"}}); err != nil {
		t.Fatal(err)
	}
	st.Close() // every write fails from here on
	if err := d.DeleteEndpoint(&network.DeleteEndpointRequest{NetworkID: nid, EndpointID: eid}); err != nil {
		t.Fatalf("DeleteEndpoint with the store failing: %v", err)
	}
	if err := d.DeleteNetwork(&network.DeleteNetworkRequest{NetworkID: nid}); err != nil {
		t.Fatalf("DeleteNetwork with the store failing: %v", err)
	}
	if len(l.bridges)+len(l.veths)+len(fw.nets) != 0 {
		t.Fatalf("left in the kernel: %v %v %v", l.bridges, l.veths, fw.nets)
	}
	if n := d.Unsaved(); n != 2 {
		t.Fatalf("deletions kept in memory: %d, want 2", n)
	}
	// A create fails cleanly meanwhile.
	if err := d.CreateNetwork(createReq()); err == nil || len(l.bridges) != 0 {
		t.Fatalf("create with the store failing: %v, bridges %v", err, l.bridges)
	}
}

// DeleteLeftEndpoints (an empty DeleteEndpoint retry whose call is not
// known) deletes the endpoints the engine left, and only those: one being
// created, one joined, and one left then joined again stay.
func TestDeleteLeftEndpoints(t *testing.T) {
	d, l, _, st := newTestDriver(t)
	if err := d.CreateNetwork(createReq()); err != nil {
		t.Fatal(err)
	}
	ids := []string{"a1" + eid[2:], "b2" + eid[2:], "c3" + eid[2:], "d4" + eid[2:]}
	for i, id := range ids {
		if _, err := d.CreateEndpoint(&network.CreateEndpointRequest{NetworkID: nid, EndpointID: id,
			Interface: &network.EndpointInterface{Address: fmt.Sprintf("198.18.7.%d/24", 10+i)}}); err != nil {
			t.Fatal(err)
		}
	}
	join := func(id string) {
		if _, err := d.Join(&network.JoinRequest{NetworkID: nid, EndpointID: id, SandboxKey: "/run/netns/" + id[:2]}); err != nil {
			t.Fatal(err)
		}
	}
	leave := func(id string) {
		if err := d.Leave(&network.LeaveRequest{NetworkID: nid, EndpointID: id}); err != nil {
			t.Fatal(err)
		}
	}
	// ids[0] only created; ids[1] joined; ids[2] joined and left; ids[3]
	// joined, left and joined again (the engine's sandbox refresh).
	join(ids[1])
	join(ids[2])
	leave(ids[2])
	join(ids[3])
	leave(ids[3])
	join(ids[3])
	d.DeleteLeftEndpoints()
	for i, id := range ids {
		_, has := l.veths["ov"+id[:12]]
		if want := i != 2; has != want {
			t.Errorf("endpoint %d: veth kept = %v, want %v", i, has, want)
		}
	}
	eps, _ := store.LoadAll[Endpoint](st, bucketEndpoints)
	if _, ok := eps[ids[2]]; ok || len(eps) != 3 {
		t.Fatalf("state after the sweep: %v", eps)
	}
	// Its own DeleteEndpoint arriving after: already gone, success.
	if err := d.DeleteEndpoint(&network.DeleteEndpointRequest{NetworkID: nid, EndpointID: ids[2]}); err != nil {
		t.Fatal(err)
	}
}

// Watch: an announced rule change is a full round; a link change is a
// links round (no rules read) unless it repairs something; the timer
// alone compares nothing while changes are announced, and everything
// where they are not.
func TestWatchRounds(t *testing.T) {
	d, l, fw, _ := newTestDriver(t)
	if err := d.CreateNetwork(createReq()); err != nil {
		t.Fatal(err)
	}
	rules, links := make(chan struct{}, 1), make(chan struct{}, 1)
	stop := make(chan struct{})
	alsoRan := atomic.Int32{}
	var namesMu sync.Mutex
	changed := map[string]bool{}
	linkNames := func() (map[string]bool, bool) {
		namesMu.Lock()
		defer namesMu.Unlock()
		out := changed
		changed = map[string]bool{}
		return out, false
	}
	name := func(n string) {
		namesMu.Lock()
		defer namesMu.Unlock()
		changed[n] = true
	}
	watching := make(chan struct{})
	go func() {
		defer close(watching)
		d.Watch(WatchConfig{Every: 20 * time.Millisecond, Recheck: time.Hour, Rules: rules, Links: links, LinkNames: linkNames}, stop, func() { alsoRan.Add(1) })
	}()
	// The store closes when the test ends: Watch must be gone by then.
	defer func() { close(stop); <-watching }()
	wait := func(what string, ok func() bool) {
		t.Helper()
		for end := time.Now().Add(2 * time.Second); !ok(); time.Sleep(5 * time.Millisecond) {
			if time.Now().After(end) {
				t.Fatalf("%s: never happened", what)
			}
		}
	}
	wait("the timer's housekeeping", func() bool { return alsoRan.Load() >= 3 })
	if n := fw.rounds.Load(); n != 0 {
		t.Fatalf("%d full rounds with nothing announced", n)
	}
	rules <- struct{}{}
	wait("a full round after a rule change", func() bool { return fw.rounds.Load() == 1 })
	links <- struct{}{}
	time.Sleep(100 * time.Millisecond)
	if n := fw.rounds.Load(); n != 1 {
		t.Fatalf("a link change that needed nothing ran %d full rounds", n-1)
	}
	// The bridge deleted by hand: a links round about another link leaves
	// it (it looks only at the links named); the one about it makes it
	// again, then a full round follows (after the gap since the last).
	d.mu.Lock()
	delete(l.bridges, "ournet-aaaaaaaa")
	d.mu.Unlock()
	name("ovsomethingelse")
	links <- struct{}{}
	time.Sleep(100 * time.Millisecond)
	d.mu.Lock()
	_, back := l.bridges["ournet-aaaaaaaa"]
	d.mu.Unlock()
	if back {
		t.Fatal("a links round about another link looked at the bridge")
	}
	name("ournet-aaaaaaaa")
	links <- struct{}{}
	wait("the bridge made again", func() bool {
		d.mu.Lock()
		defer d.mu.Unlock()
		_, ok := l.bridges["ournet-aaaaaaaa"]
		return ok
	})
	wait("a full round after the repair", func() bool { return fw.rounds.Load() == 2 })
	// Two rule changes at once: one round now, the next one after the gap.
	rules <- struct{}{}
	start := time.Now()
	wait("a round for the first change", func() bool { return fw.rounds.Load() >= 3 })
	rules <- struct{}{}
	wait("a round for the second change", func() bool { return fw.rounds.Load() >= 4 })
	if d := time.Since(start); d < fullGap/2 {
		t.Fatalf("the second round came %v after the first: not spaced", d)
	}

	// Nothing announced: the timer compares everything.
	d2, _, fw2, _ := newTestDriver(t)
	stop2, watching2 := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(watching2)
		d2.Watch(WatchConfig{Every: 20 * time.Millisecond}, stop2)
	}()
	defer func() { close(stop2); <-watching2 }()
	wait("polling rounds", func() bool { return fw2.rounds.Load() >= 3 })
}

// goneNets records what the driver tells the IPAM of deleted networks and
// endpoints.
type goneNets struct {
	made    []netip.Prefix
	subnets []netip.Prefix
	addrs   []string
}

func (g *goneNets) NetworkMade(s []netip.Prefix) { g.made = append(g.made, s...) }
func (g *goneNets) NetworkGone(s []netip.Prefix) { g.subnets = append(g.subnets, s...) }
func (g *goneNets) EndpointGone(s netip.Prefix, a netip.Addr) {
	g.addrs = append(g.addrs, s.String()+" "+a.String())
}

// CreateNetwork tells the IPAM which pools the network uses (one with no
// gateway asks for no address); DeleteNetwork which it used, so a
// ReleasePool lost to a restart cannot hold them for ever.
func TestDeleteNetworkTellsThePools(t *testing.T) {
	d, _, _, _ := newTestDriver(t)
	gone := &goneNets{}
	d.pools = gone
	if err := d.CreateNetwork(createReq()); err != nil {
		t.Fatal(err)
	}
	if len(gone.made) != 1 || gone.made[0].String() != "198.18.7.0/24" {
		t.Fatalf("CreateNetwork told the IPAM %v, want 198.18.7.0/24", gone.made)
	}
	// And which address each deleted endpoint used, with its pool: one
	// deleted on its own, one with the network.
	for i, a := range []string{"198.18.7.5/24", "198.18.7.6/24"} {
		if _, err := d.CreateEndpoint(&network.CreateEndpointRequest{NetworkID: nid, EndpointID: fmt.Sprintf("e%d", i) + eid[2:],
			Interface: &network.EndpointInterface{Address: a}}); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 2; i++ {
		if err := d.DeleteEndpoint(&network.DeleteEndpointRequest{NetworkID: nid, EndpointID: "e0" + eid[2:]}); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 2; i++ { // the second delete finds nothing to tell
		if err := d.DeleteNetwork(&network.DeleteNetworkRequest{NetworkID: nid}); err != nil {
			t.Fatal(err)
		}
	}
	if len(gone.subnets) != 1 || gone.subnets[0].String() != "198.18.7.0/24" {
		t.Fatalf("told the IPAM %v, want 198.18.7.0/24", gone.subnets)
	}
	if got := strings.Join(gone.addrs, ", "); got != "198.18.7.0/24 198.18.7.5, 198.18.7.0/24 198.18.7.6" {
		t.Fatalf("told the IPAM of addresses %q", got)
	}
	// A network whose pool another IPAM driver gave: nothing to tell, a
	// pool of the same subnet in ournet's IPAM is another network's.
	gone.subnets, gone.addrs = nil, nil
	req := createReq()
	req.IPv4Data[0].AddressSpace = "LocalDefault"
	if err := d.CreateNetwork(req); err != nil {
		t.Fatal(err)
	}
	if _, err := d.CreateEndpoint(&network.CreateEndpointRequest{NetworkID: nid, EndpointID: eid,
		Interface: &network.EndpointInterface{Address: "198.18.7.5/24"}}); err != nil {
		t.Fatal(err)
	}
	if err := d.DeleteEndpoint(&network.DeleteEndpointRequest{NetworkID: nid, EndpointID: eid}); err != nil {
		t.Fatal(err)
	}
	if err := d.DeleteNetwork(&network.DeleteNetworkRequest{NetworkID: nid}); err != nil {
		t.Fatal(err)
	}
	if len(gone.subnets) != 0 || len(gone.addrs) != 0 {
		t.Fatalf("told ournet's IPAM of another IPAM's pool: %v %v", gone.subnets, gone.addrs)
	}
}
