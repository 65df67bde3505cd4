package firewall

import (
	"net/netip"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"

	"github.com/ournet/ournet/internal/golden"
	"github.com/ournet/ournet/internal/iptables"
	"github.com/ournet/ournet/internal/nft"
	"github.com/ournet/ournet/internal/testns"
)

var both = map[iptables.Family]bool{iptables.IPv4: true, iptables.IPv6: true}

var cases = []struct {
	name string
	n    Network
}{
	{"default", Network{ID: "0123456789abcdef", Bridge: "ournet-01234567", ICC: true, Masquerade: both,
		Subnets: []netip.Prefix{netip.MustParsePrefix("198.18.1.0/24")}}},
	{"icc-off", Network{ID: "1123456789abcdef", Bridge: "ournet-11234567", ICC: false, Masquerade: both,
		Subnets: []netip.Prefix{netip.MustParsePrefix("198.18.2.0/24")}}},
	{"no-masquerade", Network{ID: "2123456789abcdef", Bridge: "br-custom", ICC: true, Masquerade: nil,
		Subnets: []netip.Prefix{netip.MustParsePrefix("198.18.3.0/24")}}},
	{"internal", Network{ID: "3123456789abcdef", Bridge: "ournet-31234567", ICC: true, Masquerade: both, Internal: true,
		Subnets: []netip.Prefix{netip.MustParsePrefix("198.18.4.0/24")}}},
	{"dual-stack", Network{ID: "4123456789abcdef", Bridge: "ournet-41234567", ICC: true, Masquerade: both,
		Subnets: []netip.Prefix{netip.MustParsePrefix("198.18.6.0/24"), netip.MustParsePrefix("fd00:5::/64"), netip.MustParsePrefix("198.18.5.0/24")}}},
	// Its IPv4 opening is ignored: IPv4 is nat there.
	{"routed-v6", Network{ID: "5123456789abcdef", Bridge: "ournet-51234567", ICC: true, Masquerade: map[iptables.Family]bool{iptables.IPv4: true}, Routed: map[iptables.Family]bool{iptables.IPv6: true},
		Subnets: []netip.Prefix{netip.MustParsePrefix("198.18.7.0/24"), netip.MustParsePrefix("fd00:7::/64")},
		Open:    []Opening{{Proto: 6, Addr: netip.MustParseAddr("198.18.7.2"), Port: 80}, {Proto: 17, Addr: netip.MustParseAddr("fd00:7::2"), Port: 5353}}}},
	{"routed-v4", Network{ID: "9123456789abcdef", Bridge: "ournet-91234567", ICC: false, Routed: map[iptables.Family]bool{iptables.IPv4: true},
		Subnets: []netip.Prefix{netip.MustParsePrefix("198.18.9.0/24")},
		Open:    []Opening{{Proto: 6, Addr: netip.MustParseAddr("198.18.9.2"), Port: 80}, {Proto: 132, Addr: netip.MustParseAddr("198.18.9.2"), Port: 9}, {Proto: 6, Addr: netip.MustParseAddr("198.18.9.3"), Port: 65535}}}},
	// Its published ports open from eth9 and vxlan.1 at the containers'
	// addresses (both families: nat); the bridge itself is dropped.
	{"trusted", Network{ID: "a123456789abcdef", Bridge: "ournet-a1234567", ICC: false, Masquerade: both,
		Subnets: []netip.Prefix{netip.MustParsePrefix("198.18.10.0/24"), netip.MustParsePrefix("fd00:a::/64")},
		Open:    []Opening{{Proto: 6, Addr: netip.MustParseAddr("198.18.10.2"), Port: 80}, {Proto: 17, Addr: netip.MustParseAddr("fd00:a::2"), Port: 53}},
		Trusted: []string{"eth9", "ournet-a1234567", "vxlan.1"}}},
	{"unprotected-v4", Network{ID: "6123456789abcdef", Bridge: "ournet-61234567", ICC: true, Masquerade: both, Unprotected: map[iptables.Family]bool{iptables.IPv4: true},
		Subnets: []netip.Prefix{netip.MustParsePrefix("198.18.8.0/24"), netip.MustParsePrefix("fd00:8::/64")}}},
	{"ipv6-only", Network{ID: "7123456789abcdef", Bridge: "ournet-71234567", ICC: true, Masquerade: both,
		Subnets: []netip.Prefix{netip.MustParsePrefix("fd00:9::/64")}}},
}

