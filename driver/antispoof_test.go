package driver

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/docker/go-plugins-helpers/network"
	"github.com/google/nftables"

	"github.com/ournet/ournet/internal/antispoof"
	"github.com/ournet/ournet/internal/firewall"
	"github.com/ournet/ournet/internal/netdev"
	"github.com/ournet/ournet/internal/nft"
)

// fakeSpoof records the checks by port, as the kernel would hold them.
type fakeSpoof struct {
	ports   map[string]antispoof.Endpoint
	failAdd error
	adds    int
	syncs   int
}

func newFakeSpoof() *fakeSpoof { return &fakeSpoof{ports: map[string]antispoof.Endpoint{}} }

func (f *fakeSpoof) Add(ep antispoof.Endpoint) error {
	if f.failAdd != nil {
		return f.failAdd
	}
	f.adds++
	f.ports[ep.Port] = ep
	return nil
}
func (f *fakeSpoof) Del(port string) error { delete(f.ports, port); return nil }
func (f *fakeSpoof) Sync(eps []antispoof.Endpoint, keep ...string) error {
	f.syncs++
	old := f.ports
	f.ports = map[string]antispoof.Endpoint{}
	for _, p := range keep {
		if ep, ok := old[p]; ok {
			f.ports[p] = ep
		}
	}
	for _, ep := range eps {
		f.ports[ep.Port] = ep
	}
	return nil
}

func (f *fakeSpoof) Ports() ([]string, bool, error) { return f.portList(), false, nil }

