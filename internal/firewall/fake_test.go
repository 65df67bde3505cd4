package firewall

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/ournet/ournet/internal/iptables"
)

// These run without root, over iptables.Fake; the *InNetns tests show the
// same on the kernel.

func fakeFirewall(t *testing.T) (*Firewall, *iptables.Fake) {
	t.Helper()
	k := iptables.NewFake()
	// dockerd's chains, as it leaves them.
	for _, f := range []iptables.Family{iptables.IPv4, iptables.IPv6} {
		if err := k.Restore(f, "*filter\n:DOCKER-USER - [0:0]\n:DOCKER - [0:0]\n-A FORWARD -j DOCKER-USER\n-A FORWARD -o docker0 -j DOCKER\nCOMMIT\n"); err != nil {
			t.Fatal(err)
		}
	}
	fw := New(k, iptables.IPv4, iptables.IPv6)
	if err := fw.Setup(); err != nil {
		t.Fatal(err)
	}
	if err := fw.EnsureForeignBridges(nil); err != nil {
		t.Fatal(err)
	}
	return fw, k
}

func dumpAll(t *testing.T, k *iptables.Fake) string {
	t.Helper()
	var b strings.Builder
	for _, f := range []iptables.Family{iptables.IPv4, iptables.IPv6} {
		for _, table := range []string{"filter", "mangle", "nat", "raw"} {
			d, err := k.Save(f, table)
			if err != nil {
				t.Fatal(err)
			}
			b.WriteString(f.String() + " " + d)
		}
	}
	return b.String()
}

// Setup writes nothing when all is in place, and puts the FORWARD jump
// back right after DOCKER-USER when dockerd's restart put its rules above.
func TestSetupWithoutRoot(t *testing.T) {
	fw, k := fakeFirewall(t)
	fwd, _ := k.Rules(iptables.IPv4, "filter", "FORWARD")
	if !slices.Equal(fwd, []string{"-A FORWARD -j DOCKER-USER", "-A FORWARD -j " + ForwardChain, "-A FORWARD -o docker0 -j DOCKER"}) {
		t.Fatalf("FORWARD = %q", fwd)
	}
	before := k.Restores
	if err := fw.Setup(); err != nil || k.Restores != before {
		t.Fatalf("Setup again: %v, %d restores", err, k.Restores-before)
	}
	// dockerd's restart: its rules, then its jump, on top.
	if err := k.Restore(iptables.IPv4, "*filter\n-I FORWARD 1 -i docker0 -j ACCEPT\n-D FORWARD -j DOCKER-USER\n-I FORWARD 1 -j DOCKER-USER\n-A "+ForwardChain+" -i brx -j ACCEPT\nCOMMIT\n"); err != nil {
		t.Fatal(err)
	}
	if err := fw.Setup(); err != nil {
		t.Fatal(err)
	}
	fwd, _ = k.Rules(iptables.IPv4, "filter", "FORWARD")
	if len(fwd) != 4 || fwd[0] != "-A FORWARD -j DOCKER-USER" || fwd[1] != "-A FORWARD -j "+ForwardChain {
		t.Fatalf("FORWARD after dockerd's restart and Setup = %q", fwd)
	}
	if got, _ := k.Rules(iptables.IPv4, "filter", ForwardChain); !slices.Equal(got, forwardRules) {
		t.Fatalf("OURNET-FORWARD = %q", got)
	}
	// The cleaner: an older layout's chains and jumps go.
	old := "OURNET-O-" + iptables.Short(cases[0].n.ID)
	if err := k.Restore(iptables.IPv4, "*filter\n:"+old+" - [0:0]\n-A "+ForwardChain+" -i br0 -j "+old+"\n-A FORWARD -j "+old+"\nCOMMIT\n*nat\n:OURNET-N-x - [0:0]\n-A "+PostroutingChain+" -j OURNET-N-x\nCOMMIT\n"); err != nil {
		t.Fatal(err)
	}
	if err := fw.Setup(); err != nil {
		t.Fatal(err)
	}
	if d := dumpAll(t, k); strings.Contains(d, "OURNET-O-") || strings.Contains(d, "OURNET-N-") {
		t.Fatalf("older layout left after Setup:\n%s", d)
	}
}

