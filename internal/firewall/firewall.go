// Package firewall programs the iptables rules of ournet's networks,
// through the one iptables layer (internal/iptables) that port publishing
// uses too. Its files, by concern:
//
//	firewall.go  the Firewall: adding and deleting networks, its cache
//	rules.go     what one network's rules are (the model)
//	scripts.go   the restore scripts that add and delete a network
//	base.go      the base chains and their jumps (Setup)
//	cleaner.go   what older versions left, removed at Setup
//	foreign.go   OURNET-FOREIGN and OURNET-BRIDGES: the other bridges
//	drift.go     comparing the tables with what they should be; orphans
//	teardown.go  removing every ournet chain
//	vxlan.go     the VXLAN port's guard (cluster networks)
//
// Layout. ournet never writes into dockerd's chains (dockerd flushes them at
// start). It owns base chains, each reached by one jump:
//
//	filter FORWARD     -> OURNET-FORWARD      (right after DOCKER-USER)
//	                      -> OURNET-INTO, then OURNET-OUTOF
//	mangle FORWARD     -> OURNET-GUARD        (first)
//	nat    POSTROUTING -> OURNET-POSTROUTING
//	filter OURNET-FOREIGN: the way out of every ournet network: dropped into
//	                   bridges on the host that are not ournet's, else accepted
//
// and, per network (ID cut to 12 characters), one chain and a few lines in
// the base chains, each line tagged with the comment "ournet:<id>" so that
// it can be found and removed by the network's ID alone:
//
//	filter OURNET-I-<id>   every packet that leaves through the network's
//	                       bridge: replies, published ports, same-network
//	                       traffic (icc), and nothing else
//	filter OURNET-INTO     -o <bridge> -j OURNET-I-<id>
//	filter OURNET-OUTOF    -i <bridge> -j OURNET-FOREIGN (internal: DROP)
//	mangle OURNET-GUARD    the I chain's final DROP again, in a table
//	                       dockerd never reorders: isolation and "no direct
//	                       routing" hold even if dockerd inserts its own
//	                       ACCEPTs above ournet's jump, or FORWARD's policy
//	                       is ACCEPT
//	nat OURNET-POSTROUTING masquerade of each of the network's subnets
//
// That is 7 rules for a default IPv4 network (the bridge driver adds 8).
//
// OURNET-FORWARD sends every packet through all "-o <bridge>" lines
// (OURNET-INTO) before any "-i <bridge>" line (OURNET-OUTOF), and every I
// chain ends in a verdict. So a packet bound for an ournet
// bridge is judged by the destination network alone, whoever sent it: that
// alone isolates networks from each other with a constant number of rules
// per network.
//
// A network's rules are rewritten whole in one iptables-restore --noflush
// transaction (declaring a chain there flushes it; its tagged lines are
// deleted and appended again only when they differ), so adding a network twice
// is harmless and a failure leaves the previous rules intact.
package firewall

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/ournet/ournet/internal/iptables"
)

// Base chains, as the registry in internal/iptables names them.
const (
	ForwardChain     = iptables.ForwardChain
	IntoChain        = iptables.IntoChain
	OutofChain       = iptables.OutofChain
	GuardChain       = iptables.GuardChain
	PostroutingChain = iptables.PostroutingChain
	ForeignChain     = iptables.ForeignChain
	// BridgesChain lists every container bridge on the host (ournet's and
	// the engine's), each "-i <bridge> -j RETURN", then accepts: the I
	// chain of a nat-unprotected network jumps here, so that the outside
	// reaches every port while other container networks stay isolated.
	BridgesChain = iptables.BridgesChain
)

// tables in the order scripts touch them.
var tables = []string{"filter", "mangle", "nat"}

// Firewall serialises rule changes; it is safe for concurrent use.
type Firewall struct {
	mu       sync.Mutex
	run      iptables.Runner
	families []iptables.Family
	// jumps caches, per family, the lines of the base chains (OURNET-INTO,
	// OURNET-OUTOF, OURNET-GUARD, OURNET-POSTROUTING) as they were after
	// ournet's last change, so that adding or removing a network is one
	// iptables-restore, not a dump of every table first: the cost stays
	// flat however many networks exist. A stale cache (someone else
	// deleted a jump) makes the restore fail; the change is then retried
	// once from a fresh dump.
	jumps map[iptables.Family]iptables.Tables
	// vxlan is the VXLAN guard as this firewall last made or found it
	// (EnsureVXLAN's arguments, or vxlanGone), "" when not known: the
	// cluster's sync asks every few seconds, and reads the table only
	// after a change or a Setup (every full repair round).
	vxlan string
	// gen counts the writes: a table read without the lock goes into the
	// cache only if nothing was written meanwhile.
	gen uint64
}