// nftList is table inet ournet as nft lists it, without handles or
// counters ("" if there is none).
func nftList(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("nft", "-s", "list", "table", "inet", TableName).CombinedOutput()
	if err != nil {
		if strings.Contains(string(out), "No such file") {
			return ""
		}
		t.Fatalf("nft list: %v: %s", err, out)
	}
	return string(out)
}

// nftLoad loads text with nft -f; what names it in a failure.
func nftLoad(t *testing.T, what, text string) {
	t.Helper()
	cmd := exec.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(text)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("loading %s: %v: %s", what, err, out)
	}
}

func nftDo(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("nft", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("nft %v: %v: %s", args, err, out)
	}
	return string(out)
}

func save(t *testing.T, r iptables.Runner, f iptables.Family) string {
	t.Helper()
	var b strings.Builder
	for _, table := range tables {
		out, err := r.Save(f, table)
		if err != nil {
			t.Fatal(err)
		}
		b.WriteString(out)
	}
	return volatile.ReplaceAllString(b.String(), "")
}

// volatile is what iptables-save prints that changes from run to run.
var volatile = regexp.MustCompile(`(?m)^#.*\n|\[\d+:\d+\]`)

// newKernelFirewall is a Firewall on the real tools and the kernel's
// nftables, in the current (throwaway) netns.
func newKernelFirewall(t *testing.T) (*Firewall, iptables.Runner) {
	t.Helper()
	r, err := iptables.NewExec(iptables.IPv4, iptables.IPv6)
	if err != nil {
		t.Fatal(err)
	}
	return New(r, nft.Dialer(), iptables.IPv4, iptables.IPv6), r
}