func (f *fakeSpoof) portList() []string {
	var out []string
	for p := range f.ports {
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}

const nid2 = "bbbbbbbbbbbb0000000000000000000000000000000000000000000000000000"
const eid2 = "e2e2e2e2e2e20000000000000000000000000000000000000000000000000000"

// dualStackReq is nid2 on 198.18.90.0/24 and 2001:db8:90::/64.
func dualStackReq(opts ...string) *network.CreateNetworkRequest {
	return &network.CreateNetworkRequest{
		NetworkID: nid2, Options: generic(opts...),
		IPv4Data: []*network.IPAMData{{Pool: "198.18.90.0/24", Gateway: "198.18.90.1/24"}},
		IPv6Data: []*network.IPAMData{{Pool: "2001:db8:90::/64", Gateway: "2001:db8:90::1/64"}},
	}
}

func epReq(netID, epID, v4, v6 string) *network.CreateEndpointRequest {
	return &network.CreateEndpointRequest{NetworkID: netID, EndpointID: epID,
		Interface: &network.EndpointInterface{Address: v4, AddressIPv6: v6}}
}

func TestAntiSpoofFollowsEndpoints(t *testing.T) {
	d, _, _, _ := newTestDriver(t)
	sp := newFakeSpoof()
	d.setAntiSpoof(sp)
	if err := d.CreateNetwork(dualStackReq()); err != nil {
		t.Fatal(err)
	}
	res, err := d.CreateEndpoint(epReq(nid2, eid2, "198.18.90.5/24", "2001:db8:90::5/64"))
	if err != nil {
		t.Fatal(err)
	}
	port := hostVethName(eid2)
	got, ok := sp.ports[port]
	want := antispoof.Endpoint{Port: port, IPv4: netip.MustParseAddr("198.18.90.5"), IPv6: netip.MustParseAddr("2001:db8:90::5")}
	if !ok || got.MAC.String() != res.Interface.MacAddress || got.IPv4 != want.IPv4 || got.IPv6 != want.IPv6 {
		t.Fatalf("checks after CreateEndpoint = %+v (present %v), want %+v with MAC %s", got, ok, want, res.Interface.MacAddress)
	}
	if _, err := d.Join(&network.JoinRequest{NetworkID: nid2, EndpointID: eid2}); err != nil {
		t.Fatal(err)
	}
	if sp.adds != 2 {
		t.Fatalf("Join must reinstall the checks (idempotent): %d adds, want 2", sp.adds)
	}
	if err := d.DeleteEndpoint(&network.DeleteEndpointRequest{NetworkID: nid2, EndpointID: eid2}); err != nil {
		t.Fatal(err)
	}
	if len(sp.ports) != 0 {
		t.Fatalf("checks remain after DeleteEndpoint: %v", sp.portList())
	}
}

func TestAntiSpoofOffProgramsNothing(t *testing.T) {
	d, _, _, _ := newTestDriver(t)
	sp := newFakeSpoof()
	d.setAntiSpoof(sp)
	if err := d.CreateNetwork(dualStackReq(optAntiSpoofing, "false")); err != nil {
		t.Fatal(err)
	}
	if _, err := d.CreateEndpoint(epReq(nid2, eid2, "198.18.90.5/24", "")); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Join(&network.JoinRequest{NetworkID: nid2, EndpointID: eid2}); err != nil {
		t.Fatal(err)
	}
	if sp.adds != 0 || len(sp.ports) != 0 {
		t.Fatalf("anti_spoofing=false, yet checks were installed: %v", sp.portList())
	}
}

// A failure to install the checks fails the endpoint and leaves nothing.
func TestAntiSpoofFailureUndoesEndpoint(t *testing.T) {
	d, l, _, _ := newTestDriver(t)
	sp := newFakeSpoof()
	d.setAntiSpoof(sp)
	if err := d.CreateNetwork(dualStackReq()); err != nil {
		t.Fatal(err)
	}
	sp.failAdd = errors.New("nftables exploded")
	_, err := d.CreateEndpoint(epReq(nid2, eid2, "198.18.90.5/24", ""))
	if err == nil || !strings.Contains(err.Error(), "anti-spoofing") || !strings.Contains(err.Error(), "nftables exploded") {
		t.Fatalf("CreateEndpoint with failing checks: %v", err)
	}
	if len(l.veths) != 0 || len(d.endpoints) != 0 || len(sp.ports) != 0 {
		t.Fatalf("left behind: veths %v, endpoints %d, checks %v", l.veths, len(d.endpoints), sp.portList())
	}
}

// Restore installs the checks of every known endpoint of a network that
// has them on, and of no other.
func TestRestoreSyncsAntiSpoof(t *testing.T) {
	d, _, _, st := newTestDriver(t)
	if err := d.CreateNetwork(dualStackReq()); err != nil {
		t.Fatal(err)
	}
	if err := d.CreateNetwork(createReq(optAntiSpoofing, "false")); err != nil {
		t.Fatal(err)
	}
	for _, r := range []*network.CreateEndpointRequest{
		epReq(nid2, eid2, "198.18.90.5/24", ""), epReq(nid, eid, "198.18.7.5/24", ""),
	} {
		if _, err := d.CreateEndpoint(r); err != nil {
			t.Fatal(err)
		}
	}
	l2 := &fakeLinks{bridges: map[string]netdev.Bridge{}, veths: map[string]netdev.Veth{}, foreign: map[string]bool{}}
	d2 := New(Deps{Links: l2, Firewall: &fakeFW{nets: map[string]firewall.Network{}}, Sysctls: fakeSysctl{}, Store: st})
	sp := newFakeSpoof()
	sp.ports["ovstale"] = antispoof.Endpoint{Port: "ovstale"}
	d2.setAntiSpoof(sp)
	if err := d2.Restore(); err != nil {
		t.Fatal(err)
	}
	if got := sp.portList(); sp.syncs != 1 || !slices.Equal(got, []string{hostVethName(eid2)}) {
		t.Fatalf("after restore: %d syncs, checks on %v; want 1 sync, checks on %s only", sp.syncs, got, hostVethName(eid2))
	}
}

// Reconcile puts back checks lost behind ournet's back, and only then.
func TestReconcileRepairsAntiSpoof(t *testing.T) {
	d, _, _, _ := newTestDriver(t)
	sp := newFakeSpoof()
	d.setAntiSpoof(sp)
	if err := d.CreateNetwork(dualStackReq()); err != nil {
		t.Fatal(err)
	}
	if _, err := d.CreateEndpoint(epReq(nid2, eid2, "198.18.90.5/24", "")); err != nil {
		t.Fatal(err)
	}
	d.Reconcile()
	if sp.syncs != 0 {
		t.Fatalf("Reconcile synced %d times with nothing lost", sp.syncs)
	}
	sp.ports = map[string]antispoof.Endpoint{} // nft flush ruleset
	d.Reconcile()
	if got := sp.portList(); sp.syncs != 1 || !slices.Equal(got, []string{hostVethName(eid2)}) {
		t.Fatalf("after Reconcile: %d syncs, checks on %v; want them back on %s", sp.syncs, got, hostVethName(eid2))
	}
}

// The anti-spoofing table replaced by one of another shape, where every
// Add fails (over the real Filter and nft.Fake): a repair round rebuilds
// it, so the next container starts, with or without endpoints in the
// network, and with a removal queued that cannot be done in that table
// (it once made every round give up before rebuilding).
func TestReconcileRebuildsAlteredSpoofTable(t *testing.T) {
	eidB, eidC := "b"+eid2[1:], "c"+eid2[1:]
	for _, tc := range []struct {
		name      string
		endpoints int
		deleteOne bool
	}{{"no endpoints", 0, false}, {"two endpoints", 2, false}, {"one of two deleted", 2, true}} {
		t.Run(tc.name, func(t *testing.T) {
			d, _, _, _ := newTestDriver(t)
			k := nft.NewFake()
			d.setAntiSpoof(antispoof.NewWith(k.Dial))
			if err := d.CreateNetwork(dualStackReq()); err != nil {
				t.Fatal(err)
			}
			for i, id := range []string{eid2, eidB}[:tc.endpoints] {
				if _, err := d.CreateEndpoint(epReq(nid2, id, fmt.Sprintf("198.18.90.%d/24", 5+i), "")); err != nil {
					t.Fatal(err)
				}
			}
			conn, _ := k.Dial()
			tbl := &nftables.Table{Name: antispoof.TableName, Family: nftables.TableFamilyBridge}
			conn.AddTable(tbl)
			conn.DelTable(tbl)
			conn.AddTable(tbl)
			conn.AddChain(&nftables.Chain{Name: antispoof.BaseChain, Table: tbl, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookInput})
			if err := conn.Flush(); err != nil {
				t.Fatal(err)
			}
			if tc.deleteOne {
				if err := d.DeleteEndpoint(&network.DeleteEndpointRequest{NetworkID: nid2, EndpointID: eidB}); err != nil {
					t.Fatal(err)
				}
			}
			d.Reconcile()
			if _, err := d.CreateEndpoint(epReq(nid2, eidC, "198.18.90.9/24", "")); err != nil {
				t.Fatalf("CreateEndpoint after a repair round: %v", err)
			}
		})
	}
}

// A stray endpoint (its veth marked as ournet's, its ID in neither the
// state nor the journal: a container newer than the backup the state was
// restored from) keeps its anti-spoofing checks through the restore and
// the repair rounds; they go with its DeleteEndpoint, or with its veth.
func TestRestoreKeepsStrayEndpointsChecks(t *testing.T) {
	d, l, fw, st := newTestDriver(t)
	k := nft.NewFake()
	d.setAntiSpoof(antispoof.NewWith(k.Dial))
	if err := d.CreateNetwork(dualStackReq()); err != nil {
		t.Fatal(err)
	}
	eidB, eidC := "b"+eid2[1:], "c"+eid2[1:]
	for i, id := range []string{eid2, eidB, eidC} {
		if _, err := d.CreateEndpoint(epReq(nid2, id, fmt.Sprintf("198.18.90.%d/24", 5+i), "")); err != nil {
			t.Fatal(err)
		}
	}
	// The state forgets B and C, and nothing says they were being deleted.
	d.mu.Lock()
	for _, id := range []string{eidB, eidC} {
		d.forget("endpoint", bucketEndpoints, id)
		d.journalDone(id)
	}
	d.mu.Unlock()

	d2 := New(Deps{Links: l, Firewall: fw, Sysctls: fakeSysctl{}, Store: st, AntiSpoof: antispoof.NewWith(k.Dial)})
	if err := d2.Restore(); err != nil {
		t.Fatal(err)
	}
	checked := func() []string {
		t.Helper()
		got, altered, err := antispoof.NewWith(k.Dial).Ports()
		if err != nil || altered {
			t.Fatalf("listing the checks: %v (altered %v)", err, altered)
		}
		return got
	}
	a, b, c := hostVethName(eid2), hostVethName(eidB), hostVethName(eidC) // b and c sort first
	if got := checked(); !slices.Equal(got, []string{b, c, a}) {
		t.Fatalf("after the restore: checks on %v, want %s and the strays %s, %s", got, a, b, c)
	}
	d2.Reconcile()
	if got := checked(); !slices.Equal(got, []string{b, c, a}) {
		t.Fatalf("after a repair round: checks on %v, want %s and the strays %s, %s", got, a, b, c)
	}
	// dockerd removes B's container.
	if err := d2.DeleteEndpoint(&network.DeleteEndpointRequest{NetworkID: nid2, EndpointID: eidB}); err != nil {
		t.Fatal(err)
	}
	if _, ok := l.veths[b]; ok {
		t.Fatal("the stray's veth outlived its DeleteEndpoint")
	}
	if err := d2.spoof.(*antispoof.Filter).Settle(); err != nil {
		t.Fatal(err)
	}
	if got := checked(); !slices.Equal(got, []string{c, a}) {
		t.Fatalf("after the stray's DeleteEndpoint: checks on %v, want %s and %s", got, c, a)
	}
	if s := strings.Join(d2.strays, "; "); strings.Contains(s, b) {
		t.Fatalf("the deleted stray is still reported: %s", s)
	}
	delete(l.veths, c) // C's veth goes without a word from dockerd
	d2.Reconcile()
	if got := checked(); !slices.Equal(got, []string{a}) {
		t.Fatalf("after the stray's veth went: checks on %v, want only %s", got, a)
	}
}
