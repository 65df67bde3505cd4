// Package firewall programs ournet's iptables rules.
//
// Layout. ournet never writes into dockerd's chains (dockerd flushes them at
// start). It owns base chains, each reached by one jump:
//
//	filter FORWARD     -> OURNET-FORWARD      (right after DOCKER-USER)
//	mangle FORWARD     -> OURNET-GUARD        (first)
//	nat    POSTROUTING -> OURNET-POSTROUTING
//	filter OURNET-FOREIGN: bridges on the host that are not ournet's
//
// and four chains per network (ID cut to 12 characters):
//
//	filter OURNET-I-<id>  every packet that leaves through the network's bridge
//	filter OURNET-O-<id>  every packet from the bridge that leaves elsewhere
//	mangle OURNET-G-<id>  the same guard as the I chain's last DROP, in a
//	                      table dockerd never reorders: isolation and "no
//	                      direct routing" hold even if dockerd inserts its
//	                      own ACCEPTs above ournet's jump, or FORWARD's
//	                      policy is ACCEPT
//	nat    OURNET-N-<id>  masquerade of the network's subnets
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
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
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
	GuardChain       = "OURNET-GUARD"
	PostroutingChain = "OURNET-POSTROUTING"
	ForeignChain     = "OURNET-FOREIGN"
)

// tables in the order scripts touch them.
var tables = []string{"filter", "mangle", "nat"}

// Network is what the firewall needs to know about one network.
type Network struct {
	ID       string
	Bridge   string
	Subnets  []netip.Prefix // both families; each family's rules use its own
	ICC      bool
	Internal bool
	// Masquerade per family: off for a family whose gateway mode is routed
	// or when enable_ip_masquerade is false.
	Masquerade map[Family]bool
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// Chain names of one network.
func inChain(id string) string    { return "OURNET-I-" + short(id) }
func outChain(id string) string   { return "OURNET-O-" + short(id) }
func guardChain(id string) string { return "OURNET-G-" + short(id) }
func natChain(id string) string   { return "OURNET-N-" + short(id) }

// chainsOf lists a network's chains per table.
func chainsOf(id string) map[string][]string {
	return map[string][]string{
		"filter": {inChain(id), outChain(id)},
		"mangle": {guardChain(id)},
		"nat":    {natChain(id)},
	}
}

func (n Network) subnets(f Family) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range n.Subnets {
		if p.Addr().Is6() == (f == IPv6) {
			out = append(out, p.Masked())
		}
	}
	return out
}

// tableRules is what ournet wants in one table for one network: the rules of
// the chains it owns, and its jumps from base chains, as iptables-save
// prints them ("-A CHAIN ...").
type tableRules struct {
	chains map[string][]string
	jumps  []string
}

// rules computes network n's rules for family f, per table.
func rules(f Family, n Network) map[string]*tableRules {
	br := n.Bridge
	in, out, guard, nat := inChain(n.ID), outChain(n.ID), guardChain(n.ID), natChain(n.ID)

	// Into the bridge: replies, published ports (connections ournet's own
	// DNAT rules sent here), same-network traffic, and nothing else: no
	// direct routing to container addresses, whatever FORWARD's policy.
	inRules := []string{"-A " + in + " -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"}
	if !n.Internal {
		inRules = append(inRules, "-A "+in+" -m conntrack --ctstate DNAT -j ACCEPT")
	}
	if n.ICC {
		inRules = append(inRules, "-A "+in+" -i "+br+" -j ACCEPT")
	}
	inRules = append(inRules, "-A "+in+" -j DROP")

	// Out of the bridge to anywhere that is not an ournet bridge: never to
	// another engine bridge (OURNET-FOREIGN decides those), else out.
	var outRules []string
	if n.Internal {
		outRules = []string{"-A " + out + " -j DROP"}
	} else {
		outRules = []string{
			"-A " + out + " -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
			"-A " + out + " -j " + ForeignChain,
			"-A " + out + " -j ACCEPT",
		}
	}

	guardRules := []string{"-A " + guard + " ! -i " + br + " -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP"}
	if n.Internal {
		guardRules = []string{"-A " + guard + " ! -i " + br + " -m conntrack ! --ctstate RELATED,ESTABLISHED -j DROP"}
	}

	var natRules []string
	if n.Masquerade[f] && !n.Internal {
		for _, s := range n.subnets(f) {
			natRules = append(natRules, "-A "+nat+" -s "+s.String()+" ! -o "+br+" -j MASQUERADE")
		}
	}
	return map[string]*tableRules{
		"filter": {
			chains: map[string][]string{in: inRules, out: outRules},
			jumps: []string{
				"-A " + ForwardChain + " -o " + br + " -j " + in,
				"-A " + ForwardChain + " -i " + br + " -j " + out,
			},
		},
		"mangle": {
			chains: map[string][]string{guard: guardRules},
			jumps:  []string{"-A " + GuardChain + " -o " + br + " -j " + guard},
		},
		"nat": {
			chains: map[string][]string{nat: natRules},
			jumps:  []string{"-A " + PostroutingChain + " -j " + nat},
		},
	}
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
	// jumps caches, per family, the lines of the base chains (OURNET-FORWARD,
	// OURNET-GUARD, OURNET-POSTROUTING) as they were after ournet's last
	// change, so that adding or removing a network is one iptables-restore,
	// not a dump of every table first: the cost stays flat however many
	// networks exist. A stale cache (someone else deleted a jump) makes the
	// restore fail; the change is then retried once from a fresh dump.
	jumps map[Family]Saved
}

