package driver

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/docker/go-plugins-helpers/network"

	"github.com/ournet/ournet/internal/crash"
)

// Veth names: "ov" (host end, stays) and "oc" (container end, renamed by the
// engine) + 12 characters of the endpoint ID, within the kernel's 15.
func hostVethName(eid string) string { return "ov" + short12(eid) }
func peerVethName(eid string) string { return "oc" + short12(eid) }

// CreateEndpoint creates the endpoint's veth pair on the network's bridge.
// The engine has already allocated the addresses; ournet fills in only what
// was left empty (the MAC).
func (d *Driver) CreateEndpoint(req *network.CreateEndpointRequest) (res *network.CreateEndpointResponse, retErr error) {
	defer d.lock()()
	n, ok := d.networks[req.NetworkID]
	if !ok {
		return nil, fmt.Errorf("ournet: network %s is unknown to ournet (its state may have been lost); remove and recreate the network", short12(req.NetworkID))
	}
	if old, ok := d.endpoints[req.EndpointID]; ok && old.NetworkID == n.ID {
		// The same call again (replayed after a crash): make sure its veth
		// is there and answer as the first time. dockerd has it after all.
		delete(d.cutShort, old.ID)
		if err := d.links.EnsureVeth(d.veth(n, old)); err != nil {
			return nil, fmt.Errorf("ournet: creating the container's interface: %w", err)
		}
		res := &network.CreateEndpointResponse{}
		if req.Interface == nil || req.Interface.MacAddress == "" {
			res.Interface = &network.EndpointInterface{MacAddress: old.MAC}
		}
		return res, nil
	}
	ep := &Endpoint{
		ID: req.EndpointID, NetworkID: n.ID,
		HostVeth: hostVethName(req.EndpointID), PeerVeth: peerVethName(req.EndpointID),
	}
	res = &network.CreateEndpointResponse{}
	var err error
	if iface := req.Interface; iface != nil {
		if ep.Addr, err = parsePrefix(iface.Address); err != nil {
			return nil, err
		}
		if ep.AddrV6, err = parsePrefix(iface.AddressIPv6); err != nil {
			return nil, err
		}
		ep.MAC = iface.MacAddress
	}
	if err := ep.requestPorts(req.Options); err != nil {
		return nil, err
	}
	if ep.MAC == "" {
		ep.MAC = endpointMAC(ep.Addr, ep.ID).String()
		res.Interface = &network.EndpointInterface{MacAddress: ep.MAC}
	} else if _, err := parseMAC(ep.MAC); err != nil {
		return nil, err
	}

	d.dropCutShortWith(ep)
	if err := d.journalCreate("endpoint", ep.ID); err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil {
			d.deleteEndpoint(n, ep)
		}
	}()
	if err := d.links.EnsureVeth(d.veth(n, ep)); err != nil {
		return nil, fmt.Errorf("ournet: creating the container's interface: %w", err)
	}
	if err := d.addSpoofChecks(n, ep); err != nil {
		return nil, err
	}
	if n.Cluster != nil && d.cl != nil {
		if err := d.publish(n, ep); err != nil {
			return nil, err
		}
		ep.published = true
	}
	if !n.Used || n.Unanswered {
		n.Used, n.Unanswered = true, false
		if err := d.st.Put(bucketNetworks, n.ID, n); err != nil {
			return nil, fmt.Errorf("ournet: saving network state: %w", err)
		}
	}
	crash.Point("create-endpoint:before-save")
	if err := d.saveCreated(bucketEndpoints, ep.ID, ep); err != nil {
		return nil, fmt.Errorf("ournet: saving endpoint state: %w", err)
	}
	d.endpoints[ep.ID] = ep
	delete(d.cutShort, ep.ID) // the replay of a create cut short before its save
	d.localChanged(n)
	crash.Point("create-endpoint:after-save")
	logEp(n.ID, ep.ID).WithField("addr", ep.Addr).Debug("endpoint created")
	return res, nil
}

// DeleteEndpoint removes the endpoint's veth pair. An unknown endpoint is
// already gone: success.
func (d *Driver) DeleteEndpoint(req *network.DeleteEndpointRequest) error {
	defer d.lock()()
	ep, ok := d.endpoints[req.EndpointID]
	if !ok {
		return d.deleteStray(req.EndpointID)
	}
	// Forgotten whatever the kernel says: what it keeps of the endpoint is
	// in the journal, and the next start removes it; a record written back
	// later (heal, ports) would resurrect it.
	err := d.deleteEndpoint(d.networks[ep.NetworkID], ep)
	delete(d.endpoints, ep.ID)
	if err != nil {
		return err
	}
	logEp(ep.NetworkID, ep.ID).Debug("endpoint deleted")
	return nil
}

