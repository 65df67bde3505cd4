package portmap

import (
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ournet/ournet/internal/iptables"
)

var update = flag.Bool("update", false, "rewrite golden files")

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
		t.Fatalf("%v (run go test ./internal/portmap -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs from golden file:\n--- got\n%s\n--- want\n%s", name, got, want)
	}
}

const eid = "0123456789abcdef0000"

// Every kind of mapping of one dual-stack endpoint.
var sample = []Mapping{
	{Proto: TCP, HostIP: any4, HostPort: 8080, ContainerIP: c4, ContainerPort: 80},
	{Proto: TCP, HostIP: any6, HostPort: 8080, ContainerIP: c6, ContainerPort: 80},
	{Proto: UDP, HostIP: lo4, HostPort: 5353, ContainerIP: c4, ContainerPort: 53},
	{Proto: SCTP, HostIP: netip.MustParseAddr("198.51.100.1"), HostPort: 9000, ContainerIP: c4, ContainerPort: 9000},
	{Proto: UDP, HostIP: netip.MustParseAddr("2001:db8:51::1"), HostPort: 49153, ContainerIP: c6, ContainerPort: 5353},
}

func TestScriptsGolden(t *testing.T) {
	for _, f := range []iptables.Family{iptables.IPv4, iptables.IPv6} {
		golden(t, "base."+f.String(), BaseScript(f, iptables.Tables{}))
		golden(t, "add."+f.String(), AddScript(f, eid, sample, iptables.Tables{}))
	}
	withRules := iptables.Tables{"nat": iptables.Parse(AddScript(iptables.IPv4, eid, sample, iptables.Tables{}))}
	golden(t, "del", DelScript(eid, withRules))
	if s := AddScript(iptables.IPv4, eid, sample, withRules); strings.Contains(s, "-A "+DNATChain) {
		t.Errorf("a jump that exists is added again:\n%s", s)
	}
	if s := DelScript(eid, iptables.Tables{}); s != "" {
		t.Errorf("removing what does not exist: %q", s)
	}
	// An endpoint with no IPv6 mapping has nothing to add in ip6tables.
	if s := AddScript(iptables.IPv6, eid, sample[:1], iptables.Tables{}); s != "" {
		t.Errorf("IPv6 script for IPv4 mappings: %q", s)
	}
}
