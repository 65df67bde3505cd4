package driver

import (
	"fmt"
	"sort"
	"time"

	"github.com/ournet/ournet/internal/firewall"
)

// removeOrphans deletes the kernel objects ournet made for networks and
// endpoints it no longer knows, but only those the journal proves are
// leftovers of ournet's own crash (it was creating or deleting that ID when
// it stopped). Objects marked as ournet's of any other unknown ID are left
// alone and reported (d.strays): with a state file restored from an older
// backup they may be what running containers use. Called with d.mu held,
// and only on a state known to be good.
func (d *Driver) removeOrphans() {
	journal := d.journaled()
	known := map[string]bool{}
	for id := range d.networks {
		known[id] = true
	}
	for id := range d.endpoints {
		known[id] = true
	}
	d.strays, d.strayLinks = nil, map[string]bool{}
	keep := map[string]bool{} // journal entries whose objects could not be removed
	owned, lerr := d.links.Owned()
	if lerr != nil {
		logNet("").WithError(lerr).Warn("listing links for orphans")
	}
	for name, owner := range owned {
		if known[owner] {
			continue
		}
		if !journalHas(journal, owner) && !d.removeUnknown {
			d.strays = append(d.strays, fmt.Sprintf("link %s (ournet:%s)", name, short12(owner)))
			d.strayLinks[name] = true
			continue
		}
		if err := d.links.DeleteLink(name, owner); err != nil {
			logNet(owner).WithError(err).WithField("link", name).Warn("removing orphan link")
			keep[owner] = true
			continue
		}
		logNet(owner).WithField("link", name).Info("removed orphan link (its create or delete was interrupted)")
	}
	short := map[string]bool{}
	for id := range d.networks {
		short[short12(id)] = true
	}
	ids, err := d.fw.OwnedNetworks()
	if err != nil {
		logNet("").WithError(err).Warn("listing rules for orphans")
	}
	for id := range ids {
		if short[id] {
			continue
		}
		if !journalHas(journal, id) && !d.removeUnknown {
			d.strays = append(d.strays, fmt.Sprintf("firewall rules of network %s", id))
			continue
		}
		if err := d.fw.DelNetwork(id); err != nil {
			logNet(id).WithError(err).Warn("removing orphan rules")
			keep[id] = true
			continue
		}
		logNet(id).Info("removed orphan rules (the network's create or delete was interrupted)")
	}
	sort.Strings(d.strays)
	for _, s := range d.strays {
		logNet("").WithField("object", s).Warn("left alone: marked as ournet's, but its ID is in neither the state file nor its journal (see `ournet status`)")
	}
	// Entries whose objects are gone now are done.
	if lerr != nil || err != nil {
		return
	}
	for id := range journal {
		if !keep[id] && !keep[short12(id)] {
			d.journalDone(id)
		}
	}
}

// Reconcile is the full repair round: base jumps moved or deleted (a
// dockerd restart inserts its rules above ournet's; a firewalld reload
// flushes everything), a network's rules changed or gone, published ports'
// rules, anti-spoofing, a bridge deleted by hand. It never brings back a
// network ournet does not know. Reading the tables is the slow part: it
// runs without the driver's lock, which only the repairs take, so that
// docker commands are not held up behind a round.
func (d *Driver) Reconcile() {
	d.housekeeping()
	if err := d.fw.Setup(); err != nil {
		logNet("").WithError(err).Warn("drift: base chains")
	}
	if d.cl != nil {
		d.updateGuard() // read again: Setup forgot what the firewall knew of it
	}
	nets := d.repairAllLinks()
	// The networks' own rules before the published ports': after a flush
	// of every table, containers talk again one step sooner.
	defer d.reconcilePorts()
	drifted, err := d.fw.Drifted(nets)
	if err != nil {
		logNet("").WithError(err).Warn("drift: reading rules")
		return
	}
	if len(drifted) == 0 {
		return
	}
	defer d.lock()()
	var again []firewall.Network
	for _, fn := range drifted {
		n, ok := d.networks[fn.ID]
		if !ok {
			continue // removed meanwhile: never bring it back
		}
		logNet(fn.ID).Warn("drift: rules changed, restoring them")
		again = append(again, d.fwNetwork(n))
	}
	// In one restore per family (a flushed table drifts every network).
	if err := d.fw.AddNetworks(again); err != nil {
		logNet("").WithError(err).Warn("drift: restoring rules in one go; retrying network by network")
		for _, n := range again {
			if err := d.fw.AddNetwork(n); err != nil {
				logNet(n.ID).WithError(err).Error("drift: restoring rules")
			}
		}
	}
}

// repairAllLinks is repairLinks for every link, under the driver's lock;
// it returns the networks whose rules to check.
func (d *Driver) repairAllLinks() []firewall.Network {
	defer d.lock()()
	d.repairLinks(nil)
	nets := make([]firewall.Network, 0, len(d.networks))
	for _, n := range d.networks {
		nets = append(nets, d.fwNetwork(n))
	}
	return nets
}

// ReconcileLinks is the round a link change triggers, for the links named
// (all: every link): what netlink shows (bridges, VXLAN devices,
// endpoints' veths). Its netlink calls are for the named links of
// ournet's alone, however many networks there are; other links (another
// driver's bridges and veths) cost nothing. It reports whether it
// repaired anything, after which a full round follows (the rules and port
// settings of a bridge made again).
func (d *Driver) ReconcileLinks(names map[string]bool, all bool) (repaired bool) {
	defer d.lock()()
	d.flushUnsaved()
	if all {
		return d.repairLinks(nil)
	}
	return d.repairLinks(func(name string) bool { return names[name] })
}

