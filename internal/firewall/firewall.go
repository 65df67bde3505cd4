// Package firewall programs the rules of ournet's networks: their own in
// an nftables table of ournet's, over netlink; a few static iptables rules
// (through internal/iptables, the layer port publishing uses too) so that
// dockerd's FORWARD policy and the user's DOCKER-USER rules still apply.
// Its files, by concern:
//
//	firewall.go  the Firewall: adding and deleting networks, what it knows
//	rules.go     what the firewall knows of one network (the model)
//	nftables.go  table inet ournet: its objects, reading it, changing it
//	nftrules.go  the rules of that table, as expressions
//	base.go      the static iptables chains and their jumps (Setup)
//	cleaner.go   what older versions left, removed at Setup
//	foreign.go   OURNET-FOREIGN: the other bridges on the host
//	drift.go     comparing the kernel with what it should hold; orphans
//	teardown.go  removing every ournet chain and the table
//	vxlan.go     the VXLAN port's guard (cluster networks)
//
// Layout. Every ournet bridge is in device group BridgeGroup (0x6f75).
//
//	table inet ournet {
//		map into  { type ifname : verdict }   # "<bridge>" : jump net-<id>
//		map outof { type ifname : verdict }   # an internal network's bridge : drop
//		chain forward {                       # hook forward, priority filter - 5
//			oifname vmap @into                # judged by the destination network
//			oifgroup 0x6f75 drop              # an ournet bridge with no network
//			iifname vmap @outof
//		}
//		chain net-<id> {                      # what may enter the network's bridge
//			ct state established,related accept
//			ct status dnat accept             # published ports (not internal)
//			iifname "<bridge>" accept         # icc
//			drop
//		}
//		map masq4 { type ipv4_addr : verdict; flags interval }  # "<subnet>" : jump nat-<id>
//		map masq6 { type ipv6_addr : verdict; flags interval }
//		chain postrouting {                   # hook postrouting, priority srcnat - 5
//			ip saddr vmap @masq4
//			ip6 saddr vmap @masq6
//		}
//		chain nat-<id> {                      # a network that masquerades
//			oifname != "<bridge>" masquerade
//		}
//	}
//
// A nat-unprotected network's chain accepts, before its drop, whatever
// does not come from a container bridge (ournet's group, docker0, br-*).
// Each rule carries a comment naming its network ("ournet:<id> icc on
// ...") by which drift is judged and the network's rules found.
//
// The table's forward chain runs before iptables' filter table, so what
// it drops never meets dockerd's ACCEPT rules, whatever FORWARD's policy.
// What it lets through still has to pass iptables' FORWARD (dockerd sets
// its policy to DROP): there, right after dockerd's DOCKER-USER jump, so
// that the user's rules come first,
//
//	filter FORWARD -> OURNET-FORWARD
//		-m devgroup --dst-group 0x6f75 -j ACCEPT   # judged by the table
//		-m devgroup --src-group 0x6f75 -j OURNET-FOREIGN
//	filter OURNET-FOREIGN: the way out of every ournet network: dropped into
//	                   bridges on the host that are not ournet's, else accepted
//
// These do not change with the networks: adding one is one nftables
// transaction that only creates objects (its chains and their rules, its
// map elements) and no process. Nothing per network goes into a shared
// chain: the kernel copies a chain's rules whole at every commit that
// changes it.
package firewall

import (
	"fmt"
	"sync"

	"github.com/ournet/ournet/internal/iptables"
	"github.com/ournet/ournet/internal/nft"
)

// Static iptables chains, as the registry in internal/iptables names them.
const (
	ForwardChain = iptables.ForwardChain
	ForeignChain = iptables.ForeignChain
)

// tables are those the cleaner and Setup read, in the order scripts
// touch them.
var tables = []string{"filter", "mangle", "nat"}

// Firewall serialises rule changes; it is safe for concurrent use.
type Firewall struct {
	mu       sync.Mutex
	run      iptables.Runner
	dial     func() (nft.Conn, error)
	families []iptables.Family
	// known, when not nil, says that the table's base is as ensureBase
	// makes it and holds every network that has objects in the table,
	// each with what they were last written or found to be for (nil:
	// present, contents not known): all as of this firewall's last change
	// or read. A network absent from it has nothing in the table, so
	// adding it only creates. nil: nothing is known.
	known map[string]*Network
	// vxlan is the VXLAN guard as this firewall last made or found it
	// (EnsureVXLAN's arguments, or vxlanGone), "" when not known: the
	// cluster's sync asks every few seconds, and reads the table only
	// after a change or a Setup (every full repair round).
	vxlan string
	// gen counts the table's writes: a read made without the lock goes
	// into known only if nothing was written meanwhile.
	gen uint64
}