// Adding every network twice changes nothing the second time and reads no
// table (the cache); deleting them restores the tables exactly; a stale
// cache (a line deleted by someone else) costs one retry, not a failure.
func TestNetworksWithoutRoot(t *testing.T) {
	fw, k := fakeFirewall(t)
	empty := dumpAll(t, k)
	var nets []Network
	for _, c := range cases {
		nets = append(nets, c.n)
		if err := fw.AddNetwork(c.n); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
	}
	all := dumpAll(t, k)
	saves := k.Saves
	for _, c := range cases {
		if err := fw.AddNetwork(c.n); err != nil {
			t.Fatal(err)
		}
	}
	if k.Saves != saves {
		t.Errorf("adding networks again read %d tables; the cache should have answered", k.Saves-saves)
	}
	if got := dumpAll(t, k); got != all {
		t.Fatalf("adding again changed the rules:\n%s\nwant\n%s", got, all)
	}
	if d, err := fw.Drifted(nets); err != nil || len(d) != 0 {
		t.Fatalf("fresh rules drifted: %v %v", d, err)
	}
	if ids, err := fw.OwnedNetworks(); err != nil || len(ids) != len(cases) || !ids["0123456789ab"] {
		t.Fatalf("OwnedNetworks = %v, %v", ids, err)
	}
	// Someone else deletes a line of network 0 behind the cache's back.
	out := "-A " + OutofChain + " -i " + cases[0].n.Bridge + " " + tag(cases[0].n.ID) + " -j " + ForeignChain
	if err := k.Restore(iptables.IPv4, "*filter\n"+iptables.DeleteLine(out)+"\nCOMMIT\n"); err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		if err := fw.DelNetwork(c.n.ID); err != nil {
			t.Fatalf("del %s: %v", c.name, err)
		}
		if err := fw.DelNetwork(c.n.ID); err != nil {
			t.Fatalf("del %s again: %v", c.name, err)
		}
	}
	if got := dumpAll(t, k); got != empty {
		t.Fatalf("after removing every network:\n%s\nwant\n%s", got, empty)
	}
	// A restore that fails twice is reported, naming the family.
	k.Fail = func(iptables.Family, string) error { return errFake }
	if err := fw.AddNetwork(cases[0].n); err == nil || !strings.Contains(err.Error(), "iptables: adding the rules of 1 network(s): fake failure") {
		t.Fatalf("failing restore = %v", err)
	}
}

type fakeErr string

func (e fakeErr) Error() string { return string(e) }

const errFake = fakeErr("fake failure")

// Drift: a flushed chain, a deleted line, a foreign tagged line are seen,
// network by network, and AddNetwork repairs them.
func TestDriftWithoutRoot(t *testing.T) {
	fw, k := fakeFirewall(t)
	var nets []Network
	for _, c := range cases {
		nets = append(nets, c.n)
	}
	if err := fw.AddNetworks(nets); err != nil {
		t.Fatal(err)
	}
	masq, _ := k.Rules(iptables.IPv4, "nat", PostroutingChain)
	damage := "*filter\n-F " + inChain(cases[0].n.ID) + "\nCOMMIT\n*nat\n" + iptables.DeleteLine(masq[1]) + "\nCOMMIT\n" +
		"*mangle\n-A " + GuardChain + " " + tag(cases[2].n.ID) + " -j DROP\nCOMMIT\n"
	if err := k.Restore(iptables.IPv4, damage); err != nil {
		t.Fatal(err)
	}
	d, err := fw.Drifted(nets)
	if err != nil || len(d) != 3 || d[0].ID != cases[0].n.ID || d[1].ID != cases[1].n.ID || d[2].ID != cases[2].n.ID {
		t.Fatalf("Drifted = %v, %v; want the three damaged networks", d, err)
	}
	for _, n := range d {
		if err := fw.AddNetwork(n); err != nil {
			t.Fatal(err)
		}
	}
	if d, err := fw.Drifted(nets); err != nil || len(d) != 0 {
		t.Fatalf("repaired rules still drifted: %v %v", d, err)
	}
}

