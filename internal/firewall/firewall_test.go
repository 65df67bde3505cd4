package firewall

import (
	"flag"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/ournet/ournet/internal/iptables"
	"github.com/ournet/ournet/internal/testns"
)

var update = flag.Bool("update", false, "rewrite golden files")

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
		Subnets: []netip.Prefix{netip.MustParsePrefix("198.18.5.0/24"), netip.MustParsePrefix("fd00:5::/64"), netip.MustParsePrefix("198.18.6.0/24")}}},
	{"routed-v6", Network{ID: "5123456789abcdef", Bridge: "ournet-51234567", ICC: true, Masquerade: map[iptables.Family]bool{iptables.IPv4: true},
		Subnets: []netip.Prefix{netip.MustParsePrefix("198.18.7.0/24"), netip.MustParsePrefix("fd00:7::/64")}}},
	{"unprotected-v4", Network{ID: "6123456789abcdef", Bridge: "ournet-61234567", ICC: true, Masquerade: both, Unprotected: map[iptables.Family]bool{iptables.IPv4: true},
		Subnets: []netip.Prefix{netip.MustParsePrefix("198.18.8.0/24"), netip.MustParsePrefix("fd00:8::/64")}}},
	{"ipv6-only", Network{ID: "7123456789abcdef", Bridge: "ournet-71234567", ICC: true, Masquerade: both,
		Subnets: []netip.Prefix{netip.MustParsePrefix("fd00:9::/64")}}},
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./internal/firewall -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs from golden file:\n--- got\n%s\n--- want\n%s", name, got, want)
	}
}

// The scripts for a fresh install and for removal, per option combination.
func TestScriptsGolden(t *testing.T) {
	for _, c := range cases {
		for _, f := range []iptables.Family{iptables.IPv4, iptables.IPv6} {
			golden(t, c.name+"."+f.String()+".add", AddScript(f, c.n, iptables.Tables{}))
		}
		saved := iptables.Tables{}
		for table, tr := range rules(iptables.IPv4, c.n) {
			saved[table] = iptables.Chains{}
			for _, l := range tr.jumps {
				saved[table][iptables.ChainOf(l)] = append(saved[table][iptables.ChainOf(l)], l)
			}
		}
		golden(t, c.name+".del", DelScript(c.n.ID, saved))
		if s := AddScript(iptables.IPv4, c.n, saved); strings.Contains(s, "OURNET-INTO") || strings.Contains(s, "OURNET-OUTOF") || strings.Contains(s, "OURNET-GUARD") || strings.Contains(s, "OURNET-POSTROUTING") {
			t.Errorf("%s: lines that exist are added again:\n%s", c.name, s)
		}
		// An older version's chains and jumps are removed.
		old := iptables.Tables{
			"filter": {ForwardChain: {"-A OURNET-FORWARD -i " + c.n.Bridge + " -j OURNET-O-" + iptables.Short(c.n.ID)}, "OURNET-O-" + iptables.Short(c.n.ID): nil},
			"nat":    {PostroutingChain: {"-A OURNET-POSTROUTING -j OURNET-N-" + iptables.Short(c.n.ID)}, "OURNET-N-" + iptables.Short(c.n.ID): nil},
		}
		golden(t, c.name+".upgrade", CleanScript(old))
	}
}

var counters = regexp.MustCompile(`\[\d+:\d+\]|^#.*$`)

func save(t *testing.T, r iptables.Runner, f iptables.Family) string {
	t.Helper()
	var b strings.Builder
	for _, table := range []string{"filter", "nat"} {
		out, err := r.Save(f, table)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(out, "\n") {
			if !strings.HasPrefix(l, "#") {
				b.WriteString(counters.ReplaceAllString(l, "") + "\n")
			}
		}
	}
	return b.String()
}

