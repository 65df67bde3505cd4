package firewall

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/ournet/ournet/internal/iptables"
)

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
// concurrent writer); the plugin calls it at start, and the repair rounds.
func (fw *Firewall) EnsureForeignBridges(names []string) error {
	return fw.ensureChain(ForeignChain, ForeignScript(names), "listing foreign bridges")
}

// ensureChain rewrites one filter chain with script where, in a family,
// its rules differ from what script writes.
// The table is read without the lock; the chain is ournet's alone and
// rewritten whole, so a read that is stale by then costs one needless
// rewrite at most.
func (fw *Firewall) ensureChain(chain, script, what string) error {
	want := iptables.Parse(script)[chain]
	for _, f := range fw.families {
		dump, err := fw.run.Save(f, "filter")
		if err != nil {
			return fmt.Errorf("%s: reading table filter: %w", f, err)
		}
		if slices.Equal(iptables.Parse(dump)[chain], want) {
			continue
		}
		if err := fw.write(f, script); err != nil {
			return fmt.Errorf("%s: %s: %w", f, what, err)
		}
	}
	return nil
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