// DeleteLeftEndpoints deletes every endpoint the engine has left and not
// joined since: each is waiting for its DeleteEndpoint. The plugin calls it
// when dockerd retries a DeleteEndpoint with an empty body and the call it
// repeats cannot be known (the plugin died before it read the request, or
// in another run): dockerd forgets the endpoint whatever the answer, so
// without this its veth pair would stay. An endpoint whose own
// DeleteEndpoint is still on its way finds it done: success.
func (d *Driver) DeleteLeftEndpoints() {
	defer d.lock()()
	for id, ep := range d.endpoints {
		if !ep.Left {
			continue
		}
		if err := d.deleteEndpoint(d.networks[ep.NetworkID], ep); err != nil {
			logEp(ep.NetworkID, id).WithError(err).Warn("deleting an endpoint the engine had left")
		} else {
			logEp(ep.NetworkID, id).Info("deleted an endpoint the engine had left (its DeleteEndpoint was cut short)")
		}
		delete(d.endpoints, id)
	}
}

// deleteStray is DeleteEndpoint of an endpoint ournet does not know: a
// stray's (removeOrphans: a container newer than the backup the state was
// restored from) veth and anti-spoofing checks go, as dockerd removes it;
// anything else is already gone. Called with d.mu held.
func (d *Driver) deleteStray(id string) error {
	port := hostVethName(id)
	if !d.strayLinks[port] {
		return nil
	}
	if err := d.links.DeleteVeth(port, id); err != nil {
		return fmt.Errorf("ournet: removing the container's interface: %w", err)
	}
	delete(d.strayLinks, port)
	d.strays = slices.DeleteFunc(d.strays, func(s string) bool { return strings.HasPrefix(s, "link "+port+" ") })
	logEp("", id).Info("removed an endpoint the state did not know (left alone since the restore)")
	return d.spoof.Del(port)
}

// deleteEndpoint removes ep's record and kernel state; n may be nil. It
// goes on to the kernel even when the state file cannot be written (a full
// disk): see forget.
func (d *Driver) deleteEndpoint(n *Network, ep *Endpoint) error {
	return d.removeEndpoint(n, ep, true)
}

// removeEndpoint is deleteEndpoint; addrsGone says whether to tell the
// IPAM its addresses are free once released (cutshort.go does not).
func (d *Driver) removeEndpoint(n *Network, ep *Endpoint, addrsGone bool) error {
	d.forget("endpoint", bucketEndpoints, ep.ID)
	if addrsGone {
		d.addressesGone(n, ep)
	}
	crash.Point("delete-endpoint:after-forget")
	if ep.published || d.endpoints[ep.ID] != nil {
		d.unpublish(n, ep)
	}
	if err := d.unmapPorts(n, ep); err != nil {
		return err
	}
	if err := d.links.DeleteVeth(ep.HostVeth, ep.ID); err != nil {
		return fmt.Errorf("ournet: removing the container's interface: %w", err)
	}
	d.localChanged(n)
	// After the veth: its port never exists without its checks.
	if err := d.delSpoofChecks(ep); err != nil {
		return err
	}
	d.journalDone(ep.ID)
	return nil
}

// addressesGone tells the IPAM which addresses the deleted ep used, each
// with its subnet's pool (ipam/orphan.go); n may be nil.
func (d *Driver) addressesGone(n *Network, ep *Endpoint) {
	if d.pools == nil || n == nil {
		return
	}
	for _, a := range []netip.Prefix{ep.Addr, ep.AddrV6} {
		if !a.IsValid() {
			continue
		}
		for _, s := range n.pools(Subnet.ournetIPAM) {
			if s.Contains(a.Addr()) {
				d.pools.EndpointGone(s, a.Addr())
				break
			}
		}
	}
}

// EndpointInfo reports what ournet knows of an endpoint.
func (d *Driver) EndpointInfo(req *network.InfoRequest) (*network.InfoResponse, error) {
	defer d.lock()()
	ep, ok := d.endpoints[req.EndpointID]
	if !ok {
		return &network.InfoResponse{Value: map[string]string{}}, nil
	}
	return &network.InfoResponse{Value: map[string]string{
		"com.docker.network.endpoint.macaddress": ep.MAC,
		"ournet.host_interface":                  ep.HostVeth,
	}}, nil
}

func parsePrefix(s string) (netip.Prefix, error) {
	if s == "" {
		return netip.Prefix{}, nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return p, fmt.Errorf("ournet: address %q from the engine is not in CIDR form", s)
	}
	return p, nil
}

func parseMAC(s string) (net.HardwareAddr, error) {
	if s == "" {
		return nil, nil
	}
	mac, err := net.ParseMAC(s)
	if err != nil || len(mac) != 6 {
		return nil, fmt.Errorf("ournet: MAC address %q is not valid; give six hex bytes such as 02:42:0a:01:00:05", s)
	}
	return mac, nil
}
