package firewall

import (
	"slices"
	"strings"

	"github.com/ournet/ournet/internal/iptables"
)

// Drifted returns the networks among nets whose rules differ from what they
// should be in any family (a chain flushed, a jump deleted, a rule edited).
// The tables are read without the lock, so that networks are added and
// removed meanwhile; one added during the read may be reported (adding it
// again is harmless), and the cache takes the read only if nothing was
// written during it.
func (fw *Firewall) Drifted(nets []Network) ([]Network, error) {
	var out []Network
	seen := map[string]bool{}
	for _, f := range fw.families {
		fw.mu.Lock()
		gen := fw.gen
		fw.mu.Unlock()
		saved, err := iptables.Read(fw.run, f, tables...)
		if err != nil {
			return nil, err
		}
		fw.mu.Lock()
		if fw.gen == gen {
			fw.jumps[f] = saved // what is really there, for the repairs to come
		}
		fw.mu.Unlock()
		for _, n := range nets {
			if !seen[n.ID] && slices.Contains(fw.familiesOf(n), f) && !matches(f, n, saved) {
				seen[n.ID] = true
				out = append(out, n)
			}
		}
	}
	return out, nil
}

func matches(f iptables.Family, n Network, saved iptables.Tables) bool {
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

// OwnedNetworks lists the network IDs (12 characters) that have chains or
// tagged lines in the tables now, so that the restore can remove those of
// networks it does not know (left by a crash).
func (fw *Firewall) OwnedNetworks() (map[string]bool, error) {
	ids := map[string]bool{}
	for _, f := range fw.families {
		saved, err := iptables.Read(fw.run, f, tables...)
		if err != nil {
			return nil, err
		}
		for _, chains := range saved {
			for c, lines := range chains {
				if id, ok := strings.CutPrefix(c, iptables.NetworkPrefix); ok {
					ids[id] = true
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