// OURNET-FOREIGN is rewritten only when it differs; Teardown leaves no
// ournet chain in any table (published ports' included).
func TestForeignAndTeardownWithoutRoot(t *testing.T) {
	fw, k := fakeFirewall(t)
	before := k.Restores
	if err := fw.EnsureForeignBridges(nil); err != nil || k.Restores != before {
		t.Fatalf("EnsureForeignBridges with nothing to do: %v, %d restores", err, k.Restores-before)
	}
	if err := fw.EnsureForeignBridges([]string{"mybr0"}); err != nil {
		t.Fatal(err)
	}
	got, _ := k.Rules(iptables.IPv4, "filter", ForeignChain)
	if len(got) != 7 || !slices.Contains(got, "-A "+ForeignChain+" -o mybr0 -j DROP") || got[6] != "-A "+ForeignChain+" -j ACCEPT" {
		t.Fatalf("OURNET-FOREIGN = %q", got)
	}
	if err := fw.AddNetwork(cases[0].n); err != nil {
		t.Fatal(err)
	}
	if err := k.Restore(iptables.IPv4, "*raw\n:"+iptables.LocalhostChain+" - [0:0]\n-I PREROUTING 1 -j "+iptables.LocalhostChain+"\nCOMMIT\n"); err != nil {
		t.Fatal(err)
	}
	if err := fw.Teardown(); err != nil {
		t.Fatal(err)
	}
	if d := dumpAll(t, k); strings.Contains(d, "OURNET") {
		t.Fatalf("after Teardown:\n%s", d)
	}
}

// The VXLAN guard: asked again with the same hosts it reads nothing; after
// a Setup (a repair round) it reads, and repairs a flushed chain; removed,
// it stays removed without a read.
func TestVXLANGuardWithoutRoot(t *testing.T) {
	fw, k := fakeFirewall(t)
	local := netip.MustParseAddr("203.0.113.11")
	hosts := []netip.Addr{netip.MustParseAddr("203.0.113.12")}
	if err := fw.EnsureVXLAN(4789, "eth1", local, hosts, false); err != nil {
		t.Fatal(err)
	}
	want, _ := k.Rules(iptables.IPv4, "raw", VXLANChain)
	saves := k.Saves
	if err := fw.EnsureVXLAN(4789, "eth1", local, hosts, false); err != nil || k.Saves != saves {
		t.Fatalf("the same guard again: %v, %d tables read", err, k.Saves-saves)
	}
	if err := k.Restore(iptables.IPv4, "*raw\n-F "+VXLANChain+"\nCOMMIT\n"); err != nil {
		t.Fatal(err)
	}
	if err := fw.Setup(); err != nil {
		t.Fatal(err)
	}
	if err := fw.EnsureVXLAN(4789, "eth1", local, hosts, false); err != nil {
		t.Fatal(err)
	}
	if got, _ := k.Rules(iptables.IPv4, "raw", VXLANChain); !slices.Equal(got, want) {
		t.Fatalf("guard after a flush and a repair round = %q, want %q", got, want)
	}
	if err := fw.DelVXLAN(); err != nil {
		t.Fatal(err)
	}
	saves = k.Saves
	if err := fw.DelVXLAN(); err != nil || k.Saves != saves {
		t.Fatalf("removing a removed guard: %v, %d tables read", err, k.Saves-saves)
	}
	if _, ok := k.Rules(iptables.IPv4, "raw", VXLANChain); ok {
		t.Fatal("guard still there")
	}
}
