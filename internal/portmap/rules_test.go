package portmap

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/ournet/ournet/internal/golden"
	"github.com/ournet/ournet/internal/iptables"
)

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
		golden.Check(t, "base."+f.String(), BaseScript(f, iptables.Tables{}))
		golden.Check(t, "add."+f.String(), AddScript(f, eid, sample, iptables.Tables{}))
	}
	withRules := iptables.Tables{"nat": iptables.Parse(AddScript(iptables.IPv4, eid, sample, iptables.Tables{}))}
	golden.Check(t, "del", DelScript(eid, withRules))
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