// repairLinks makes again the bridges and VXLAN devices that are gone,
// plumbs again the endpoints whose veth went (and learns the names their
// interfaces have in their containers), and restores the anti-spoofing
// checks; only for the links only names, if only is not nil. It reports
// whether it had anything to do. Called with d.mu held.
func (d *Driver) repairLinks(only func(name string) bool) (repaired bool) {
	look := func(name string) bool { return only == nil || only(name) }
	gone := func(name string) bool {
		if !look(name) {
			return false
		}
		ok, err := d.links.Exists(name)
		return err == nil && !ok
	}
	for _, n := range d.networks {
		if gone(n.Bridge) {
			repaired = true
			logNet(n.ID).WithField("bridge", n.Bridge).Warn("drift: bridge is gone, recreating it")
			if err := d.programNetwork(n); err != nil {
				logNet(n.ID).WithError(err).Error("drift: recreating bridge")
			}
			d.reattachEndpoints(n)
		}
		if n.Cluster != nil && d.cl != nil && gone(n.Cluster.Device) {
			repaired = true
			logNet(n.ID).WithField("device", n.Cluster.Device).Warn("drift: VXLAN device is gone, recreating it")
			if err := d.prepareNetwork(n); err != nil {
				logNet(n.ID).WithError(err).Error("drift: recreating the VXLAN device")
			}
			d.kickAgent(n.ID)
		}
	}
	if d.healEndpoints(true, only) > 0 {
		repaired = true
	}
	if only == nil && d.repairSpoofChecks() {
		repaired = true
	}
	return repaired
}

// reattachEndpoints puts n's existing host veths back on its bridge.
func (d *Driver) reattachEndpoints(n *Network) {
	for _, ep := range d.endpoints {
		if ep.NetworkID != n.ID {
			continue
		}
		// Only a host end that still exists: a veth whose container is gone
		// went with the container's namespace, and recreating it would
		// leave a dangling interface.
		if ok, _ := d.links.Exists(ep.HostVeth); ok {
			if err := d.links.EnsureVeth(d.veth(n, ep)); err != nil {
				logEp(n.ID, ep.ID).WithError(err).Error("reattaching endpoint")
			}
		}
	}
}

// WatchConfig says what drives the repair rounds (Watch).
type WatchConfig struct {
	// Every is how often the writes kept in memory are flushed (and the
	// also functions run); without Rules, the full round runs as often.
	Every time.Duration
	// Recheck is, with Rules, how often the full round runs when nothing
	// announced a change: the safety net.
	Recheck time.Duration
	// Rules triggers a full round: someone else changed iptables or
	// nftables (internal/watch.Rules, debounced). Links triggers a round
	// of the links LinkNames names (a bridge or veth deleted or changed;
	// LinkNames nil: every link). Nil: not watched.
	Rules, Links <-chan struct{}
	LinkNames    func() (names map[string]bool, all bool)
}

// Full rounds are spaced by at least fullGap, and by fullShare times the
// last one's length: a host whose rules change all the time (another
// driver's networks coming and going by the hundred) spends at most about
// a fifth of a CPU on them, a change right after a quiet spell is
// repaired at once, and one right after a repair waits a little.
const (
	fullGap   = 250 * time.Millisecond
	fullShare = 4
)

// Watch repairs drift until stop is closed: a full round (Reconcile) when
// Rules triggers, or, without Rules, every Every; a links round when Links
// triggers, followed by a full round if it repaired anything; the full
// round every Recheck in any case. Every Every, the writes the state file
// could not take are tried again, and each of also runs (the plugin adds
// the IPAM's flush of releases kept in memory): nothing else runs while
// nothing changes.
func (d *Driver) Watch(cfg WatchConfig, stop <-chan struct{}, also ...func()) {
	every := time.NewTicker(cfg.Every)
	defer every.Stop()
	var recheck <-chan time.Time
	if cfg.Rules != nil && cfg.Recheck > 0 {
		t := time.NewTicker(cfg.Recheck)
		defer t.Stop()
		recheck = t.C
	}
	var hold <-chan time.Time // while set, the next full round waits
	pending := false
	full := func() {
		start := time.Now()
		d.Reconcile()
		for _, fn := range also {
			fn()
		}
		took := time.Since(start)
		logNet("").WithField("took", took).Debug("repair round")
		hold, pending = time.After(max(fullGap, fullShare*took)), false
	}
	wantFull := func() {
		if hold == nil {
			full()
		} else {
			pending = true
		}
	}
	for {
		select {
		case <-stop:
			return
		case <-hold:
			hold = nil
			if pending {
				full()
			}
		case <-cfg.Rules:
			wantFull()
		case <-recheck:
			wantFull()
		case <-cfg.Links:
			names, all := map[string]bool(nil), true
			if cfg.LinkNames != nil {
				names, all = cfg.LinkNames()
			}
			if d.ReconcileLinks(names, all) {
				wantFull()
			}
		case <-every.C:
			if cfg.Rules == nil {
				full() // polling: the ticker spaces the rounds
				continue
			}
			d.housekeeping()
			for _, fn := range also {
				fn()
			}
		}
	}
}

// housekeeping tries again the writes the state file could not take.
func (d *Driver) housekeeping() {
	defer d.lock()()
	d.flushUnsaved()
}
