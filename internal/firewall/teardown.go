package firewall

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/ournet/ournet/internal/iptables"
)

// Teardown removes table inet ournet, and every chain whose name starts
// with OURNET- from every iptables table with the jumps to them from the
// built-in chains: what ournet does when it has no network left and is
// shut down, so that uninstalling it leaves nothing behind. The chains of
// published ports (internal/portmap, the same registry) go too.
func (fw *Firewall) Teardown() error {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	fw.known = nil
	fw.vxlan = ""
	fw.gen++
	var errs []error
	if err := fw.deleteTable(); err != nil {
		errs = append(errs, err)
	}
	for _, f := range fw.families {
		var b strings.Builder
		for _, table := range append(slices.Clone(tables), "raw") {
			dump, err := fw.run.Save(f, table)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: reading table %s: %w", f, table, err))
				continue
			}
			b.WriteString(TeardownScript(table, iptables.Parse(dump)))
		}
		if b.Len() == 0 {
			continue
		}
		if err := fw.run.Restore(f, b.String()); err != nil {
			errs = append(errs, fmt.Errorf("%s: removing ournet's chains: %w", f, err))
		}
	}
	return errors.Join(errs...)
}

// TeardownScript is the iptables-restore input that removes ournet's
// chains from one table, given its parsed iptables-save output.
func TeardownScript(table string, chains iptables.Chains) string {
	var own []string
	for c := range chains {
		if iptables.Ours(c) {
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
	for _, c := range chains.Names() {
		if iptables.Ours(c) {
			continue
		}
		for _, l := range iptables.Jumps(chains[c], own...) {
			b.WriteString(iptables.DeleteLine(l) + "\n")
		}
	}
	for _, c := range own {
		fmt.Fprintf(&b, "-X %s\n", c)
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

// deleteTable removes table inet ournet; a missing one is fine.
func (fw *Firewall) deleteTable() error {
	c, err := fw.dial()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	// Adding the table first makes deleting it valid when it is absent.
	c.AddTable(table)
	c.DelTable(table)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables: removing table inet %s: %w", TableName, err)
	}
	return nil
}
