package firewall

import (
	"fmt"
	"slices"
	"strings"

	"github.com/ournet/ournet/internal/iptables"
)

// Setup makes the nftables table's base where it is not intact, then the
// static iptables chains and jumps where they are missing or out of place,
// after the cleaner has removed what older versions left; safe to call at
// any time, and it writes nothing when all is in place. The table first:
// what leaves a network for another bridge is dropped there, and must be
// before OURNET-FORWARD accepts the rest.
func (fw *Firewall) Setup() error {
	fw.mu.Lock()
	fw.vxlan = "" // checked again at the next EnsureVXLAN or DelVXLAN
	fw.mu.Unlock()
	if err := fw.setupNFT(); err != nil {
		return err
	}
	for _, f := range fw.families {
		// Read without the lock: a repair round's reads must not hold up
		// the networks being added meanwhile.
		saved, err := iptables.Read(fw.run, f, tables...)
		if err != nil {
			return err
		}
		script := CleanScript(saved) + BaseScript(saved)
		if script == "" {
			continue
		}
		if err := fw.write(f, script); err != nil {
			return fmt.Errorf("%s: setting up the base chains: %w", f, err)
		}
	}
	return nil
}

// setupNFT rewrites the table's base if it is not intact.
func (fw *Firewall) setupNFT() error {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	c, s, err := fw.read()
	if err != nil {
		return err
	}
	if s.baseIntact {
		return nil
	}
	fw.known = nil // the networks' objects are checked again by Drifted
	fw.gen++
	if err := ensureBase(c, s); err != nil {
		return err
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables: setting up table inet %s: %w", TableName, err)
	}
	return nil
}

// write applies a script that is not one network's change.
func (fw *Firewall) write(f iptables.Family, script string) error {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	return fw.run.Restore(f, script)
}

// baseChain is one base chain and the built-in chain that jumps to it
// ("" for a chain reached only from other ournet chains).
type baseChain struct{ table, chain, parent string }

var baseChains = []baseChain{
	{"filter", ForwardChain, "FORWARD"},
}

// forwardRules is all OURNET-FORWARD holds: what goes into an ournet
// bridge, and what leaves one, was judged by the table's forward chain
// (which dropped what it must: into another network, out of an internal
// one, into a bridge that is not ournet's).
var forwardRules = []string{
	fmt.Sprintf("-A %s -m devgroup --dst-group 0x%x -j ACCEPT", ForwardChain, BridgeGroup),
	fmt.Sprintf("-A %s -m devgroup --src-group 0x%x -j ACCEPT", ForwardChain, BridgeGroup),
}

// BaseScript is the iptables-restore input that creates what is missing
// of the base chains and puts their jumps in place, given what
// iptables-save shows now (after CleanScript's changes); "" if nothing is.
// The FORWARD jump goes right after dockerd's DOCKER-USER jump, so the
// user's rules still come first, and before dockerd's own ACCEPT rules for
// its bridges. OURNET-FORWARD holds exactly its two rules: anything else
// there is replaced, atomically.
func BaseScript(saved iptables.Tables) string {
	var b strings.Builder
	for _, table := range tables {
		chains := saved[table]
		var t strings.Builder
		for _, c := range baseChains {
			if c.table != table {
				continue
			}
			have, exists := chains[c.chain]
			if c.chain == ForwardChain && !slices.Equal(have, forwardRules) {
				fmt.Fprintf(&t, ":%s - [0:0]\n%s\n", c.chain, strings.Join(forwardRules, "\n"))
			} else if !exists {
				fmt.Fprintf(&t, ":%s - [0:0]\n", c.chain)
			}
			if c.parent == "" {
				continue
			}
			lines := cleaned(chains[c.parent])
			jump := "-A " + c.parent + " -j " + c.chain
			want := jumpPosition(lines, c.chain)
			have1 := slices.Index(lines, jump) + 1 // rule number, 0 if absent
			if have1 == want {
				continue
			}
			if have1 > 0 {
				// Present but out of place (dockerd inserted its rules
				// above it): moved back.
				t.WriteString(iptables.DeleteLine(jump) + "\n")
				if have1 < want {
					want--
				}
			}
			t.WriteString(iptables.InsertLine(jump, want) + "\n")
		}
		if t.Len() > 0 {
			fmt.Fprintf(&b, "*%s\n%sCOMMIT\n", table, t.String())
		}
	}
	return b.String()
}

// jumpPosition is where ournet's jump to chain belongs among lines (the
// parent's rules), as a rule number: right after DOCKER-USER's jump in
// filter FORWARD, else first.
func jumpPosition(lines []string, chain string) int {
	if chain == ForwardChain {
		if i := slices.Index(lines, "-A FORWARD -j DOCKER-USER"); i >= 0 {
			return i + 2
		}
	}
	return 1
}
