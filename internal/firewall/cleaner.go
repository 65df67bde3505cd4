package firewall

import (
	"fmt"
	"strings"

	"github.com/ournet/ournet/internal/iptables"
)

// The cleaner removes what older versions of ournet left in iptables and
// the current one never writes (iptables.Legacy): the per-network chains
// of the layouts before the nftables table, the base chains that held the
// networks' lines, and every line that jumps to them. It runs in Setup, at
// start and in every full repair round, so that the code that adds,
// deletes and checks networks knows only today's layout.

// legacy reports whether chain is a chain of an older layout.
func legacy(table, chain string) bool {
	for _, l := range iptables.Legacy[table] {
		if chain == l || strings.HasSuffix(l, "-") && strings.HasPrefix(chain, l) {
			return true
		}
	}
	return false
}

// CleanScript is the iptables-restore input that removes the older
// layouts' chains and the lines jumping to them; "" if there are none.
func CleanScript(saved iptables.Tables) string {
	var b strings.Builder
	for _, table := range tables {
		var old []string
		for _, c := range saved[table].Names() {
			if legacy(table, c) {
				old = append(old, c)
			}
		}
		if len(old) == 0 {
			continue
		}
		fmt.Fprintf(&b, "*%s\n", table)
		for _, c := range old {
			fmt.Fprintf(&b, ":%s - [0:0]\n", c) // flushes it
		}
		for _, c := range saved[table].Names() {
			if legacy(table, c) {
				continue // flushed just above
			}
			for _, l := range iptables.Jumps(saved[table][c], old...) {
				b.WriteString(iptables.DeleteLine(l) + "\n")
			}
		}
		for _, c := range old {
			fmt.Fprintf(&b, "-X %s\n", c)
		}
		b.WriteString("COMMIT\n")
	}
	return b.String()
}

// cleaned is a parent chain's lines as they are once CleanScript has run:
// without the jumps to older layouts' chains.
func cleaned(lines []string) []string {
	var out []string
	for _, l := range lines {
		if t := iptables.Target(l); t != "" && legacyAnywhere(t) {
			continue
		}
		out = append(out, l)
	}
	return out
}

// legacyAnywhere reports whether chain is an older layout's per-network
// chain of any table (a jump names only the chain).
func legacyAnywhere(chain string) bool {
	for table := range iptables.Legacy {
		if legacy(table, chain) {
			return true
		}
	}
	return false
}