// In a throwaway netns: the rules land as the golden files say, adding twice
// changes nothing, and removal leaves the table as it was before.
func TestApplyInNetns(t *testing.T) {
	testns.Do(t, func() {
		fw, r := newKernelFirewall(t)
		for range 2 {
			if err := fw.Setup(); err != nil {
				t.Fatal(err)
			}
		}
		empty := nftList(t)
		golden.Check(t, "empty.nft", empty)
		golden.Check(t, "static.iptables-save", save(t, r, iptables.IPv4))
		var nets []Network
		for _, c := range cases {
			nets = append(nets, c.n)
			if err := fw.AddNetwork(c.n); err != nil {
				t.Fatalf("%s: %v", c.name, err)
			}
		}
		all := nftList(t)
		golden.Check(t, "all.nft", all)
		for _, c := range cases {
			if err := fw.AddNetwork(c.n); err != nil {
				t.Fatalf("%s again: %v", c.name, err)
			}
		}
		if got := nftList(t); got != all {
			t.Fatalf("adding every network again changed the table:\n%s\nwant\n%s", got, all)
		}
		// The table as nft lists it loads again (a ruleset saved with
		// `nft list ruleset` and loaded at boot), the same.
		nftDo(t, "delete", "table", "inet", TableName)
		nftLoad(t, "the table as nft lists it", all)
		if got := nftList(t); got != all {
			t.Fatalf("the table loaded again differs:\n%s\nwant\n%s", got, all)
		}
		// A fresh firewall (a restarted plugin) adds them all in one go:
		// the same table.
		fw2, _ := newKernelFirewall(t)
		if err := fw2.AddNetworks(nets); err != nil {
			t.Fatal(err)
		}
		if got := nftList(t); got != all {
			t.Fatalf("AddNetworks of a fresh firewall changed the table:\n%s\nwant\n%s", got, all)
		}
		if d, err := fw2.Drifted(nets); err != nil || len(d) != 0 {
			t.Fatalf("fresh rules drifted: %v %v", d, err)
		}
		for _, c := range cases {
			if err := fw.DelNetwork(c.n.ID); err != nil {
				t.Fatalf("del %s: %v", c.name, err)
			}
			if err := fw.DelNetwork(c.n.ID); err != nil {
				t.Fatalf("del %s again: %v", c.name, err)
			}
		}
		if got := nftList(t); got != empty {
			t.Fatalf("after removing every network:\n%s\nwant\n%s", got, empty)
		}
		// An upgrade from the older layouts: the restart's Setup (its
		// cleaner) removes their chains and jumps.
		old := iptables.Short(cases[0].n.ID)
		ipt(t, "-N", "OURNET-O-"+old)
		ipt(t, "-A", ForwardChain, "-i", cases[0].n.Bridge, "-j", "OURNET-O-"+old)
		ipt(t, "-N", "OURNET-I-"+old)
		ipt(t, "-N", "OURNET-INTO")
		ipt(t, "-A", "OURNET-INTO", "-o", cases[0].n.Bridge, "-j", "OURNET-I-"+old)
		ipt(t, "-A", ForwardChain, "-j", "OURNET-INTO")
		ipt(t, "-t", "mangle", "-N", "OURNET-GUARD")
		ipt(t, "-t", "mangle", "-A", "FORWARD", "-j", "OURNET-GUARD")
		ipt(t, "-t", "nat", "-N", "OURNET-POSTROUTING")
		ipt(t, "-t", "nat", "-N", "OURNET-N-"+old)
		ipt(t, "-t", "nat", "-A", "POSTROUTING", "-j", "OURNET-POSTROUTING")
		ipt(t, "-t", "nat", "-A", "OURNET-POSTROUTING", "-j", "OURNET-N-"+old)
		// And the table as the layout before sets made it: per-network
		// chains behind verdict maps.
		nftDo(t, "delete", "table", "inet", TableName)
		nftLoad(t, "the table before sets", `table inet ournet {
	map into { type ifname : verdict; }
	map masq4 { type ipv4_addr : verdict; flags interval; }
	chain net-0123456789ab { drop; }
	chain forward { type filter hook forward priority -5; oifname vmap @into; }
}
add element inet ournet into { "ournet-01234567" : jump net-0123456789ab }
`)
		fw = upgraded(t, r)
		if d, err := fw.Drifted([]Network{cases[0].n}); err != nil || len(d) != 0 || strings.Contains(nftList(t), "chain net-") || strings.Contains(nftList(t), "verdict") {
			t.Fatalf("after an upgrade from the table with chains: drifted %v, %v\n%s", d, err, nftList(t))
		}
		// And the table of the version whose masquerade came before
		// iptables' nat (a base chain's priority cannot be changed in
		// place: the table is made anew).
		nftDo(t, "delete", "table", "inet", TableName)
		nftLoad(t, "the table with the masquerade first", `table inet ournet {
	chain forward { type filter hook forward priority -5; policy accept; }
	chain postrouting { type nat hook postrouting priority srcnat - 5; policy accept; }
}
`)

		fw = upgraded(t, r)
		if d, err := fw.Drifted([]Network{cases[0].n}); err != nil || len(d) != 0 || !strings.Contains(nftList(t), "priority srcnat + 1;") {
			t.Fatalf("after an upgrade from the masquerade before iptables' nat: drifted %v, %v\n%s", d, err, nftList(t))
		}
		// And the table of the version whose concatenated sets had
		// NFT_SET_CONCAT (nft sets none; a set is not changed in place).
		nftDo(t, "delete", "table", "inet", TableName)
		nftLoad(t, "the table with concatenated sets flagged", `table inet ournet {
	chain forward { type filter hook forward priority -5; policy accept; }
	chain postrouting { type nat hook postrouting priority srcnat + 1; policy accept; }
}
`)
		c, err := nftables.New()
		if err != nil {
			t.Fatal(err)
		}
		prevICC := setICC.set()
		prevICC.Concatenation = true
		if err := c.AddSet(prevICC, nil); err != nil {
			t.Fatal(err)
		}
		if err := c.Flush(); err != nil {
			t.Fatal(err)
		}
		fw = upgraded(t, r)
		if s, err := c.GetSetByName(table, setICC.name); err != nil || s.Concatenation {
			t.Fatalf("after the upgrade, set %s: %+v, %v", setICC.name, s, err)
		}
		// And the table of the version whose open sets had no bridge in
		// their keys (a set's type is not changed in place).
		nftDo(t, "delete", "table", "inet", TableName)
		nftLoad(t, "the table with open4 keyed by address", `table inet ournet {
	set open4 { type ipv4_addr . inet_proto . inet_service; elements = { 198.18.1.2 . tcp . 80 comment "ournet:0123456789ab" }; }
	chain forward { type filter hook forward priority -5; policy accept; }
	chain postrouting { type nat hook postrouting priority srcnat + 1; policy accept; }
}
`)
		fw = upgraded(t, r)
		if got := nftList(t); !strings.Contains(got, "type ifname . ipv4_addr . inet_proto . inet_service") || strings.Contains(got, "198.18.1.2") {
			t.Fatalf("after an upgrade from open4 keyed by address:\n%s", got)
		}
		if got := save(t, r, iptables.IPv4); strings.Contains(got, "OURNET-O-") || strings.Contains(got, "OURNET-N-") ||
			strings.Contains(got, "OURNET-I") || strings.Contains(got, "OURNET-GUARD") || strings.Contains(got, "OURNET-POSTROUTING") {
			t.Fatalf("old chains left after an upgrade:\n%s", got)
		}
		// Teardown leaves no OURNET chain or jump and no table, even with
		// networks left.
		ipt(t, "-t", "raw", "-N", "OURNET-LOCALHOST")
		ipt(t, "-t", "raw", "-I", "PREROUTING", "-j", "OURNET-LOCALHOST")
		if err := fw.Teardown(); err != nil {
			t.Fatal(err)
		}
		for _, f := range []iptables.Family{iptables.IPv4, iptables.IPv6} {
			raw, _ := r.Save(f, "raw")
			if got := save(t, r, f) + raw; strings.Contains(got, "OURNET") {
				t.Fatalf("%s: after Teardown:\n%s", f, got)
			}
		}
		if got := nftList(t); got != "" {
			t.Fatalf("table left after Teardown:\n%s", got)
		}
		if err := fw.Teardown(); err != nil {
			t.Fatalf("Teardown again: %v", err)
		}
	})
}

