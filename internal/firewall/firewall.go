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
//	drift.go     comparing the kernel with what it should hold; orphans
//	teardown.go  removing every ournet chain and the table
//	vxlan.go     the VXLAN port's guard (cluster networks)
//
// Layout. Every ournet bridge is in device group BridgeGroup (0x6f75).
// The table holds sets, one or a few elements per network, and two base
// chains whose rules never change:
//
//	table inet ournet {
//		set nets         { type ifname }            # every network's bridge
//		set published    { type ifname }            # not internal: takes published ports
//		set icc          { type ifname . ifname }   # "<bridge>" . "<bridge>": icc on
//		set unprotected4 { type ifname }            # nat-unprotected (and unprotected6)
//		set internal     { type ifname }
//		set masq4 { type ipv4_addr; flags interval }            # subnets that masquerade (and masq6)
//		set hairpin { type ifname . ifname }                    # such a network's "<bridge>" . "<bridge>"
//		set routed4 { type ifname }                             # gateway mode routed (and routed6)
//		set routed_own { type ifname . ifname }                 # a routed network's "<bridge>" . "<bridge>"
//		set open4 { type ifname . ipv4_addr . inet_proto . inet_service } # "<bridge>" . a published port at its container's address (and open6)
//		set trusted { type ifname . ifname }                    # "<host interface>" . "<bridge>": trusted_host_interfaces
//		chain forward {                       # hook forward, priority filter - 5
//			oifname @nets ct state established,related accept
//			iifname . oifname @icc accept
//			iifname @internal drop            # out of an internal network
//			oifname @published ct status dnat accept
//			meta nfproto ipv4 oifname @unprotected4 iifgroup != 0x6f75 iifname != "docker0" iifname != "br-*" accept
//			oifname @routed4 meta l4proto icmp (not from container bridges, as above) accept
//			oifname @routed4 iifname . oifname != @routed_own oifname . ip daddr . meta l4proto . th dport @open4 accept
//			iifname . oifname @trusted oifname . ip daddr . meta l4proto . th dport @open4 accept
//			(the same for IPv6)
//			oifname @nets drop                # nothing else into a network
//			oifgroup 0x6f75 drop              # an ournet bridge with no network
//			iifgroup 0x6f75 oifname "docker0" | oifkind "bridge" oifname "br-*"
//			    ct status != dnat ct state != established,related drop   # into the engine's bridges
//		}
//		chain postrouting {                   # hook postrouting, priority srcnat - 5
//			ip saddr @masq4 oifgroup != 0x6f75 masquerade   # out of ournet's bridges
//			ip saddr @masq4 oifgroup 0x6f75 iifname != "" iifname . oifname != @hairpin masquerade
//			(the same for IPv6)                           # routed into another network's bridge
//		}
//	}
//
// Every element carries a comment naming its network ("ournet:<id>"), by
// which drift is judged and a network's elements found; an element that
// names none is drift, and is removed.
//
// The table's forward chain runs before iptables' filter table, so what
// it drops never meets dockerd's ACCEPT rules, whatever FORWARD's policy.
// What it lets through still has to pass iptables' FORWARD (dockerd sets
// its policy to DROP): there, right after dockerd's DOCKER-USER jump, so
// that the user's rules come first,
//
//	filter FORWARD -> OURNET-FORWARD
//		-m devgroup --dst-group 0x6f75 -j ACCEPT   # judged by the table
//		-m devgroup --src-group 0x6f75 -j ACCEPT   # likewise: the way out
//
// These do not change with the networks, nor with the host's other
// bridges (the engine's docker0 and br-*, anyone else's: known by their
// kind, not listed): adding a network is one nftables transaction that
// only adds set elements, and no process. No rule, chain or jump per
// network: the kernel copies a chain's rules whole at every
// commit that changes it, and checks every jump of the table at every
// commit that adds one, both costs that grow with the networks.
package firewall

import (
	"fmt"
	"sync"

	"github.com/ournet/ournet/internal/iptables"
	"github.com/ournet/ournet/internal/nft"
)

// ForwardChain is the static iptables chain, as the registry in
// internal/iptables names it.
const ForwardChain = iptables.ForwardChain

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
	// forget clears the flows of openings a change closed (forgetOpenings).
	forget func([]Opening)
}

// New returns a Firewall that programs the given iptables families and
// the nftables table, over connections from dial (nft.Dialer(), or a
// nft.Fake's Dial in tests).
func New(run iptables.Runner, dial func() (nft.Conn, error), families ...iptables.Family) *Firewall {
	return &Firewall{run: run, dial: dial, families: families, forget: forgetOpenings}
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
	c, s, err := fw.read()
	if err != nil {
		fw.known = nil
		return err
	}
	fw.gen++
	for i := 0; i < len(nets); i += chunk {
		part := nets[i:min(i+chunk, len(nets))]
		if err := ensureBase(c, s); err != nil {
			return err
		}
		var closed []Opening
		for _, n := range part {
			closed = append(closed, closedOpenings(s.byOwner[iptables.Short(n.ID)], netElems(n))...)
			if err := rewriteNFT(c, s, n); err != nil {
				return err
			}
		}
		if err := c.Flush(); err != nil {
			fw.known = nil
			return fmt.Errorf("nftables: adding the rules of %d network(s): %w", len(part), err)
		}
		if len(closed) > 0 {
			fw.forget(closed)
		}
	}
	s.baseIntact = true // ensureBase made it so
	fw.known = s.present()
	for _, n := range nets {
		fw.known[iptables.Short(n.ID)] = &n
	}
	return nil
}

// read opens a connection and reads the table through it.
func (fw *Firewall) read() (nft.Conn, *nftState, error) {
	c, err := fw.dial()
	if err != nil {
		return nil, nil, fmt.Errorf("nftables: %w", err)
	}
	s, err := readNFT(c)
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
	c, s, err := fw.read()
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
	if err := ensureBase(c, s); err != nil {
		return err
	}
	closed := closedOpenings(s.byOwner[short], nil)
	if err := delNFT(c, s, short); err != nil {
		return err
	}
	if err := c.Flush(); err != nil {
		fw.known = nil
		return fmt.Errorf("nftables: removing the rules of network %s: %w", short, err)
	}
	if len(closed) > 0 {
		fw.forget(closed)
	}
	delete(fw.known, short)
	return nil
}
