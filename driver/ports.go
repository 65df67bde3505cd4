package driver

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"github.com/docker/go-plugins-helpers/network"

	"github.com/ournet/ournet/internal/firewall"
	"github.com/ournet/ournet/internal/portmap"
)

// Ports is the part of internal/portmap the driver uses: publishing an
// endpoint's ports on the host (issue #5). ournet's endpoint is the
// container's gateway, so the engine leaves -p and -P to it.
type Ports interface {
	Map(portmap.Endpoint, []portmap.Binding) ([]portmap.Mapping, error)
	Restore(portmap.Endpoint, []portmap.Binding, []portmap.Mapping) error
	Unmap(id string) error
	Prune(keep []string) error
	Reconcile() (repaired []string, err error)
}

// noPorts publishes nothing (Deps without Ports).
type noPorts struct{}

func (noPorts) Map(portmap.Endpoint, []portmap.Binding) ([]portmap.Mapping, error) { return nil, nil }
func (noPorts) Restore(portmap.Endpoint, []portmap.Binding, []portmap.Mapping) error {
	return nil
}
func (noPorts) Unmap(string) error                        { return nil }
func (noPorts) Prune([]string) error                      { return nil }
func (noPorts) Reconcile() (repaired []string, err error) { return nil, nil }

// portEndpoint is what the mapper needs to know of ep.
func (n *Network) portEndpoint(ep *Endpoint) portmap.Endpoint {
	pe := portmap.Endpoint{ID: ep.ID, Bridge: n.Bridge, HostVeth: ep.HostVeth, DefaultHostIPv4: n.Options.HostBindingV4,
		RoutedV4: n.Options.GwModeV4 == gwRouted, RoutedV6: n.Options.GwModeV6 == gwRouted}
	if ep.Addr.IsValid() {
		pe.IPv4 = ep.Addr.Addr()
	}
	if ep.AddrV6.IsValid() {
		pe.IPv6 = ep.AddrV6.Addr()
	}
	return pe
}

// requestPorts keeps the port map CreateEndpoint carries, so that a bad one
// fails the endpoint early and ProgramExternalConnectivity has it even if
// its own options lack it.
func (ep *Endpoint) requestPorts(opts map[string]any) error {
	bs, found, err := portmap.Parse(opts)
	logEp(ep.NetworkID, ep.ID).WithField("portmap", opts[portmap.OptPortMap]).WithField("exposed", opts[portmap.OptExposedPorts]).Debug("port options")
	if found {
		ep.PortReq = bs
	}
	return err
}

// programPorts publishes the endpoint's ports. Engines up to 28.x call
// ProgramExternalConnectivity right after Join, 29+ when the endpoint
// becomes the container's gateway; either way it may come again, and the
// same request then keeps the same host ports. On error the endpoint's
// ports are what the mapper holds (nothing, but for a repeated request
// whose rules could not be repaired: those stay until the endpoint goes),
// its openings follow them, and the engine fails the container's start
// with the message. Called with d.mu held.
func (d *Driver) programPorts(req *network.ProgramExternalConnectivityRequest) error {
	ep, ok := d.endpoints[req.EndpointID]
	if !ok {
		return fmt.Errorf("ournet: endpoint %s is unknown to ournet (its state may have been lost); restart the container", short12(req.EndpointID))
	}
	n, ok := d.networks[ep.NetworkID]
	if !ok {
		return fmt.Errorf("ournet: network %s is unknown to ournet (its state may have been lost); remove and recreate the network", short12(ep.NetworkID))
	}
	if err := ep.requestPorts(req.Options); err != nil {
		return err
	}
	if !ep.Gateway {
		ep.Gateway = true
		if n.Options.Internal {
			if err := d.st.Put(bucketEndpoints, ep.ID, ep); err != nil {
				logEp(n.ID, ep.ID).WithError(err).Warn("saving that the endpoint is the gateway")
			}
		}
	}
	if n.Options.Internal {
		return nil
	}
	ms, err := d.ports.Map(n.portEndpoint(ep), ep.PortReq)
	ep.Ports = ms
	if serr := d.st.Put(bucketEndpoints, ep.ID, ep); serr != nil && err == nil {
		// Unsaved, the ports would not come back after a restart: undo.
		_ = d.ports.Unmap(ep.ID)
		ep.Ports = nil
		err = fmt.Errorf("ournet: saving endpoint state: %w", serr)
	}
	// Failed or not: on error the mapper holds nothing of the endpoint
	// any more, and what was open for it closes too.
	if ferr := d.syncOpenings(n); ferr != nil && err == nil {
		_ = d.ports.Unmap(ep.ID)
		ep.Ports = nil
		_ = d.st.Put(bucketEndpoints, ep.ID, ep)
		_ = d.syncOpenings(n)
		err = fmt.Errorf("ournet: opening the published ports at the container's address: %w", ferr)
	}
	if err != nil {
		return err
	}
	if len(ms) > 0 {
		// The engine cannot show a remote driver's ports (docker port is
		// empty), so the log says which host ports -P picked.
		logEp(n.ID, ep.ID).WithField("ports", mappingList(ms)).Info("ports published")
	}
	return nil
}

