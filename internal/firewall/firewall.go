// Package firewall programs ournet's iptables rules.
//
// Layout. ournet never writes into dockerd's chains (dockerd flushes them at
// start). It owns base chains, each reached by one jump:
//
//	filter FORWARD     -> OURNET-FORWARD      (right after DOCKER-USER)
//	                      -> OURNET-INTO, then OURNET-OUTOF
//	mangle FORWARD     -> OURNET-GUARD        (first)
//	nat    POSTROUTING -> OURNET-POSTROUTING
//	filter OURNET-FOREIGN: the way out of every ournet network: dropped into
//	                   bridges on the host that are not ournet's, else accepted
//
// and, per network (ID cut to 12 characters), one chain and a few lines in
// the base chains, each line tagged with the comment "ournet:<id>" so that
// it can be found and removed by the network's ID alone:
//
//	filter OURNET-I-<id>   every packet that leaves through the network's
//	                       bridge: replies, published ports, same-network
//	                       traffic (icc), and nothing else
//	filter OURNET-INTO     -o <bridge> -j OURNET-I-<id>
//	filter OURNET-OUTOF    -i <bridge> -j OURNET-FOREIGN (internal: DROP)
//	mangle OURNET-GUARD    the I chain's final DROP again, in a table
//	                       dockerd never reorders: isolation and "no direct
//	                       routing" hold even if dockerd inserts its own
//	                       ACCEPTs above ournet's jump, or FORWARD's policy
//	                       is ACCEPT
//	nat OURNET-POSTROUTING masquerade of each of the network's subnets
//
// That is 7 rules for a default IPv4 network (the bridge driver adds 8).
//
// OURNET-FORWARD sends every packet through all "-o <bridge>" lines
// (OURNET-INTO) before any "-i <bridge>" line (OURNET-OUTOF), and every I
// chain ends in a verdict. So a packet bound for an ournet
// bridge is judged by the destination network alone, whoever sent it: that
// alone isolates networks from each other with a constant number of rules
// per network.
//
// A network's rules are rewritten whole in one iptables-restore --noflush
// transaction (declaring a chain there flushes it; its tagged lines are
// deleted and appended again only when they differ), so adding a network twice
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
	IntoChain        = "OURNET-INTO"
	OutofChain       = "OURNET-OUTOF"
	GuardChain       = "OURNET-GUARD"
	PostroutingChain = "OURNET-POSTROUTING"
	ForeignChain     = "OURNET-FOREIGN"
	// BridgesChain lists every container bridge on the host (ournet's and
	// the engine's), each "-i <bridge> -j RETURN", then accepts: the I
	// chain of a nat-unprotected network jumps here, so that the outside
	// reaches every port while other container networks stay isolated.
	BridgesChain = "OURNET-BRIDGES"
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
	// Unprotected per family (gateway mode nat-unprotected): anything that
	// does not come from a container bridge may reach any port.
	Unprotected map[Family]bool
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// inChain is the chain of one network.
func inChain(id string) string { return "OURNET-I-" + short(id) }

// tag is the comment on every line a network has in a base chain, as
// iptables-save prints it.
func tag(id string) string { return `-m comment --comment "ournet:` + short(id) + `"` }

// legacyChains are the per-network chains of ournet before 7 rules per
// network (OURNET-O, -G, -N): removed when a network is added or deleted, so
// that an upgrade leaves none behind.
func legacyChains(id string) map[string][]string {
	return map[string][]string{
		"filter": {"OURNET-O-" + short(id)},
		"mangle": {"OURNET-G-" + short(id)},
		"nat":    {"OURNET-N-" + short(id)},
	}
}

// chainsOf lists a network's chains per table, old ones included.
func chainsOf(id string) map[string][]string {
	own := legacyChains(id)
	own["filter"] = append([]string{inChain(id)}, own["filter"]...)
	return own
}

// basesOf lists the shared chains of a table where networks have lines.
// OURNET-FORWARD holds none now, only its two jumps; lines found there are
// an older version's, removed like any line that is not wanted.
func basesOf(table string) []string {
	switch table {
	case "filter":
		return []string{ForwardChain, IntoChain, OutofChain}
	case "mangle":
		return []string{GuardChain}
	}
	return []string{PostroutingChain}
}

