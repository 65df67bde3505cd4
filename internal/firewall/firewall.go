// Package firewall programs ournet's iptables rules.
//
// Layout. ournet never writes into dockerd's chains (dockerd flushes them at
// start). It owns two base chains, each reached by one jump:
//
//	filter FORWARD     -> OURNET-FORWARD
//	nat    POSTROUTING -> OURNET-POSTROUTING
//
// and three chains per network (ID cut to 12 characters):
//
//	OURNET-I-<id>  every packet that leaves through the network's bridge
//	OURNET-O-<id>  every packet that arrives from the bridge and leaves elsewhere
//	OURNET-N-<id>  nat: masquerade of the network's subnets
//
// OURNET-FORWARD holds all "-o <bridge> -j OURNET-I-…" jumps before all
// "-i <bridge> -j OURNET-O-…" jumps, and every I chain ends in a verdict. So a
// packet bound for an ournet bridge is judged by the destination network
// alone, whoever sent it: that alone isolates networks from each other with a
// constant number of rules per network.
//
// A network's chains are rewritten whole in one iptables-restore --noflush
// transaction (declaring a chain there flushes it), so adding a network twice
// is harmless and a failure leaves the previous rules intact.
package firewall

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
)

// Family is an address family: IPv4 (iptables) or IPv6 (ip6tables).
type Family int

const (
	IPv4 Family = 4
	IPv6 Family = 6
)

func (f Family) String() string {
	if f == IPv6 {
		return "ip6tables"
	}
	return "iptables"
}

// Base chain names.
const (
	ForwardChain     = "OURNET-FORWARD"
	PostroutingChain = "OURNET-POSTROUTING"
)

// Network is what the firewall needs to know about one network.
type Network struct {
	ID         string
	Bridge     string
	Subnets    []netip.Prefix // both families; each family's rules use its own
	ICC        bool
	Masquerade bool
	Internal   bool
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// Chain names of one network.
func inChain(id string) string  { return "OURNET-I-" + short(id) }
func outChain(id string) string { return "OURNET-O-" + short(id) }
func natChain(id string) string { return "OURNET-N-" + short(id) }

func (n Network) subnets(f Family) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range n.Subnets {
		if p.Addr().Is6() == (f == IPv6) {
			out = append(out, p.Masked())
		}
	}
	return out
}

// Runner runs the iptables tools of one family.
type Runner interface {
	// Save returns iptables-save output for table.
	Save(f Family, table string) (string, error)
	// Restore applies script with iptables-restore --noflush.
	Restore(f Family, script string) error
	// EnsureBase creates the base chains and their jumps if missing.
	EnsureBase(f Family) error
}

// Firewall serialises rule changes; it is safe for concurrent use.
type Firewall struct {
	mu       sync.Mutex
	run      Runner
	families []Family
}

// New returns a Firewall that programs the given families.
func New(run Runner, families ...Family) *Firewall {
	return &Firewall{run: run, families: families}
}

// Setup creates the base chains and jumps; safe to call again at any time.
func (fw *Firewall) Setup() error {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	for _, f := range fw.families {
		if err := fw.run.EnsureBase(f); err != nil {
			return fmt.Errorf("%s: setting up base chains: %w", f, err)
		}
	}
	return nil
}

// AddNetwork installs (or rewrites) every rule of network n.
func (fw *Firewall) AddNetwork(n Network) error {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	for _, f := range fw.families {
		existing, err := fw.ourJumps(f)
		if err != nil {
			return err
		}
		if err := fw.run.Restore(f, AddScript(f, n, existing)); err != nil {
			return fmt.Errorf("%s: adding rules of network %s: %w", f, short(n.ID), err)
		}
	}
	return nil
}

// DelNetwork removes every rule of network id; rules already gone are fine.
func (fw *Firewall) DelNetwork(id string) error {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	var errs []error
	for _, f := range fw.families {
		existing, err := fw.ourJumps(f)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if err := fw.run.Restore(f, DelScript(id, existing)); err != nil {
			errs = append(errs, fmt.Errorf("%s: removing rules of network %s: %w", f, short(id), err))
		}
	}
	if len(errs) > 0 {
		return errs[0]
	}
	return nil
}

// jumps are the rules of base chains that jump to a per-network chain, as
// "table chain rule" lines exactly as iptables-save prints them.
type jumps map[string][]string // table -> "-A CHAIN ..." lines

