package firewall

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables"

	"github.com/ournet/ournet/internal/iptables"
	"github.com/ournet/ournet/internal/nft"
)

// These run without root, over iptables.Fake and nft.Fake; the *InNetns
// tests show the same on the kernel.

func fakeFirewall(t *testing.T) (*Firewall, *iptables.Fake, *nft.Fake) {
	t.Helper()
	k := iptables.NewFake()
	// dockerd's chains, as it leaves them.
	for _, f := range []iptables.Family{iptables.IPv4, iptables.IPv6} {
		if err := k.Restore(f, "*filter\n:DOCKER-USER - [0:0]\n:DOCKER - [0:0]\n-A FORWARD -j DOCKER-USER\n-A FORWARD -o docker0 -j DOCKER\nCOMMIT\n"); err != nil {
			t.Fatal(err)
		}
	}
	kn := nft.NewFake()
	fw := New(k, kn.Dial, iptables.IPv4, iptables.IPv6)
	if err := fw.Setup(); err != nil {
		t.Fatal(err)
	}
	return fw, k, kn
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

// fakeRules lists the comments of a chain of the table.
func fakeRules(t *testing.T, kn *nft.Fake, chain string) []string {
	t.Helper()
	rules, ok := kn.Rules(table, chain)
	if !ok {
		return nil
	}
	out := []string{}
	for _, r := range rules {
		out = append(out, commentOf(r))
	}
	return out
}

func ruleComments(rs []nftRule) []string {
	out := []string{}
	for _, r := range rs {
		out = append(out, r.comment)
	}
	return out
}

// fakeElems lists every element of the table's sets, as "set key/end
// comment" strings, sorted.
func fakeElems(t *testing.T, kn *nft.Fake) []string {
	t.Helper()
	c, _ := kn.Dial()
	var out []string
	for _, d := range allSets {
		el, _ := c.GetSetElements(d.set())
		for _, e := range fromKernel(d, el) {
			out = append(out, fmt.Sprintf("%s %x/%x %s", d.name, e.key, e.end, e.comment))
		}
	}
	slices.Sort(out)
	return out
}

// Setup writes nothing when all is in place, puts the FORWARD jump back
// right after DOCKER-USER when dockerd's restart put its rules above, and
// removes the older layouts' chains.
func TestSetupWithoutRoot(t *testing.T) {
	fw, k, kn := fakeFirewall(t)
	fwd, _ := k.Rules(iptables.IPv4, "filter", "FORWARD")
	if !slices.Equal(fwd, []string{"-A FORWARD -j DOCKER-USER", "-A FORWARD -j " + ForwardChain, "-A FORWARD -o docker0 -j DOCKER"}) {
		t.Fatalf("FORWARD = %q", fwd)
	}
	if got := fakeRules(t, kn, ForwardBase); !slices.Equal(got, ruleComments(forwardBaseRules())) {
		t.Fatalf("table's forward chain = %q", got)
	}
	before, txs := k.Restores, kn.Transactions
	if err := fw.Setup(); err != nil || k.Restores != before || kn.Transactions != txs {
		t.Fatalf("Setup again: %v, %d restores, %d transactions", err, k.Restores-before, kn.Transactions-txs)
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
	// The cleaner: the older layouts' chains and jumps go.
	id := iptables.Short(cases[0].n.ID)
	old := "*filter\n:OURNET-O-" + id + " - [0:0]\n:OURNET-I-" + id + " - [0:0]\n:OURNET-INTO - [0:0]\n:OURNET-BRIDGES - [0:0]\n:OURNET-FOREIGN - [0:0]\n" +
		"-A " + ForwardChain + " -i br0 -j OURNET-O-" + id + "\n-A FORWARD -j OURNET-O-" + id + "\n-A " + ForwardChain + " -j OURNET-INTO\n" +
		"-A " + ForwardChain + " -m devgroup --src-group 0x6f75 -j OURNET-FOREIGN\n-A OURNET-FOREIGN -o docker0 -j DROP\n-A OURNET-FOREIGN -j ACCEPT\n" +
		"-A OURNET-INTO -o br0 -j OURNET-I-" + id + "\n-A OURNET-I-" + id + " -j OURNET-BRIDGES\nCOMMIT\n" +
		"*mangle\n:OURNET-GUARD - [0:0]\n-A FORWARD -j OURNET-GUARD\nCOMMIT\n" +
		"*nat\n:OURNET-POSTROUTING - [0:0]\n:OURNET-N-x - [0:0]\n-A POSTROUTING -j OURNET-POSTROUTING\n-A OURNET-POSTROUTING -j OURNET-N-x\nCOMMIT\n"
	if err := k.Restore(iptables.IPv4, old); err != nil {
		t.Fatal(err)
	}
	if err := fw.Setup(); err != nil {
		t.Fatal(err)
	}
	d := dumpAll(t, k)
	for _, c := range []string{"OURNET-O-", "OURNET-N-", "OURNET-I", "OURNET-BRIDGES", "OURNET-FOREIGN", "OURNET-GUARD", "OURNET-POSTROUTING"} {
		if strings.Contains(d, c) {
			t.Fatalf("older layout (%s) left after Setup:\n%s", c, d)
		}
	}
	if got, _ := k.Rules(iptables.IPv4, "filter", ForwardChain); !slices.Equal(got, forwardRules) {
		t.Fatalf("OURNET-FORWARD after the cleaner = %q", got)
	}
	// The table's base chain flushed by someone: Setup rewrites it.
	c, _ := kn.Dial()
	c.FlushChain(nftChain(ForwardBase))
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := fw.Setup(); err != nil {
		t.Fatal(err)
	}
	if got := fakeRules(t, kn, ForwardBase); !slices.Equal(got, ruleComments(forwardBaseRules())) {
		t.Fatalf("table's forward chain after a flush and Setup = %q", got)
	}
}

// Networks: the first add after a start reads the table and writes the
// base; every later new network only creates (the base's rules keep their
// handles, one transaction each); adding again writes nothing; deleting
// every network (twice) leaves the table as it was; a failing transaction
// is reported.
func TestNetworksWithoutRoot(t *testing.T) {
	fw, _, kn := fakeFirewall(t)
	empty := fakeRules(t, kn, NATBase)
	base, _ := kn.Rules(table, ForwardBase)
	var nets []Network
	for i, c := range cases {
		nets = append(nets, c.n)
		txs := kn.Transactions
		if err := fw.AddNetwork(c.n); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if kn.Transactions != txs+1 {
			t.Fatalf("%s: %d transactions, want 1", c.name, kn.Transactions-txs)
		}
		if now, _ := kn.Rules(table, ForwardBase); i > 0 && now[0].Handle != base[0].Handle {
			t.Fatalf("%s: the base was rewritten for a new network", c.name)
		} else {
			base = now
		}
		conn, _ := kn.Dial()
		if s, err := readNFT(conn); err != nil || !s.matches(c.n) || len(s.byOwner[iptables.Short(c.n.ID)]) != len(netElems(c.n)) {
			t.Fatalf("%s: its elements are not as written (%v)", c.name, err)
		}
	}
	txs := kn.Transactions
	for _, c := range cases {
		if err := fw.AddNetwork(c.n); err != nil {
			t.Fatal(err)
		}
	}
	if kn.Transactions != txs {
		t.Errorf("adding networks again made %d transactions", kn.Transactions-txs)
	}
	if d, err := fw.Drifted(nets); err != nil || len(d) != 0 {
		t.Fatalf("fresh rules drifted: %v %v", d, err)
	}
	if ids, err := fw.OwnedNetworks(); err != nil || len(ids) != len(cases) || !ids["0123456789ab"] {
		t.Fatalf("OwnedNetworks = %v, %v", ids, err)
	}
	// A second firewall (a restarted plugin) adds them all again: the
	// same table.
	elems := fakeElems(t, kn)
	fw2 := New(iptables.NewFake(), kn.Dial, iptables.IPv4)
	if err := fw2.AddNetworks(nets); err != nil {
		t.Fatal(err)
	}
	if got := fakeElems(t, kn); !slices.Equal(got, elems) {
		t.Fatalf("elements after a second AddNetworks = %q, want %q", got, elems)
	}
	if d, err := fw2.Drifted(nets); err != nil || len(d) != 0 {
		t.Fatalf("after a second AddNetworks: drifted %v, %v", d, err)
	}
	for _, c := range cases {
		if err := fw.DelNetwork(c.n.ID); err != nil {
			t.Fatalf("del %s: %v", c.name, err)
		}
		if err := fw.DelNetwork(c.n.ID); err != nil {
			t.Fatalf("del %s again: %v", c.name, err)
		}
	}
	if got := fakeRules(t, kn, NATBase); !slices.Equal(got, empty) {
		t.Fatalf("nat chain after removing every network = %q", got)
	}
	if conn, _ := kn.Dial(); true {
		for _, d := range allSets {
			if el, _ := conn.GetSetElements(d.set()); len(el) != 0 {
				t.Fatalf("set %s keeps %d elements after removing every network", d.name, len(el))
			}
		}
	}
	if ids, err := fw.OwnedNetworks(); err != nil || len(ids) != 0 {
		t.Fatalf("after removing every network: OwnedNetworks = %v, %v", ids, err)
	}
	// A transaction that fails is reported; the next add rewrites.
	kn.Fail = func() error { return errFake }
	if err := fw.AddNetwork(cases[0].n); err == nil || !strings.Contains(err.Error(), "fake failure") {
		t.Fatalf("failing transaction = %v", err)
	}
	kn.Fail = nil
	if err := fw.AddNetwork(cases[0].n); err != nil {
		t.Fatal(err)
	}
	if d, err := fw.Drifted(nets[:1]); err != nil || len(d) != 0 {
		t.Fatalf("after a failure and a retry: drifted %v, %v", d, err)
	}
}

type fakeErr string

func (e fakeErr) Error() string { return string(e) }

const errFake = fakeErr("fake failure")

// Drift: a flushed chain, a deleted element, a rule added, a masquerade
// removed are seen, network by network, and AddNetworks repairs them.
func TestDriftWithoutRoot(t *testing.T) {
	fw, _, kn := fakeFirewall(t)
	var nets []Network
	for _, c := range cases {
		nets = append(nets, c.n)
	}
	if err := fw.AddNetworks(nets); err != nil {
		t.Fatal(err)
	}
	c, _ := kn.Dial()
	// Network 0 loses its bridge from nets, network 1 gains an icc
	// element by its name, network 4 loses its hairpin element.
	if err := c.SetDeleteElements(setNets.set(), []nftables.SetElement{{Key: nft.IfName(cases[0].n.Bridge)}}); err != nil {
		t.Fatal(err)
	}
	br1 := nft.IfName(cases[1].n.Bridge)
	if err := c.SetAddElements(setICC.set(), []nftables.SetElement{{Key: concat(br1, br1), Comment: owner(cases[1].n.ID)}}); err != nil {
		t.Fatal(err)
	}
	for _, e := range netElems(cases[4].n) {
		if e.set == setHairpin {
			if err := c.SetDeleteElements(e.set.set(), e.elements()); err != nil {
				t.Fatal(err)
			}
			break
		}
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	d, err := fw.Drifted(nets)
	var got []string
	for _, n := range d {
		got = append(got, n.ID)
	}
	if want := []string{cases[0].n.ID, cases[1].n.ID, cases[4].n.ID}; err != nil || !slices.Equal(got, want) {
		t.Fatalf("Drifted = %v, %v; want %v", got, err, want)
	}
	if err := fw.AddNetworks(d); err != nil {
		t.Fatal(err)
	}
	if d, err := fw.Drifted(nets); err != nil || len(d) != 0 {
		t.Fatalf("repaired rules still drifted: %v %v", d, err)
	}
	// An element that names no network (added by hand) drifts them all,
	// and the repair removes it.
	if err := c.SetAddElements(setPublished.set(), []nftables.SetElement{{Key: nft.IfName("eth0")}}); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	if d, err := fw.Drifted(nets); err != nil || len(d) != len(nets) {
		t.Fatalf("a stray element: %d drifted, %v", len(d), err)
	}
	if err := fw.AddNetworks(nets); err != nil {
		t.Fatal(err)
	}
	if d, err := fw.Drifted(nets); err != nil || len(d) != 0 || slices.ContainsFunc(fakeElems(t, kn), func(e string) bool { return strings.HasSuffix(e, " ") }) {
		t.Fatalf("after repairing a stray element: %d drifted, %v; %q", len(d), err, fakeElems(t, kn))
	}
	// The table deleted whole (nft flush ruleset): everything drifts, and
	// comes back.
	c.DelTable(table)
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	if d, err := fw.Drifted(nets); err != nil || len(d) != len(nets) {
		t.Fatalf("table gone: %d drifted, %v", len(d), err)
	}
	if err := fw.Setup(); err != nil {
		t.Fatal(err)
	}
	if err := fw.AddNetworks(nets); err != nil {
		t.Fatal(err)
	}
	if d, err := fw.Drifted(nets); err != nil || len(d) != 0 {
		t.Fatalf("after the table came back: %d drifted, %v", len(d), err)
	}
}

// Teardown leaves no ournet chain in any table (published ports'
// included) and no nftables table.
func TestTeardownWithoutRoot(t *testing.T) {
	fw, k, kn := fakeFirewall(t)
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
	if _, ok := kn.Rules(table, ForwardBase); ok {
		t.Fatal("table inet ournet left after Teardown")
	}
	if err := fw.Teardown(); err != nil {
		t.Fatalf("Teardown again: %v", err)
	}
}

// The VXLAN guard: asked again with the same hosts it reads nothing; after
// a Setup (a repair round) it reads, and repairs a flushed chain; removed,
// it stays removed without a read.
func TestVXLANGuardWithoutRoot(t *testing.T) {
	fw, k, _ := fakeFirewall(t)
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

// A table of the layout before sets (per-network chains, verdict maps) is
// deleted and made anew at the restore's add.
func TestLegacyTableWithoutRoot(t *testing.T) {
	fw, _, kn := fakeFirewall(t)
	c, _ := kn.Dial()
	c.DelTable(table)
	c.AddTable(table)
	if err := c.AddSet(&nftables.Set{Table: table, Name: "masq4", ID: 3, IsMap: true, Interval: true,
		KeyType: nftables.TypeIPAddr, DataType: nftables.TypeVerdict}, nil); err != nil {
		t.Fatal(err)
	}
	c.AddChain(nftChain("net-0123456789ab"))
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	if d, err := fw.Drifted([]Network{cases[0].n}); err != nil || len(d) != 1 {
		t.Fatalf("a legacy table: drifted %v, %v", d, err)
	}
	nets := []Network{cases[0].n, cases[4].n}
	if err := fw.AddNetworks(nets); err != nil {
		t.Fatal(err)
	}
	if _, ok := kn.Rules(table, "net-0123456789ab"); ok {
		t.Fatal("the legacy chain is left")
	}
	if d, err := fw.Drifted(nets); err != nil || len(d) != 0 {
		t.Fatalf("after the legacy table was replaced: drifted %v, %v", d, err)
	}
}