// In a throwaway netns: the rules land as the golden files say, adding twice
// changes nothing, and removal restores the exact previous ruleset.
func TestApplyInNetns(t *testing.T) {
	testns.Do(t, func() {
		r, err := iptables.NewExec(iptables.IPv4, iptables.IPv6)
		if err != nil {
			t.Fatal(err)
		}
		fw := New(r, iptables.IPv4, iptables.IPv6)
		if err := fw.Setup(); err != nil {
			t.Fatal(err)
		}
		if err := fw.Setup(); err != nil {
			t.Fatal(err)
		}
		if err := fw.EnsureForeignBridges(nil); err != nil {
			t.Fatal(err)
		}
		empty := map[iptables.Family]string{iptables.IPv4: save(t, r, iptables.IPv4), iptables.IPv6: save(t, r, iptables.IPv6)}
		for _, c := range cases {
			if err := fw.AddNetwork(c.n); err != nil {
				t.Fatalf("%s: %v", c.name, err)
			}
		}
		all := map[iptables.Family]string{iptables.IPv4: save(t, r, iptables.IPv4), iptables.IPv6: save(t, r, iptables.IPv6)}
		golden(t, "all.iptables-save", all[iptables.IPv4])
		golden(t, "all.ip6tables-save", all[iptables.IPv6])
		for _, c := range cases {
			if err := fw.AddNetwork(c.n); err != nil {
				t.Fatalf("%s again: %v", c.name, err)
			}
		}
		for _, f := range []iptables.Family{iptables.IPv4, iptables.IPv6} {
			if got := save(t, r, f); got != all[f] {
				t.Fatalf("%s: adding every network again changed the rules:\n%s\nwant\n%s", f, got, all[f])
			}
		}
		for _, c := range cases {
			if err := fw.DelNetwork(c.n.ID); err != nil {
				t.Fatalf("del %s: %v", c.name, err)
			}
			if err := fw.DelNetwork(c.n.ID); err != nil {
				t.Fatalf("del %s again: %v", c.name, err)
			}
		}
		for _, f := range []iptables.Family{iptables.IPv4, iptables.IPv6} {
			if got := save(t, r, f); got != empty[f] {
				t.Fatalf("%s: after removing every network:\n%s\nwant\n%s", f, got, empty[f])
			}
		}
		// An upgrade from the layout with four chains per network: the
		// restart's Setup (its cleaner) removes the old ones.
		old := iptables.Short(cases[0].n.ID)
		ipt(t, "-N", "OURNET-O-"+old)
		ipt(t, "-A", ForwardChain, "-i", cases[0].n.Bridge, "-j", "OURNET-O-"+old)
		ipt(t, "-t", "nat", "-N", "OURNET-N-"+old)
		ipt(t, "-t", "nat", "-A", PostroutingChain, "-j", "OURNET-N-"+old)
		fw = New(r, iptables.IPv4, iptables.IPv6)
		if err := fw.Setup(); err != nil {
			t.Fatal(err)
		}
		if err := fw.AddNetworks([]Network{cases[0].n}); err != nil {
			t.Fatal(err)
		}
		if got := save(t, r, iptables.IPv4); strings.Contains(got, "OURNET-O-") || strings.Contains(got, "OURNET-N-") {
			t.Fatalf("old chains left after an upgrade:\n%s", got)
		}
		// Teardown leaves no OURNET chain or jump, even with networks left.
		if err := fw.AddNetwork(cases[0].n); err != nil {
			t.Fatal(err)
		}
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
	})
}

func ipt(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("iptables", args...).CombinedOutput(); err != nil {
		t.Fatalf("iptables %v: %v: %s", args, err, out)
	}
}

// Drift (a flushed chain, a deleted jump) is seen and repaired, and the
// FORWARD jump goes back right after DOCKER-USER when dockerd's restart
// inserts its own rules above it.
func TestDriftAndJumpOrderInNetns(t *testing.T) {
	testns.Do(t, func() {
		r, err := iptables.NewExec(iptables.IPv4, iptables.IPv6)
		if err != nil {
			t.Fatal(err)
		}
		fw := New(r, iptables.IPv4, iptables.IPv6)
		ipt(t, "-N", "DOCKER-USER")
		ipt(t, "-A", "FORWARD", "-j", "DOCKER-USER")
		if err := fw.Setup(); err != nil {
			t.Fatal(err)
		}
		// Every network's way out is there with no foreign bridge listed
		// (the engine's are always in), and comes back when flushed.
		for round := 0; round < 2; round++ {
			if err := fw.EnsureForeignBridges(nil); err != nil {
				t.Fatal(err)
			}
			out, _ := r.Save(iptables.IPv4, "filter")
			if got := iptables.Parse(out)[ForeignChain]; len(got) != 5 || got[4] != "-A "+ForeignChain+" -j ACCEPT" {
				t.Fatalf("OURNET-FOREIGN (round %d) = %q", round, got)
			}
			ipt(t, "-F", ForeignChain)
		}
		// OURNET-FORWARD holds its two jumps and nothing else (an older
		// version's lines are replaced).
		ipt(t, "-A", ForwardChain, "-i", "brx", "-j", "ACCEPT")
		if err := fw.Setup(); err != nil {
			t.Fatal(err)
		}
		out, _ := r.Save(iptables.IPv4, "filter")
		if got := iptables.Parse(out)[ForwardChain]; len(got) != 2 || got[0] != "-A "+ForwardChain+" -j "+IntoChain || got[1] != "-A "+ForwardChain+" -j "+OutofChain {
			t.Fatalf("OURNET-FORWARD after Setup = %q", got)
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
		ipt(t, "-F", inChain(cases[0].n.ID))
		ipt(t, "-t", "nat", "-D", PostroutingChain, "2")
		ipt(t, "-t", "mangle", "-A", GuardChain, "-m", "comment", "--comment", "ournet:"+iptables.Short(cases[2].n.ID), "-j", "DROP")
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
		if err := fw.SetForeignBridges([]string{"mybr0"}); err != nil {
			t.Fatal(err)
		}
		// A doubled rule (as a concurrent writer can leave) is repaired.
		ipt(t, "-A", ForeignChain, "-o", "mybr0", "-j", "DROP")
		if err := fw.EnsureForeignBridges([]string{"mybr0"}); err != nil {
			t.Fatal(err)
		}
		out, _ = r.Save(iptables.IPv4, "filter")
		if got := iptables.Parse(out)[ForeignChain]; len(got) != 7 || !strings.Contains(strings.Join(got, "\n"), "-o mybr0 -j DROP") {
			t.Fatalf("OURNET-FOREIGN = %q", got)
		}
	})
}