// New returns a Firewall that programs the given families.
func New(run Runner, families ...Family) *Firewall {
	return &Firewall{run: run, families: families, jumps: map[Family]Saved{}}
}

// Families lists the families this firewall programs.
func (fw *Firewall) Families() []Family { return fw.families }

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

// families of n: an IPv4-only network gets no ip6tables rules (nothing
// routes IPv6 into or out of its bridge: it has no IPv6 address but the
// link-local one), which halves its rules.
func (fw *Firewall) familiesOf(n Network) []Family {
	var out []Family
	for _, f := range fw.families {
		if f == IPv4 || len(n.subnets(IPv6)) > 0 {
			out = append(out, f)
		}
	}
	return out
}

// AddNetwork installs (or rewrites) every rule of network n.
func (fw *Firewall) AddNetwork(n Network) error {
	return fw.AddNetworks([]Network{n})
}

// AddNetworks installs (or rewrites) the rules of nets, in one
// iptables-restore per family: the restore at start uses it for all.
func (fw *Firewall) AddNetworks(nets []Network) error {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	for _, f := range fw.families {
		var mine []Network
		for _, n := range nets {
			if slices.Contains(fw.familiesOf(n), f) {
				mine = append(mine, n)
			}
		}
		if len(mine) == 0 {
			continue
		}
		err := fw.change(f, func(saved Saved) string {
			var b strings.Builder
			for _, n := range mine {
				b.WriteString(AddScript(f, n, saved))
			}
			return b.String()
		}, func(saved Saved) {
			for _, n := range mine {
				for table, tr := range rules(f, n) {
					cacheJumps(saved, table, tr.jumps, sortedKeys(tr.chains))
				}
			}
		})
		if err != nil {
			return fmt.Errorf("%s: adding rules of %d network(s): %w", f, len(mine), err)
		}
	}
	return nil
}

// change applies script(cached jumps); if that fails it retries once with a
// fresh dump. On success, update records the change in the cache.
func (fw *Firewall) change(f Family, script func(Saved) string, update func(Saved)) error {
	saved, err := fw.cached(f)
	if err != nil {
		return err
	}
	if err := fw.run.Restore(f, script(saved)); err != nil {
		if saved, err = fw.save(f); err != nil {
			return err
		}
		if err := fw.run.Restore(f, script(saved)); err != nil {
			delete(fw.jumps, f)
			return err
		}
	}
	update(saved)
	fw.jumps[f] = saved
	return nil
}

func (fw *Firewall) cached(f Family) (Saved, error) {
	if s, ok := fw.jumps[f]; ok {
		return s, nil
	}
	return fw.save(f)
}

// cacheJumps records that table's base chains now hold want as the jumps to
// chains, in place of whatever jumped there before.
func cacheJumps(saved Saved, table string, want, chains []string) {
	if saved[table] == nil {
		saved[table] = map[string][]string{}
	}
	for _, base := range []string{ForwardChain, GuardChain, PostroutingChain} {
		lines := saved[table][base]
		kept := lines[:0:0]
		for _, l := range lines {
			if len(referencing([]string{l}, chains...)) == 0 {
				kept = append(kept, l)
			}
		}
		saved[table][base] = kept
	}
	for _, l := range want {
		base := baseOf(l)
		if base == ForwardChain && strings.Contains(l, " -o ") {
			saved[table][base] = append([]string{l}, saved[table][base]...)
			continue
		}
		saved[table][base] = append(saved[table][base], l)
	}
}