func ipt(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("iptables", args...).CombinedOutput(); err != nil {
		t.Fatalf("iptables %v: %v: %s", args, err, out)
	}
}

// handleOf is the handle of the first rule of chain whose comment
// contains text, as nft -a lists it.
func handleOf(t *testing.T, chain, text string) string {
	t.Helper()
	for _, l := range strings.Split(nftDo(t, "-a", "list", "chain", "inet", TableName, chain), "\n") {
		if strings.Contains(l, text) {
			if _, h, ok := strings.Cut(l, "# handle "); ok {
				return strings.TrimSpace(h)
			}
		}
	}
	t.Fatalf("no rule with %q in %s", text, chain)
	return ""
}

// Drift (elements deleted or added by hand, a flushed base chain, an
// element that names no network) is seen and repaired, and the FORWARD jump goes back
// right after DOCKER-USER when dockerd's restart inserts its own rules
// above it.
func TestDriftAndJumpOrderInNetns(t *testing.T) {
	testns.Do(t, func() {
		fw, r := newKernelFirewall(t)
		ipt(t, "-N", "DOCKER-USER")
		ipt(t, "-A", "FORWARD", "-j", "DOCKER-USER")
		if err := fw.Setup(); err != nil {
			t.Fatal(err)
		}
		// OURNET-FORWARD holds its two rules and nothing else (an older
		// version's lines are replaced, and the chain they jumped to, the
		// list of other bridges before the table judged them by kind, is
		// removed).
		ipt(t, "-A", ForwardChain, "-i", "brx", "-j", "ACCEPT")
		ipt(t, "-N", "OURNET-FOREIGN")
		ipt(t, "-A", "OURNET-FOREIGN", "-o", "docker0", "-j", "DROP")
		ipt(t, "-A", ForwardChain, "-j", "OURNET-FOREIGN")
		if err := fw.Setup(); err != nil {
			t.Fatal(err)
		}
		out, _ := r.Save(iptables.IPv4, "filter")
		if got := iptables.Parse(out)[ForwardChain]; !slices.Equal(got, forwardRules) {
			t.Fatalf("OURNET-FORWARD after Setup = %q", got)
		}
		if strings.Contains(out, "OURNET-FOREIGN") {
			t.Fatalf("the older chain of other bridges is left:\n%s", out)
		}
		var nets []Network
		for _, c := range cases {
			nets = append(nets, c.n)
			if err := fw.AddNetwork(c.n); err != nil {
				t.Fatal(err)
			}
		}
		if d, err := fw.Drifted(nets); err != nil || len(d) != 0 {
			t.Fatalf("fresh rules drifted: %v %v", d, err)
		}
		ids, err := fw.OwnedNetworks()
		if err != nil || len(ids) != len(cases) || !ids["0123456789ab"] {
			t.Fatalf("OwnedNetworks = %v, %v", ids, err)
		}
		nftDo(t, "delete", "element", "inet", TableName, NetsSet, "{", `"`+cases[0].n.Bridge+`"`, "}")
		nftDo(t, "delete", "element", "inet", TableName, PublishedSet, "{", `"`+cases[1].n.Bridge+`"`, "}")
		nftDo(t, "add", "element", "inet", TableName, ICCSet, "{", `"`+cases[2].n.Bridge+`" . "eth0"`, "comment", `"ournet:`+iptables.Short(cases[2].n.ID)+`"`, "}")
		nftDo(t, "delete", "element", "inet", TableName, Masq4Set, "{", "198.18.6.0/24", "}")
		nftDo(t, "delete", "element", "inet", TableName, HairpinSet, "{", `"`+cases[0].n.Bridge+`" . "`+cases[0].n.Bridge+`"`, "}")
		d, err := fw.Drifted(nets)
		var got []string
		for _, n := range d {
			got = append(got, n.ID)
		}
		if want := []string{cases[0].n.ID, cases[1].n.ID, cases[2].n.ID, cases[4].n.ID}; err != nil || !slices.Equal(got, want) {
			t.Fatalf("Drifted = %v, %v; want the damaged networks %v", got, err, want)
		}
		if err := fw.AddNetworks(d); err != nil {
			t.Fatal(err)
		}
		if d, err := fw.Drifted(nets); err != nil || len(d) != 0 {
			t.Fatalf("repaired rules still drifted: %v %v", d, err)
		}
		// The base chain flushed: every network drifts (nothing of theirs
		// is in force); Setup rewrites the base, and then none does.
		nftDo(t, "flush", "chain", "inet", TableName, ForwardBase)
		if d, err := fw.Drifted(nets); err != nil || len(d) != len(nets) {
			t.Fatalf("with the base flushed, Drifted = %d networks, %v; want all %d", len(d), err, len(nets))
		}
		if err := fw.Setup(); err != nil {
			t.Fatal(err)
		}
		if d, err := fw.Drifted(nets); err != nil || len(d) != 0 {
			t.Fatalf("after Setup mended the base: %d drifted, %v", len(d), err)
		}
		// An element that names no network: all drift; the repair removes
		// it and keeps theirs.
		nftDo(t, "add", "element", "inet", TableName, PublishedSet, "{", `"eth0"`, "}")
		if d, err := fw.Drifted(nets); err != nil || len(d) != len(nets) {
			t.Fatalf("with a stray element, Drifted = %d networks, %v; want all %d", len(d), err, len(nets))
		}
		if err := fw.AddNetworks(nets); err != nil {
			t.Fatal(err)
		}
		if d, err := fw.Drifted(nets); err != nil || len(d) != 0 || strings.Contains(nftList(t), `"eth0"`) {
			t.Fatalf("after the stray's repair: %d drifted, %v\n%s", len(d), err, nftList(t))
		}
		// A network added now, with the firewall knowing the table, only
		// creates: the base's rules keep their handles.
		before := handleOf(t, ForwardBase, "replies")
		extra := cases[0].n
		extra.ID, extra.Bridge = "8123456789abcdef", "ournet-81234567"
		extra.Subnets = []netip.Prefix{netip.MustParsePrefix("198.18.10.0/24")}
		if err := fw.AddNetwork(extra); err != nil {
			t.Fatal(err)
		}
		if after := handleOf(t, ForwardBase, "replies"); after != before {
			t.Fatalf("adding a network rewrote the base (handle %s -> %s)", before, after)
		}

		// dockerd's restart: its bridge rules, then its jumps, on top.
		ipt(t, "-I", "FORWARD", "-i", "docker0", "!", "-o", "docker0", "-j", "ACCEPT")
		ipt(t, "-D", "FORWARD", "-j", "DOCKER-USER")
		ipt(t, "-I", "FORWARD", "-j", "DOCKER-USER")
		if err := fw.Setup(); err != nil {
			t.Fatal(err)
		}
		out, _ = r.Save(iptables.IPv4, "filter")
		fwd := iptables.Parse(out)["FORWARD"]
		if len(fwd) != 3 || fwd[0] != "-A FORWARD -j DOCKER-USER" || fwd[1] != "-A FORWARD -j "+ForwardChain {
			t.Fatalf("FORWARD after setup = %q", fwd)
		}
	})
}

