package firewall

import (
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/ournet/ournet/internal/testns"
)

var update = flag.Bool("update", false, "rewrite golden files")

var cases = []struct {
	name string
	n    Network
}{
	{"default", Network{ID: "0123456789abcdef", Bridge: "ournet-01234567", ICC: true, Masquerade: true,
		Subnets: []netip.Prefix{netip.MustParsePrefix("198.18.1.0/24")}}},
	{"icc-off", Network{ID: "1123456789abcdef", Bridge: "ournet-11234567", ICC: false, Masquerade: true,
		Subnets: []netip.Prefix{netip.MustParsePrefix("198.18.2.0/24")}}},
	{"no-masquerade", Network{ID: "2123456789abcdef", Bridge: "br-custom", ICC: true, Masquerade: false,
		Subnets: []netip.Prefix{netip.MustParsePrefix("198.18.3.0/24")}}},
	{"internal", Network{ID: "3123456789abcdef", Bridge: "ournet-31234567", ICC: true, Masquerade: true, Internal: true,
		Subnets: []netip.Prefix{netip.MustParsePrefix("198.18.4.0/24")}}},
	{"dual-stack", Network{ID: "4123456789abcdef", Bridge: "ournet-41234567", ICC: true, Masquerade: true,
		Subnets: []netip.Prefix{netip.MustParsePrefix("198.18.5.0/24"), netip.MustParsePrefix("fd00:5::/64"), netip.MustParsePrefix("198.18.6.0/24")}}},
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
		for _, f := range []Family{IPv4, IPv6} {
			golden(t, c.name+"."+f.String()+".add", AddScript(f, c.n, jumps{}))
		}
		existing := jumps{
			"filter": {"-A OURNET-FORWARD -o " + c.n.Bridge + " -j " + inChain(c.n.ID), "-A OURNET-FORWARD -i " + c.n.Bridge + " -j " + outChain(c.n.ID)},
			"nat":    {"-A OURNET-POSTROUTING -j " + natChain(c.n.ID)},
		}
		golden(t, c.name+".del", DelScript(c.n.ID, existing))
		if s := AddScript(IPv4, c.n, existing); strings.Contains(s, "-A OURNET-FORWARD") || strings.Contains(s, "-I OURNET-FORWARD") {
			t.Errorf("%s: jumps that exist are added again:\n%s", c.name, s)
		}
	}
}

var counters = regexp.MustCompile(`\[\d+:\d+\]|^#.*$`)

func save(t *testing.T, r Runner, f Family) string {
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
		r, err := NewExecRunner(IPv4, IPv6)
		if err != nil {
			t.Fatal(err)
		}
		fw := New(r, IPv4, IPv6)
		if err := fw.Setup(); err != nil {
			t.Fatal(err)
		}
		if err := fw.Setup(); err != nil {
			t.Fatal(err)
		}
		empty := map[Family]string{IPv4: save(t, r, IPv4), IPv6: save(t, r, IPv6)}
		for _, c := range cases {
			if err := fw.AddNetwork(c.n); err != nil {
				t.Fatalf("%s: %v", c.name, err)
			}
		}
		all := map[Family]string{IPv4: save(t, r, IPv4), IPv6: save(t, r, IPv6)}
		golden(t, "all.iptables-save", all[IPv4])
		golden(t, "all.ip6tables-save", all[IPv6])
		for _, c := range cases {
			if err := fw.AddNetwork(c.n); err != nil {
				t.Fatalf("%s again: %v", c.name, err)
			}
		}
		for _, f := range []Family{IPv4, IPv6} {
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
		for _, f := range []Family{IPv4, IPv6} {
			if got := save(t, r, f); got != empty[f] {
				t.Fatalf("%s: after removing every network:\n%s\nwant\n%s", f, got, empty[f])
			}
		}
	})
}