// DelNetwork removes every rule of network id; rules already gone are fine.
func (fw *Firewall) DelNetwork(id string) error {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	var errs []error
	for _, f := range fw.families {
		err := fw.change(f, func(saved Saved) string { return DelScript(id, saved) }, func(saved Saved) {
			for table, chains := range chainsOf(id) {
				cacheJumps(saved, table, nil, chains)
			}
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: removing rules of network %s: %w", f, short(id), err))
		}
	}
	return errors.Join(errs...)
}

// SetForeignBridges rewrites OURNET-FOREIGN: traffic from ournet networks to
// these bridges (the engine's docker0, br-*, anyone else's) is dropped,
// except connections DNATed to a port published there. docker0 and br-+ are
// always listed, so the engine's bridges are covered before anyone lists them.
func (fw *Firewall) SetForeignBridges(names []string) error {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	for _, f := range fw.families {
		if err := fw.run.Restore(f, ForeignScript(names)); err != nil {
			return fmt.Errorf("%s: listing foreign bridges: %w", f, err)
		}
	}
	return nil
}

// EnsureForeignBridges rewrites OURNET-FOREIGN only where it differs from
// what SetForeignBridges(names) would write (a flush, a rule doubled by a
// concurrent writer); the repair loop calls it every round.
func (fw *Firewall) EnsureForeignBridges(names []string) error {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	want := ParseSave(ForeignScript(names))[ForeignChain]
	for _, f := range fw.families {
		dump, err := fw.run.Save(f, "filter")
		if err != nil {
			return err
		}
		if slices.Equal(ParseSave(dump)[ForeignChain], want) {
			continue
		}
		if err := fw.run.Restore(f, ForeignScript(names)); err != nil {
			return fmt.Errorf("%s: listing foreign bridges: %w", f, err)
		}
	}
	return nil
}

// ForeignScript is the iptables-restore input that rewrites OURNET-FOREIGN.
func ForeignScript(names []string) string {
	set := map[string]bool{"docker0": true, "br-+": true}
	for _, n := range names {
		set[n] = true
	}
	sorted := make([]string, 0, len(set))
	for n := range set {
		sorted = append(sorted, n)
	}
	sort.Strings(sorted)
	var b strings.Builder
	fmt.Fprintf(&b, "*filter\n:%s - [0:0]\n", ForeignChain)
	for _, n := range sorted {
		fmt.Fprintf(&b, "-A %s -o %s -m conntrack --ctstate DNAT -j ACCEPT\n", ForeignChain, n)
		fmt.Fprintf(&b, "-A %s -o %s -j DROP\n", ForeignChain, n)
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

// Saved is iptables-save output parsed per table: chain -> rule lines.
type Saved map[string]map[string][]string

func (fw *Firewall) save(f Family) (Saved, error) {
	out := Saved{}
	for _, table := range tables {
		dump, err := fw.run.Save(f, table)
		if err != nil {
			return nil, fmt.Errorf("%s: reading table %s: %w", f, table, err)
		}
		out[table] = ParseSave(dump)
	}
	return out, nil
}

// ParseSave reads iptables-save output into chain -> "-A chain ..." lines;
// declared chains with no rules are present with no lines.
func ParseSave(dump string) map[string][]string {
	chains := map[string][]string{}
	for _, line := range strings.Split(dump, "\n") {
		switch {
		case strings.HasPrefix(line, ":"):
			name, _, _ := strings.Cut(line[1:], " ")
			if _, ok := chains[name]; !ok {
				chains[name] = nil
			}
		case strings.HasPrefix(line, "-A "):
			name, _, _ := strings.Cut(line[3:], " ")
			chains[name] = append(chains[name], line)
		}
	}
	return chains
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

// baseOf is the base chain a jump line is in.
func baseOf(jump string) string {
	name, _, _ := strings.Cut(strings.TrimPrefix(jump, "-A "), " ")
	return name
}

func deleteLine(addLine string) string { return "-D" + strings.TrimPrefix(addLine, "-A") }

// AddScript is the iptables-restore input that installs network n, given
// what iptables-save shows now. It is pure, for golden-file tests.
func AddScript(f Family, n Network, saved Saved) string {
	var b strings.Builder
	want := rules(f, n)
	for _, table := range tables {
		tr := want[table]
		fmt.Fprintf(&b, "*%s\n", table)
		names := sortedKeys(tr.chains)
		for _, c := range names {
			fmt.Fprintf(&b, ":%s - [0:0]\n", c)
		}
		for _, c := range names {
			for _, r := range tr.chains[c] {
				b.WriteString(r + "\n")
			}
		}
		writeJumps(&b, saved[table], tr.jumps, names)
		b.WriteString("COMMIT\n")
	}
	return b.String()
}

// writeJumps makes the base chains' jumps to chains exactly want: it leaves
// them alone when they already are, otherwise deletes the old and adds the
// new. "-o" jumps into OURNET-FORWARD are inserted, so that they all come
// before the "-i" ones, which are appended.
func writeJumps(b *strings.Builder, saved map[string][]string, want, chains []string) {
	var have []string
	for _, base := range baseChains(want) {
		have = append(have, referencing(saved[base], chains...)...)
	}
	if slices.Equal(have, want) {
		return
	}
	for _, l := range have {
		b.WriteString(deleteLine(l) + "\n")
	}
	for _, l := range want {
		if baseOf(l) == ForwardChain && strings.Contains(l, " -o ") {
			b.WriteString("-I" + strings.TrimPrefix(l, "-A") + "\n")
			continue
		}
		b.WriteString(l + "\n")
	}
}

func baseChains(jumps []string) []string {
	var out []string
	for _, j := range jumps {
		if base := baseOf(j); !slices.Contains(out, base) {
			out = append(out, base)
		}
	}
	return out
}

// DelScript is the iptables-restore input that removes network id.
func DelScript(id string, saved Saved) string {
	var b strings.Builder
	own := chainsOf(id)
	bases := map[string]string{"filter": ForwardChain, "mangle": GuardChain, "nat": PostroutingChain}
	for _, table := range tables {
		fmt.Fprintf(&b, "*%s\n", table)
		// Declaring a chain creates or flushes it, so -X works whether or
		// not it existed.
		for _, c := range own[table] {
			fmt.Fprintf(&b, ":%s - [0:0]\n", c)
		}
		for _, l := range referencing(saved[table][bases[table]], own[table]...) {
			b.WriteString(deleteLine(l) + "\n")
		}
		for _, c := range own[table] {
			fmt.Fprintf(&b, "-X %s\n", c)
		}
		b.WriteString("COMMIT\n")
	}
	return b.String()
}

// Drifted returns the networks among nets whose rules differ from what they
// should be in any family (a chain flushed, a jump deleted, a rule edited).
func (fw *Firewall) Drifted(nets []Network) ([]Network, error) {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	var out []Network
	seen := map[string]bool{}
	for _, f := range fw.families {
		saved, err := fw.save(f)
		if err != nil {
			return nil, err
		}
		fw.jumps[f] = saved // what is really there, for the repairs to come
		for _, n := range nets {
			if !seen[n.ID] && slices.Contains(fw.familiesOf(n), f) && !matches(f, n, saved) {
				seen[n.ID] = true
				out = append(out, n)
			}
		}
	}
	return out, nil
}

func matches(f Family, n Network, saved Saved) bool {
	for table, tr := range rules(f, n) {
		for c, want := range tr.chains {
			have, ok := saved[table][c]
			if !ok || !slices.Equal(have, want) {
				return false
			}
		}
		for _, j := range tr.jumps {
			if !slices.Contains(saved[table][baseOf(j)], j) {
				return false
			}
		}
	}
	return true
}

// OwnedNetworks lists the network IDs (12 characters) that have chains in
// the tables now, so that the restore can remove those of networks it does
// not know (left by a crash).
func (fw *Firewall) OwnedNetworks() (map[string]bool, error) {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	ids := map[string]bool{}
	for _, f := range fw.families {
		saved, err := fw.save(f)
		if err != nil {
			return nil, err
		}
		for _, chains := range saved {
			for c := range chains {
				for _, p := range []string{"OURNET-I-", "OURNET-O-", "OURNET-G-", "OURNET-N-"} {
					if id, ok := strings.CutPrefix(c, p); ok {
						ids[id] = true
					}
				}
			}
		}
	}
	return ids, nil
}

func sortedKeys(m map[string][]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Teardown removes every chain whose name starts with OURNET- from every
// table, and the jumps to them from the built-in chains: what ournet leaves
// when it has no network left and is shut down, so that uninstalling it
// leaves nothing behind. Chains of other packages (portmap) go too.
func (fw *Firewall) Teardown() error {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	fw.jumps = map[Family]Saved{}
	var errs []error
	for _, f := range fw.families {
		var b strings.Builder
		for _, table := range append(slices.Clone(tables), "raw") {
			dump, err := fw.run.Save(f, table)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			b.WriteString(TeardownScript(table, ParseSave(dump)))
		}
		if err := fw.run.Restore(f, b.String()); err != nil {
			errs = append(errs, fmt.Errorf("%s: removing ournet's chains: %w", f, err))
		}
	}
	return errors.Join(errs...)
}

// TeardownScript is the iptables-restore input that removes ournet's
// chains from one table, given its parsed iptables-save output.
func TeardownScript(table string, chains map[string][]string) string {
	var own []string
	for c := range chains {
		if strings.HasPrefix(c, "OURNET-") {
			own = append(own, c)
		}
	}
	if len(own) == 0 {
		return ""
	}
	sort.Strings(own)
	var b strings.Builder
	fmt.Fprintf(&b, "*%s\n", table)
	for _, c := range own {
		fmt.Fprintf(&b, ":%s - [0:0]\n", c) // flushes it
	}
	for c, lines := range chains {
		if strings.HasPrefix(c, "OURNET-") {
			continue
		}
		for _, l := range referencing(lines, own...) {
			b.WriteString(deleteLine(l) + "\n")
		}
	}
	for _, c := range own {
		fmt.Fprintf(&b, "-X %s\n", c)
	}
	b.WriteString("COMMIT\n")
	return b.String()
}