// revokePorts removes the endpoint's published ports; an endpoint with none,
// or unknown, is already done. Called with d.mu held.
func (d *Driver) revokePorts(id string) error {
	ep, ok := d.endpoints[id]
	if !ok {
		return nil
	}
	wasGateway := ep.Gateway
	ep.Gateway = false
	if err := d.ports.Unmap(id); err != nil {
		return fmt.Errorf("ournet: removing the published ports of endpoint %s: %w", short12(id), err)
	}
	if len(ep.Ports) == 0 && !wasGateway {
		return nil
	}
	ep.Ports = nil
	serr := d.st.Put(bucketEndpoints, ep.ID, ep)
	ferr := d.syncOpenings(d.networks[ep.NetworkID])
	if serr != nil {
		return fmt.Errorf("ournet: saving endpoint state: %w", serr)
	}
	if ferr != nil {
		return fmt.Errorf("ournet: closing the published ports at the container's address: %w", ferr)
	}
	logEp(ep.NetworkID, ep.ID).Debug("ports unpublished")
	return nil
}

// unmapPorts is revokePorts for an endpoint being deleted (no longer in
// d.endpoints; n nil if its network is gone): DeleteEndpoint may come
// without RevokeExternalConnectivity (a failed start, a stale endpoint at
// engine start).
//
// Its openings close whatever the mapper says (they need none of its
// iptables work): its addresses are already free for the next container.
// A firewall that refuses does not stop the removal (the veth, the
// checks): the repair round closes them.
func (d *Driver) unmapPorts(n *Network, ep *Endpoint) error {
	uerr := d.ports.Unmap(ep.ID)
	ep.Ports = nil // its openings go with it, though it is in d.endpoints still
	if err := d.syncOpenings(n); err != nil {
		logEp(ep.NetworkID, ep.ID).WithError(err).Warn("closing the published ports at the container's address; the repair round will")
	}
	if uerr != nil {
		return fmt.Errorf("ournet: removing the published ports of endpoint %s: %w", short12(ep.ID), uerr)
	}
	return nil
}

// syncOpenings makes a network's openings in the firewall (a routed
// network's, one with trusted host interfaces) what its endpoints' ports
// are now, after every change of those, whether the
// change went through or not: an opening must never outlive its
// endpoint's ports, whose address the next container may get. Cheap when
// nothing changed (the firewall knows what it wrote). n may be nil (a
// network gone: its elements went with it). Called with d.mu held.
func (d *Driver) syncOpenings(n *Network) error {
	if n == nil || !n.opens() {
		return nil
	}
	return d.fw.AddNetwork(d.fwNetwork(n))
}

// opens says whether n's published ports are open at its containers'
// addresses: on a routed family (from anywhere), or from trusted host
// interfaces (trusted_host_interfaces).
func (n *Network) opens() bool {
	return n.Options.GwModeV4 == gwRouted || n.Options.GwModeV6 == gwRouted || len(n.Options.TrustedIfaces) > 0
}

// openings are the ports network n's endpoints open at their addresses,
// in a fixed order: a routed family's (Direct), and with trusted host
// interfaces every published port's container side. Called with d.mu
// held.
func (d *Driver) openings(n *Network) []firewall.Opening {
	var out []firewall.Opening
	trusted := len(n.Options.TrustedIfaces) > 0
	for _, ep := range d.endpoints {
		if ep.NetworkID != n.ID {
			continue
		}
		for _, m := range ep.Ports {
			if m.Direct() || trusted {
				out = append(out, firewall.Opening{Proto: uint8(m.Proto), Addr: m.ContainerIP, Port: m.ContainerPort})
			}
		}
	}
	slices.SortFunc(out, func(a, b firewall.Opening) int {
		return cmp.Or(a.Addr.Compare(b.Addr), cmp.Compare(a.Proto, b.Proto), cmp.Compare(a.Port, b.Port))
	})
	return slices.Compact(out)
}

// restorePorts publishes again, after a restart of the plugin or the
// engine, the ports of endpoints whose container still runs (its host veth
// exists), with the host ports they had, and removes every other endpoint's
// rules. Called by Restore with d.mu held.
func (d *Driver) restorePorts() {
	var keep []string
	for _, ep := range d.endpoints {
		n := d.networks[ep.NetworkID]
		if n == nil || len(ep.Ports) == 0 {
			continue
		}
		if ok, _ := d.links.Exists(ep.HostVeth); !ok {
			continue // its container is gone: nothing to DNAT to
		}
		keep = append(keep, ep.ID)
		if err := d.ports.Restore(n.portEndpoint(ep), ep.PortReq, ep.Ports); err != nil {
			logEp(n.ID, ep.ID).WithError(err).Error("restoring published ports")
		}
	}
	if d.keepUnknown {
		return
	}
	if err := d.ports.Prune(keep); err != nil {
		logNet("").WithError(err).Warn("removing published ports of gone endpoints")
	}
}

// reconcilePorts repairs published-port rules that were removed or changed.
// Called by Reconcile, without d.mu: the mapper has a lock of its own.
func (d *Driver) reconcilePorts() {
	repaired, err := d.ports.Reconcile()
	for _, id := range repaired {
		logEp("", id).Warn("drift: published-port rules changed, restored them")
	}
	if err != nil {
		logNet("").WithError(err).Warn("drift: published-port rules")
	}
}

func mappingList(ms []portmap.Mapping) string {
	s := make([]string, len(ms))
	for i, m := range ms {
		s[i] = m.String()
	}
	return strings.Join(s, ", ")
}