// ownedIn returns network id's lines in the shared chains of one table, in
// chain order.
func ownedIn(chains map[string][]string, table, id string) []string {
	var out []string
	own := ownedBy(id)
	for _, b := range basesOf(table) {
		for _, l := range chains[b] {
			if own(l) {
				out = append(out, l)
			}
		}
	}
	return out
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
// the chains it owns, and its tagged lines in the table's base chain (jumps
// and rules), as iptables-save prints them ("-A CHAIN ...").
type tableRules struct {
	chains map[string][]string
	jumps  []string
}

// rules computes network n's rules for family f, per table.
func rules(f Family, n Network) map[string]*tableRules {
	br, in, t := n.Bridge, inChain(n.ID), tag(n.ID)

	// Into the bridge: replies, published ports (connections ournet's own
	// DNAT rules sent here), same-network traffic, and nothing else: no
	// direct routing to container addresses, whatever FORWARD's policy.
	states := "RELATED,ESTABLISHED,DNAT"
	if n.Internal {
		states = "RELATED,ESTABLISHED"
	}
	inRules := []string{"-A " + in + " -m conntrack --ctstate " + states + " -j ACCEPT"}
	if n.ICC {
		inRules = append(inRules, "-A "+in+" -i "+br+" -j ACCEPT")
	}
	unprotected := n.Unprotected[f] && !n.Internal
	if unprotected {
		inRules = append(inRules, "-A "+in+" -j "+BridgesChain)
	}
	inRules = append(inRules, "-A "+in+" -j DROP")
	// The guard repeats the I chain's DROP where dockerd cannot reorder
	// it; a network open to the outside has none to repeat.
	guard := []string{"-A " + GuardChain + " ! -i " + br + " -o " + br + " -m conntrack ! --ctstate " + states + " " + t + " -j DROP"}
	if unprotected {
		guard = nil
	}

	// Out of the bridge to anywhere that is not an ournet bridge (those are
	// judged by their own I chain, first): OURNET-FOREIGN keeps it out of
	// the engine's bridges and accepts the rest.
	out := "-A " + OutofChain + " -i " + br + " " + t + " -j " + ForeignChain
	if n.Internal {
		out = "-A " + OutofChain + " -i " + br + " " + t + " -j DROP"
	}

	var natRules []string
	if n.Masquerade[f] && !n.Internal {
		for _, s := range n.subnets(f) {
			natRules = append(natRules, "-A "+PostroutingChain+" -s "+s.String()+" ! -o "+br+" "+t+" -j MASQUERADE")
		}
	}
	return map[string]*tableRules{
		"filter": {
			chains: map[string][]string{in: inRules},
			jumps:  []string{"-A " + IntoChain + " -o " + br + " " + t + " -j " + in, out},
		},
		"mangle": {jumps: guard},
		"nat":    {jumps: natRules},
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
// OURNET-FOREIGN, every network's way out, is filled by
// Set/EnsureForeignBridges, which must follow before any network is used.
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
					cacheJumps(saved, table, tr.jumps, n.ID)
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

// cacheJumps records that table's shared chains now hold want as network
// id's lines, in place of whatever it had there before, and that its old
// chains are gone.
func cacheJumps(saved Saved, table string, want []string, id string) {
	if saved[table] == nil {
		saved[table] = map[string][]string{}
	}
	own := ownedBy(id)
	for _, base := range basesOf(table) {
		saved[table][base] = slices.DeleteFunc(slices.Clone(saved[table][base]), own)
	}
	for _, c := range legacyChains(id)[table] {
		delete(saved[table], c)
	}
	for _, l := range want {
		saved[table][baseOf(l)] = append(saved[table][baseOf(l)], l)
	}
}

// DelNetwork removes every rule of network id; rules already gone are fine.
func (fw *Firewall) DelNetwork(id string) error {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	var errs []error
	for _, f := range fw.families {
		err := fw.change(f, func(saved Saved) string { return DelScript(id, saved) }, func(saved Saved) {
			for _, table := range tables {
				cacheJumps(saved, table, nil, id)
			}
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: removing rules of network %s: %w", f, short(id), err))
		}
	}
	return errors.Join(errs...)
}

// SetForeignBridges rewrites OURNET-FOREIGN, every ournet network's way out:
// traffic to these bridges (the engine's docker0, br-*, anyone else's) is
// dropped, except connections DNATed to a port published there; the rest is
// accepted. docker0 and br-+ are always listed, so the engine's bridges are
// covered before anyone lists them.
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
// concurrent writer); the plugin calls it at start, and the repair loop
// every round.
func (fw *Firewall) EnsureForeignBridges(names []string) error {
	return fw.ensureChain(ForeignChain, ForeignScript(names), "listing foreign bridges")
}

// ensureChain rewrites one filter chain with script where, in a family,
// its rules differ from what script writes.
func (fw *Firewall) ensureChain(chain, script, what string) error {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	want := ParseSave(script)[chain]
	for _, f := range fw.families {
		dump, err := fw.run.Save(f, "filter")
		if err != nil {
			return err
		}
		if slices.Equal(ParseSave(dump)[chain], want) {
			continue
		}
		if err := fw.run.Restore(f, script); err != nil {
			return fmt.Errorf("%s: %s: %w", f, what, err)
		}
	}
	return nil
}

// EnsureBridges rewrites OURNET-BRIDGES, where it differs, to list the
// given container bridges (the engine's docker0 and br-+ always).
func (fw *Firewall) EnsureBridges(names []string) error {
	return fw.ensureChain(BridgesChain, BridgesScript(names), "listing container bridges")
}

// BridgesScript is the iptables-restore input that rewrites OURNET-BRIDGES.
func BridgesScript(names []string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "*filter\n:%s - [0:0]\n", BridgesChain)
	for _, n := range withEngineBridges(names) {
		fmt.Fprintf(&b, "-A %s -i %s -j RETURN\n", BridgesChain, n)
	}
	fmt.Fprintf(&b, "-A %s -j ACCEPT\n", BridgesChain)
	b.WriteString("COMMIT\n")
	return b.String()
}

// withEngineBridges is names with the engine's own bridges, sorted.
func withEngineBridges(names []string) []string {
	set := map[string]bool{"docker0": true, "br-+": true}
	for _, n := range names {
		set[n] = true
	}
	sorted := make([]string, 0, len(set))
	for n := range set {
		sorted = append(sorted, n)
	}
	sort.Strings(sorted)
	return sorted
}

// ForeignScript is the iptables-restore input that rewrites OURNET-FOREIGN.
func ForeignScript(names []string) string {
	sorted := withEngineBridges(names)
	var b strings.Builder
	fmt.Fprintf(&b, "*filter\n:%s - [0:0]\n", ForeignChain)
	for _, n := range sorted {
		fmt.Fprintf(&b, "-A %s -o %s -m conntrack --ctstate DNAT -j ACCEPT\n", ForeignChain, n)
		fmt.Fprintf(&b, "-A %s -o %s -j DROP\n", ForeignChain, n)
	}
	fmt.Fprintf(&b, "-A %s -j ACCEPT\n", ForeignChain)
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

// ownedBy reports whether a line belongs to network id: tagged with its
// comment, or jumping to one of its chains (as older versions wrote).
func ownedBy(id string) func(line string) bool {
	var chains []string
	for _, table := range tables {
		chains = append(chains, chainsOf(id)[table]...)
	}
	t := " " + tag(id) + " "
	return func(l string) bool {
		return strings.Contains(l, t) || len(referencing([]string{l}, chains...)) > 0
	}
}

// baseOf is the chain a line is in.
func baseOf(line string) string {
	name, _, _ := strings.Cut(strings.TrimPrefix(line, "-A "), " ")
	return name
}

func deleteLine(addLine string) string { return "-D" + strings.TrimPrefix(addLine, "-A") }

// AddScript is the iptables-restore input that installs network n, given
// what iptables-save shows now. It is pure, for golden-file tests.
func AddScript(f Family, n Network, saved Saved) string {
	var b strings.Builder
	want := rules(f, n)
	for _, table := range tables {
		var t strings.Builder
		tr := want[table]
		names := sortedKeys(tr.chains)
		for _, c := range names {
			fmt.Fprintf(&t, ":%s - [0:0]\n", c)
		}
		for _, c := range names {
			for _, r := range tr.chains[c] {
				t.WriteString(r + "\n")
			}
		}
		writeJumps(&t, ownedIn(saved[table], table, n.ID), tr.jumps)
		// Chains of an older version: their jumps went just above.
		for _, c := range legacyChains(n.ID)[table] {
			if _, ok := saved[table][c]; ok {
				fmt.Fprintf(&t, ":%s - [0:0]\n-X %s\n", c, c)
			}
		}
		if t.Len() > 0 {
			fmt.Fprintf(&b, "*%s\n%sCOMMIT\n", table, t.String())
		}
	}
	return b.String()
}

// writeJumps makes a network's lines in the shared chains (now: have)
// exactly want: it leaves them alone when they already are, otherwise
// deletes the old and appends the new. Only appends: an insert makes
// iptables-nft read every rule of the chain first, which grows with the
// number of networks (15 ms at 400 networks against 5 for an append).
func writeJumps(b *strings.Builder, have, want []string) {
	if slices.Equal(have, want) {
		return
	}
	for _, l := range have {
		b.WriteString(deleteLine(l) + "\n")
	}
	for _, l := range want {
		b.WriteString(l + "\n")
	}
}

// DelScript is the iptables-restore input that removes network id.
func DelScript(id string, saved Saved) string {
	var b strings.Builder
	own := chainsOf(id)
	for _, table := range tables {
		fmt.Fprintf(&b, "*%s\n", table)
		// Declaring a chain creates or flushes it, so -X works whether or
		// not it existed.
		for _, c := range own[table] {
			fmt.Fprintf(&b, ":%s - [0:0]\n", c)
		}
		for _, l := range ownedIn(saved[table], table, id) {
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
		if !slices.Equal(ownedIn(saved[table], table, n.ID), tr.jumps) {
			return false
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
			for c, lines := range chains {
				for _, p := range []string{"OURNET-I-", "OURNET-O-", "OURNET-G-", "OURNET-N-"} {
					if id, ok := strings.CutPrefix(c, p); ok {
						ids[id] = true
					}
				}
				for _, l := range lines {
					if _, rest, ok := strings.Cut(l, `--comment "ournet:`); ok {
						id, _, _ := strings.Cut(rest, `"`)
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