// New returns a Firewall that programs the given families.
func New(run iptables.Runner, families ...iptables.Family) *Firewall {
	return &Firewall{run: run, families: families, jumps: map[iptables.Family]iptables.Tables{}}
}

// Families lists the families this firewall programs.
func (fw *Firewall) Families() []iptables.Family { return fw.families }

// families of n: an IPv4-only network gets no ip6tables rules (nothing
// routes IPv6 into or out of its bridge: it has no IPv6 address but the
// link-local one), which halves its rules.
func (fw *Firewall) familiesOf(n Network) []iptables.Family {
	var out []iptables.Family
	for _, f := range fw.families {
		if f == iptables.IPv4 || len(n.subnets(iptables.IPv6)) > 0 {
			out = append(out, f)
		}
	}
	return out
}

// AddNetwork installs (or rewrites) every rule of network n.
func (fw *Firewall) AddNetwork(n Network) error {
	return fw.AddNetworks([]Network{n})
}

// AddNetworks installs (or rewrites) the rules of nets, in one
// iptables-restore per family: the restore at start uses it for all.
func (fw *Firewall) AddNetworks(nets []Network) error {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	for _, f := range fw.families {
		var mine []Network
		for _, n := range nets {
			if slices.Contains(fw.familiesOf(n), f) {
				mine = append(mine, n)
			}
		}
		if len(mine) == 0 {
			continue
		}
		err := fw.change(f, func(saved iptables.Tables) string {
			var b strings.Builder
			for _, n := range mine {
				b.WriteString(AddScript(f, n, saved))
			}
			return b.String()
		}, func(saved iptables.Tables) {
			for _, n := range mine {
				for table, tr := range rules(f, n) {
					cacheJumps(saved, table, tr.jumps, n.ID)
				}
			}
		})
		if err != nil {
			return fmt.Errorf("%s: adding the rules of %d network(s): %w", f, len(mine), err)
		}
	}
	return nil
}

// DelNetwork removes every rule of network id; rules already gone are fine.
func (fw *Firewall) DelNetwork(id string) error {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	var errs []error
	for _, f := range fw.families {
		err := fw.change(f, func(saved iptables.Tables) string { return DelScript(id, saved) }, func(saved iptables.Tables) {
			for _, table := range tables {
				cacheJumps(saved, table, nil, id)
			}
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: removing the rules of network %s: %w", f, iptables.Short(id), err))
		}
	}
	return errors.Join(errs...)
}

// change applies script(cached jumps); if that fails it retries once with a
// fresh dump. On success, update records the change in the cache.
func (fw *Firewall) change(f iptables.Family, script func(iptables.Tables) string, update func(iptables.Tables)) error {
	saved, err := fw.cached(f)
	if err != nil {
		return err
	}
	fw.gen++
	if err := fw.run.Restore(f, script(saved)); err != nil {
		if saved, err = iptables.Read(fw.run, f, tables...); err != nil {
			return err
		}
		if err := fw.run.Restore(f, script(saved)); err != nil {
			delete(fw.jumps, f)
			return err
		}
	}
	update(saved)
	fw.jumps[f] = saved
	return nil
}

func (fw *Firewall) cached(f iptables.Family) (iptables.Tables, error) {
	if s, ok := fw.jumps[f]; ok {
		return s, nil
	}
	return iptables.Read(fw.run, f, tables...)
}

// cacheJumps records that table's shared chains now hold want as network
// id's lines, in place of whatever it had there before.
func cacheJumps(saved iptables.Tables, table string, want []string, id string) {
	if saved[table] == nil {
		saved[table] = iptables.Chains{}
	}
	own := ownedBy(id)
	for _, base := range basesOf(table) {
		saved[table][base] = slices.DeleteFunc(slices.Clone(saved[table][base]), own)
	}
	for _, l := range want {
		c := iptables.ChainOf(l)
		saved[table][c] = append(saved[table][c], l)
	}
}
