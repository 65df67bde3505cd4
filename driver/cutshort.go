package driver

import (
	"time"
)

// An endpoint whose CreateEndpoint an earlier run saved but never
// answered (the plugin died after the save) is dockerd's only if dockerd
// retried the call and got the replay: dockerd retries a plugin call for
// 30 s from its first attempt, then fails the container's start and
// releases its address, and no DeleteEndpoint ever comes for it. Without
// more, the endpoint would stay until its network goes: its veth, its
// checks, its key in the cluster store (a peer every other host
// programs), and, once dockerd's ReleaseAddress has freed its address, a
// second endpoint with the same address when a new container gets it.
//
// So the plugin names those calls at start (EndpointsCutShort, before it
// listens). The replay (a create of the same endpoint: of one cut short
// before its save too, which the restart undid), or a Join, clears the
// mark; a CreateEndpoint of another endpoint with the same address in the
// same network, which the IPAM can only have handed out after dockerd
// released it, removes the marked one first; and cutShortWindow after the
// start, every endpoint still marked is removed. Its addresses are not
// released here: dockerd's own ReleaseAddress did that or was lost (then
// the address stays held until its pool goes, which is safe), and a new
// container may hold them by now.
const cutShortWindow = 45 * time.Second

// EndpointsCutShort marks the endpoints of the CreateEndpoint calls an
// earlier run was handling, unanswered, when it stopped. Call before the
// plugin listens.
func (d *Driver) EndpointsCutShort(ids []string) {
	if len(ids) == 0 {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cutShort == nil {
		d.cutShort = map[string]bool{}
	}
	for _, id := range ids {
		d.cutShort[id] = true
	}
	window := d.cutShortWindow
	if window == 0 {
		window = cutShortWindow
	}
	time.AfterFunc(window, d.dropCutShort)
}

// dropCutShort removes the endpoints still marked cut short: dockerd
// never had them.
func (d *Driver) dropCutShort() {
	defer d.lock()()
	for id := range d.cutShort {
		if ep := d.endpoints[id]; ep != nil {
			d.removeCutShort(ep, "its CreateEndpoint was cut short and the engine never retried it")
		}
	}
	d.cutShort = nil
}

// dropCutShortWith removes the marked endpoints of ep's network that hold
// one of ep's addresses; called with d.mu held, by ep's create.
func (d *Driver) dropCutShortWith(ep *Endpoint) {
	for id := range d.cutShort {
		old := d.endpoints[id]
		if old == nil || old.ID == ep.ID || old.NetworkID != ep.NetworkID {
			continue
		}
		if (ep.Addr.IsValid() && old.Addr.Addr() == ep.Addr.Addr()) || (ep.AddrV6.IsValid() && old.AddrV6.Addr() == ep.AddrV6.Addr()) {
			d.removeCutShort(old, "the engine gave its address to endpoint "+short12(ep.ID)+" (its CreateEndpoint was cut short and failed)")
		}
	}
}

// removeCutShort removes ep as DeleteEndpoint would, but tells the IPAM
// nothing (see above). Called with d.mu held.
func (d *Driver) removeCutShort(ep *Endpoint, why string) {
	delete(d.cutShort, ep.ID)
	err := d.removeEndpoint(d.networks[ep.NetworkID], ep, false)
	delete(d.endpoints, ep.ID)
	if err != nil {
		logEp(ep.NetworkID, ep.ID).WithError(err).Warn("removing an endpoint the engine does not have: " + why)
		return
	}
	logEp(ep.NetworkID, ep.ID).Info("removed an endpoint the engine does not have: " + why)
}