// upgraded is the firewall of a restarted plugin over whatever the
// namespace holds: set up, with the first case's network added.
func upgraded(t *testing.T, r iptables.Runner) *Firewall {
	t.Helper()
	fw := New(r, nft.Dialer(), iptables.IPv4, iptables.IPv6)
	if err := fw.Setup(); err != nil {
		t.Fatal(err)
	}
	if err := fw.AddNetworks([]Network{cases[0].n}); err != nil {
		t.Fatal(err)
	}
	return fw
}

// The openings a change closes are read back from the elements as written,
// both families; TCP's are not among them (its flows die with their
// connections).
func TestClosedOpenings(t *testing.T) {
	n := Network{ID: "c10000000000", Bridge: "ournet-c1", Routed: both, Open: []Opening{
		{Proto: 17, Addr: netip.MustParseAddr("198.18.9.2"), Port: 5353},
		{Proto: 132, Addr: netip.MustParseAddr("fd00:9::2"), Port: 65535},
		{Proto: 6, Addr: netip.MustParseAddr("198.18.9.2"), Port: 80},
	}}
	have := map[string]elem{}
	for _, e := range netElems(n) {
		have[e.id()] = e
	}
	got := closedOpenings(have, nil)
	slices.SortFunc(got, func(a, b Opening) int { return int(a.Proto) - int(b.Proto) })
	if want := n.Open[:2]; !slices.Equal(got, want) {
		t.Fatalf("closed %v, want %v", got, want)
	}
	if got := closedOpenings(have, netElems(n)); len(got) != 0 {
		t.Fatalf("nothing closed, yet %v", got)
	}
}