func (fw *Firewall) ourJumps(f Family) (jumps, error) {
	out := jumps{}
	for _, table := range []string{"filter", "nat"} {
		dump, err := fw.run.Save(f, table)
		if err != nil {
			return nil, fmt.Errorf("%s: reading table %s: %w", f, table, err)
		}
		for _, line := range strings.Split(dump, "\n") {
			if strings.HasPrefix(line, "-A "+ForwardChain+" ") || strings.HasPrefix(line, "-A "+PostroutingChain+" ") {
				out[table] = append(out[table], line)
			}
		}
	}
	return out, nil
}

// referencing returns the lines of lines that jump to one of chains.
func referencing(lines []string, chains ...string) []string {
	var out []string
	for _, l := range lines {
		for _, c := range chains {
			if strings.HasSuffix(l, " -j "+c) {
				out = append(out, l)
			}
		}
	}
	return out
}

func deleteLine(addLine string) string { return "-D" + strings.TrimPrefix(addLine, "-A") }

// AddScript is the iptables-restore input that installs network n, given the
// jumps that exist now. It is pure so that it can be tested with golden files.
func AddScript(f Family, n Network, existing jumps) string {
	var b strings.Builder
	br := n.Bridge
	in, out, nat := inChain(n.ID), outChain(n.ID), natChain(n.ID)
	subnets := n.subnets(f)

	b.WriteString("*filter\n")
	fmt.Fprintf(&b, ":%s - [0:0]\n:%s - [0:0]\n", in, out)
	// Into the bridge: replies, published ports (connections ournet's own
	// DNAT rules sent here), same-network traffic, and nothing else: no
	// direct routing to container addresses, whatever FORWARD's policy.
	fmt.Fprintf(&b, "-A %s -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n", in)
	if !n.Internal {
		fmt.Fprintf(&b, "-A %s -m conntrack --ctstate DNAT -j ACCEPT\n", in)
	}
	if n.ICC {
		fmt.Fprintf(&b, "-A %s -i %s -j ACCEPT\n", in, br)
	}
	fmt.Fprintf(&b, "-A %s -j DROP\n", in)
	// Out of the bridge to anywhere that is not an ournet bridge.
	if n.Internal {
		fmt.Fprintf(&b, "-A %s -j DROP\n", out)
	} else {
		fmt.Fprintf(&b, "-A %s -j ACCEPT\n", out)
	}
	wantFilter := []string{
		fmt.Sprintf("-A %s -o %s -j %s", ForwardChain, br, in),
		fmt.Sprintf("-A %s -i %s -j %s", ForwardChain, br, out),
	}
	writeJumps(&b, existing["filter"], wantFilter, []string{in, out})
	b.WriteString("COMMIT\n")

	b.WriteString("*nat\n")
	fmt.Fprintf(&b, ":%s - [0:0]\n", nat)
	if n.Masquerade && !n.Internal {
		for _, s := range subnets {
			fmt.Fprintf(&b, "-A %s -s %s ! -o %s -j MASQUERADE\n", nat, s, br)
		}
	}
	writeJumps(&b, existing["nat"], []string{fmt.Sprintf("-A %s -j %s", PostroutingChain, nat)}, []string{nat})
	b.WriteString("COMMIT\n")
	return b.String()
}

// writeJumps makes the base chain's jumps to chains exactly want: it leaves
// them alone when they already are, otherwise deletes the old and adds the new.
// The -o jump goes first in OURNET-FORWARD (inserted), others are appended.
func writeJumps(b *strings.Builder, existing, want, chains []string) {
	have := referencing(existing, chains...)
	if slices.Equal(have, want) {
		return
	}
	for _, l := range have {
		b.WriteString(deleteLine(l) + "\n")
	}
	for _, l := range want {
		if strings.Contains(l, " -o ") && strings.HasPrefix(l, "-A "+ForwardChain+" ") {
			b.WriteString("-I" + strings.TrimPrefix(l, "-A") + "\n")
			continue
		}
		b.WriteString(l + "\n")
	}
}

// DelScript is the iptables-restore input that removes network id.
func DelScript(id string, existing jumps) string {
	var b strings.Builder
	in, out, nat := inChain(id), outChain(id), natChain(id)
	// Declaring a chain creates or flushes it, so -X works whether or not it existed.
	fmt.Fprintf(&b, "*filter\n:%s - [0:0]\n:%s - [0:0]\n", in, out)
	for _, l := range referencing(existing["filter"], in, out) {
		b.WriteString(deleteLine(l) + "\n")
	}
	fmt.Fprintf(&b, "-X %s\n-X %s\nCOMMIT\n", in, out)
	fmt.Fprintf(&b, "*nat\n:%s - [0:0]\n", nat)
	for _, l := range referencing(existing["nat"], nat) {
		b.WriteString(deleteLine(l) + "\n")
	}
	fmt.Fprintf(&b, "-X %s\nCOMMIT\n", nat)
	return b.String()
}
