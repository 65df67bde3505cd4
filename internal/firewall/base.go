package firewall

import (
	"fmt"
	"slices"
	"strings"

	"github.com/ournet/ournet/internal/iptables"
)

// Setup creates the base chains and jumps where they are missing or out of
// place, after the cleaner has removed what older versions left; safe to
// call at any time, and it writes nothing when all is in place.
// OURNET-FOREIGN, every network's way out, is filled by
// Set/EnsureForeignBridges, which must follow before any network is used.
func (fw *Firewall) Setup() error {
	fw.mu.Lock()
	fw.vxlan = "" // checked again at the next EnsureVXLAN or DelVXLAN
	fw.mu.Unlock()
	for _, f := range fw.families {
		// Read without the lock: a repair round's reads must not hold up
		// the networks being added meanwhile (they touch other chains).
		saved, err := iptables.Read(fw.run, f, tables...)
		if err != nil {
			return err
		}
		clean := CleanScript(saved)
		script := clean + BaseScript(saved)
		if script == "" {
			continue
		}
		// Moving a jump (dockerd's start and its every bridge network put
		// their rules on top) leaves the networks' lines as they are: the
		// cache stays. A base chain made again, or an older layout
		// removed, changes them.
		if err := fw.write(f, script, clean != "" || !hasCachedChains(saved)); err != nil {
			return fmt.Errorf("%s: setting up the base chains: %w", f, err)
		}
	}
	return nil
}

// write applies a script that is not one network's change. One that may
// touch the chains the cache holds (invalidates) makes the next change
// read the tables again.
func (fw *Firewall) write(f iptables.Family, script string, invalidates bool) error {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	if invalidates {
		fw.gen++
		delete(fw.jumps, f)
	}
	return fw.run.Restore(f, script)
}

// hasCachedChains reports whether every chain the cache holds lines of
// exists.
func hasCachedChains(saved iptables.Tables) bool {
	for _, table := range tables {
		for _, c := range basesOf(table) {
			if _, ok := saved[table][c]; !ok {
				return false
			}
		}
	}
	return true
}

// baseChain is one base chain and the built-in chain that jumps to it
// ("" for a chain reached only from other ournet chains).
type baseChain struct{ table, chain, parent string }

var baseChains = []baseChain{
	{"filter", ForeignChain, ""},
	{"filter", BridgesChain, ""},
	{"filter", IntoChain, ""},
	{"filter", OutofChain, ""},
	{"filter", ForwardChain, "FORWARD"},
	{"mangle", GuardChain, "FORWARD"},
	{"nat", PostroutingChain, "POSTROUTING"},
}

// forwardRules is all OURNET-FORWARD holds: every packet meets all the
// "-o <bridge>" lines before any "-i <bridge>" line.
var forwardRules = []string{"-A " + ForwardChain + " -j " + IntoChain, "-A " + ForwardChain + " -j " + OutofChain}

// BaseScript is the iptables-restore input that creates what is missing
// of the base chains and puts their jumps in place, given what
// iptables-save shows now (after CleanScript's changes); "" if nothing is.
// The FORWARD jump goes right after dockerd's DOCKER-USER jump, so the
// user's rules still come first, and before dockerd's own ACCEPT rules for
// its bridges; the others go first. OURNET-FORWARD holds exactly its two
// jumps: anything else there is replaced, atomically.
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
