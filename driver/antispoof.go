package driver

import (
	"fmt"
	"net/netip"
	"slices"
	"sync"

	"github.com/ournet/ournet/internal/antispoof"
)

// AntiSpoof is the part of internal/antispoof the driver uses: per-port
// checks that a container sends only as itself (issue #9).
type AntiSpoof interface {
	Add(antispoof.Endpoint) error
	Del(port string) error
	// Sync keeps the checks of the keep ports as they are.
	Sync(eps []antispoof.Endpoint, keep ...string) error
	// Ports lists the ports with checks in force, and whether the table
	// is altered (so that Sync must rebuild it).
	Ports() (ports []string, altered bool, err error)
}

// noSpoof programs no checks (Deps without AntiSpoof); it only keeps the
// list of ports it was given, so that repair finds nothing to restore.
type noSpoof struct {
	mu    sync.Mutex
	ports map[string]bool
}

func (n *noSpoof) Add(ep antispoof.Endpoint) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.ports[ep.Port] = true
	return nil
}

func (n *noSpoof) Del(port string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.ports, port)
	return nil
}

func (n *noSpoof) Sync(eps []antispoof.Endpoint, keep ...string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	old := n.ports
	n.ports = map[string]bool{}
	for _, p := range keep {
		if old[p] {
			n.ports[p] = true
		}
	}
	for _, ep := range eps {
		n.ports[ep.Port] = true
	}
	return nil
}

func (n *noSpoof) Ports() ([]string, bool, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make([]string, 0, len(n.ports))
	for p := range n.ports {
		out = append(out, p)
	}
	slices.Sort(out)
	return out, false, nil
}

// spoofChecked reports whether n's endpoints get the checks.
func (n *Network) spoofChecked() bool { return !n.Options.AntiSpoofingOff }

// spoofEndpoint is what the checks of ep's port need.
func (ep *Endpoint) spoofEndpoint() antispoof.Endpoint {
	mac, _ := parseMAC(ep.MAC) // validated by CreateEndpoint
	addr := func(p netip.Prefix) netip.Addr {
		if p.IsValid() {
			return p.Addr()
		}
		return netip.Addr{}
	}
	return antispoof.Endpoint{Port: ep.HostVeth, MAC: mac, IPv4: addr(ep.Addr), IPv6: addr(ep.AddrV6)}
}

// addSpoofChecks installs the checks of ep's port if n has them on. It is
// idempotent, so Join may repeat it.
func (d *Driver) addSpoofChecks(n *Network, ep *Endpoint) error {
	if !n.spoofChecked() {
		return nil
	}
	if err := d.spoof.Add(ep.spoofEndpoint()); err != nil {
		return fmt.Errorf("ournet: installing anti-spoofing checks on %s: %w", ep.HostVeth, err)
	}
	return nil
}

// delSpoofChecks removes the checks of ep's port (soon: antispoof.Del
// queues the removal); a port without any is success, so it runs whatever
// the network's option.
func (d *Driver) delSpoofChecks(ep *Endpoint) error {
	if err := d.spoof.Del(ep.HostVeth); err != nil {
		return fmt.Errorf("ournet: removing anti-spoofing checks of %s: %w", ep.HostVeth, err)
	}
	return nil
}

// syncSpoofChecks makes the kernel hold the checks of exactly the known
// endpoints whose network has them on, dropping any others (endpoints
// deleted while the plugin was down) but those of stray endpoints, left
// as they are. Called with d.mu held.
func (d *Driver) syncSpoofChecks() error {
	var eps []antispoof.Endpoint
	for _, ep := range d.endpoints {
		if n := d.networks[ep.NetworkID]; n != nil && n.spoofChecked() {
			eps = append(eps, ep.spoofEndpoint())
		}
	}
	if err := d.spoof.Sync(eps, d.strayPorts()...); err != nil {
		return fmt.Errorf("ournet: restoring anti-spoofing checks: %w", err)
	}
	return nil
}

// strayPorts are the stray links (removeOrphans) that are still there:
// veths of endpoints the state does not know, such as containers newer
// than the backup a state was restored from, still running. Their checks
// stay as the kernel holds them (what they should be is not known), and
// go with their veth. Called with d.mu held.
func (d *Driver) strayPorts() []string {
	var out []string
	for name := range d.strayLinks {
		if ok, err := d.links.Exists(name); err == nil && !ok {
			delete(d.strayLinks, name)
		} else {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// repairSpoofChecks restores the checks when ports gained or lost them
// behind ournet's back (`nft flush ruleset`, a firewall reload). It costs
// one listing when nothing changed, and reports whether it had anything
// to restore. Called by the repair rounds with d.mu held.
func (d *Driver) repairSpoofChecks() bool {
	var want []string
	for _, ep := range d.endpoints {
		if n := d.networks[ep.NetworkID]; n != nil && n.spoofChecked() {
			want = append(want, ep.HostVeth)
		}
	}
	slices.Sort(want)
	have, altered, err := d.spoof.Ports()
	if err != nil {
		logNet("").WithError(err).Warn("drift: listing anti-spoofing checks")
		return false
	}
	if len(d.strayLinks) > 0 {
		stray := d.strayPorts()
		have = slices.DeleteFunc(have, func(p string) bool { _, ok := slices.BinarySearch(stray, p); return ok })
	}
	if !altered && slices.Equal(have, want) {
		return false
	}
	logNet("").WithField("have", len(have)).WithField("want", len(want)).WithField("table altered", altered).Warn("drift: anti-spoofing checks changed, restoring them")
	if err := d.syncSpoofChecks(); err != nil {
		logNet("").WithError(err).Error("drift: restoring anti-spoofing checks")
	}
	return true
}
