package firewall

import (
	"fmt"
	"slices"
	"strings"

	"github.com/ournet/ournet/internal/iptables"
)

// AddScript is the iptables-restore input that installs network n, given
// what iptables-save shows now. It is pure, for golden-file tests.
func AddScript(f iptables.Family, n Network, saved iptables.Tables) string {
	var b strings.Builder
	want := rules(f, n)
	for _, table := range tables {
		var t strings.Builder
		tr := want[table]
		names := tr.chains.Names()
		for _, c := range names {
			fmt.Fprintf(&t, ":%s - [0:0]\n", c)
		}
		for _, c := range names {
			for _, r := range tr.chains[c] {
				t.WriteString(r + "\n")
			}
		}
		writeJumps(&t, ownedIn(saved[table], table, n.ID), tr.jumps)
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
		b.WriteString(iptables.DeleteLine(l) + "\n")
	}
	for _, l := range want {
		b.WriteString(l + "\n")
	}
}

// DelScript is the iptables-restore input that removes network id.
func DelScript(id string, saved iptables.Tables) string {
	var b strings.Builder
	for _, table := range tables {
		fmt.Fprintf(&b, "*%s\n", table)
		// Declaring a chain creates or flushes it, so -X works whether or
		// not it existed.
		if table == "filter" {
			fmt.Fprintf(&b, ":%s - [0:0]\n", inChain(id))
		}
		for _, l := range ownedIn(saved[table], table, id) {
			b.WriteString(iptables.DeleteLine(l) + "\n")
		}
		if table == "filter" {
			fmt.Fprintf(&b, "-X %s\n", inChain(id))
		}
		b.WriteString("COMMIT\n")
	}
	return b.String()
}
