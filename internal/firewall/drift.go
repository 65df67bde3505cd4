package firewall

import (
	"github.com/ournet/ournet/internal/iptables"
)

// Drifted returns the networks among nets whose objects in the table
// differ from what they should be (a chain flushed, an element deleted, a
// rule edited), all of them when the table's base is not intact. The table
// is read without the lock, so that networks are added and removed
// meanwhile (one added during the read may be reported: adding it again is
// harmless); what it read becomes what the firewall knows, if nothing was
// written meanwhile, so that the repairs to come rewrite exactly the
// drifted ones.
func (fw *Firewall) Drifted(nets []Network) ([]Network, error) {
	fw.mu.Lock()
	gen := fw.gen
	fw.mu.Unlock()
	_, s, err := fw.read()
	if err != nil {
		return nil, err
	}
	fw.mu.Lock()
	defer fw.mu.Unlock()
	known := s.present()
	if fw.gen != gen {
		known = fw.known // written meanwhile: what the read saw is stale
	}
	var out []Network
	for _, n := range nets {
		if s.matches(n) {
			if known != nil && fw.gen == gen {
				known[iptables.Short(n.ID)] = &n
			}
		} else {
			out = append(out, n)
		}
	}
	fw.known = known // nil when the base is not intact
	return out, nil
}

// OwnedNetworks lists the network IDs (12 characters) that have objects in
// the table now, so that the restore can remove those of networks it does
// not know (left by a crash).
func (fw *Firewall) OwnedNetworks() (map[string]bool, error) {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	_, s, err := fw.read()
	if err != nil {
		return nil, err
	}
	return s.ids(), nil
}