// New returns a Firewall that programs the given iptables families and
// the nftables table, over connections from dial (nft.Dialer(), or a
// nft.Fake's Dial in tests).
func New(run iptables.Runner, dial func() (nft.Conn, error), families ...iptables.Family) *Firewall {
	return &Firewall{run: run, dial: dial, families: families}
}

// Families lists the iptables families this firewall programs.
func (fw *Firewall) Families() []iptables.Family { return fw.families }

// AddNetwork installs (or rewrites) every rule of network n.
func (fw *Firewall) AddNetwork(n Network) error {
	return fw.AddNetworks([]Network{n})
}

// chunk bounds one transaction: a batch and the kernel's acknowledgements
// of it must fit the netlink socket's buffers.
const chunk = 32

// AddNetworks installs (or rewrites) the rules of nets. Networks this
// firewall knows have nothing in the table yet are only created, in one
// transaction; any other case reads the table and rewrites the base and
// each network whole (a repeated add, a repair, the restore at start).
func (fw *Firewall) AddNetworks(nets []Network) error {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	if fw.known != nil && fw.createOnly(nets) {
		return nil
	}
	c, s, err := fw.read(false)
	if err != nil {
		fw.known = nil
		return err
	}
	fw.gen++
	for i := 0; i < len(nets); i += chunk {
		part := nets[i:min(i+chunk, len(nets))]
		if err := ensureBase(c); err != nil {
			return err
		}
		for _, n := range part {
			if err := rewriteNFT(c, s, n); err != nil {
				return err
			}
		}
		if err := c.Flush(); err != nil {
			fw.known = nil
			return fmt.Errorf("nftables: adding the rules of %d network(s): %w", len(part), err)
		}
	}
	s.baseIntact = true // ensureBase made it so
	fw.known = s.present()
	for _, n := range nets {
		fw.known[iptables.Short(n.ID)] = &n
	}
	return nil
}

// read opens a connection and reads the table through it (withRules: the
// networks' chains' rules too).
func (fw *Firewall) read(withRules bool) (nft.Conn, *nftState, error) {
	c, err := fw.dial()
	if err != nil {
		return nil, nil, fmt.Errorf("nftables: %w", err)
	}
	s, err := readNFT(c, withRules)
	if err != nil {
		return nil, nil, fmt.Errorf("nftables: %w", err)
	}
	return c, s, nil
}

// createOnly adds nets that are all either absent from the table or
// already there as wanted, creating the absent ones in one transaction.
// false: that transaction failed (the kernel is not as known), and the
// caller must rewrite.
func (fw *Firewall) createOnly(nets []Network) bool {
	var todo []Network
	for _, n := range nets {
		switch have, ok := fw.known[iptables.Short(n.ID)]; {
		case !ok:
			todo = append(todo, n)
		case have == nil || !have.same(n):
			return false
		}
	}
	if len(todo) == 0 {
		return true
	}
	if len(todo) > chunk {
		return false
	}
	c, err := fw.dial()
	if err != nil {
		return false
	}
	fw.gen++
	for _, n := range todo {
		if createNFT(c, n) != nil {
			return false
		}
	}
	if c.Flush() != nil {
		fw.known = nil
		return false
	}
	for _, n := range todo {
		fw.known[iptables.Short(n.ID)] = &n
	}
	return true
}

// DelNetwork removes every rule of network id; rules already gone are fine.
func (fw *Firewall) DelNetwork(id string) error {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	c, s, err := fw.read(false)
	if err != nil {
		fw.known = nil
		return err
	}
	short := iptables.Short(id)
	if !s.exists {
		delete(fw.known, short)
		return nil
	}
	fw.gen++
	// The base first: the deletes below need the maps, and a base that
	// drifted is mended on the way.
	if err := ensureBase(c); err != nil {
		return err
	}
	if err := delNFT(c, s, short); err != nil {
		return err
	}
	if err := c.Flush(); err != nil {
		fw.known = nil
		return fmt.Errorf("nftables: removing the rules of network %s: %w", short, err)
	}
	delete(fw.known, short)
	return nil
}