// The library reads no ports of SCTP entries: every SCTP flow to a closed
// opening's address is matched, and of UDP only the opening's port.
func TestOpenFlowMatch(t *testing.T) {
	a := netip.MustParseAddr("198.18.9.2")
	flow := func(proto uint8, port uint16) *netlink.ConntrackFlow {
		f := &netlink.ConntrackFlow{}
		f.Forward.Protocol, f.Forward.DstIP, f.Forward.DstPort = proto, a.AsSlice(), port
		return f
	}
	for _, c := range []struct {
		o    Opening
		f    *netlink.ConntrackFlow
		want bool
	}{
		{Opening{Proto: 132, Addr: a, Port: 9}, flow(132, 0), true},
		{Opening{Proto: 17, Addr: a, Port: 53}, flow(17, 53), true},
		{Opening{Proto: 17, Addr: a, Port: 53}, flow(17, 54), false},
		{Opening{Proto: 17, Addr: a, Port: 53}, flow(6, 53), false},
		{Opening{Proto: 17, Addr: netip.MustParseAddr("198.18.9.3"), Port: 53}, flow(17, 53), false},
	} {
		if got := openFlow(c.o).MatchConntrackFlow(c.f); got != c.want {
			t.Errorf("%v against %d/%d: %v, want %v", c.o, c.f.Forward.Protocol, c.f.Forward.DstPort, got, c.want)
		}
	}
}
