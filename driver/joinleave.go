package driver

import (
	"fmt"
	"net/netip"

	"github.com/docker/go-plugins-helpers/network"
)

// Join hands the container end of the veth to the engine, which moves it
// into the container and names it <prefix>N. ournet's endpoint is the
// container's gateway unless the network is internal.
func (d *Driver) Join(req *network.JoinRequest) (*network.JoinResponse, error) {
	defer d.lock()()
	ep, ok := d.endpoints[req.EndpointID]
	if !ok {
		return nil, fmt.Errorf("ournet: endpoint %s is unknown to ournet (its state may have been lost); restart the container", short12(req.EndpointID))
	}
	n, ok := d.networks[ep.NetworkID]
	if !ok {
		return nil, fmt.Errorf("ournet: network %s is unknown to ournet (its state may have been lost); remove and recreate the network", short12(ep.NetworkID))
	}
	delete(d.cutShort, ep.ID) // dockerd has it (cutshort.go)
	// After a restart the pair may be gone (the engine created the endpoint
	// before a reboot): make it again.
	if err := d.links.EnsureVeth(d.veth(n, ep)); err != nil {
		return nil, fmt.Errorf("ournet: preparing the container's interface: %w", err)
	}
	if err := d.addSpoofChecks(n, ep); err != nil {
		return nil, err
	}
	if req.SandboxKey != "" && ep.Sandbox != req.SandboxKey || ep.Left {
		// Only what healing needs: kept in memory if it cannot be saved.
		if req.SandboxKey != "" && ep.Sandbox != req.SandboxKey {
			ep.Sandbox, ep.IfName = req.SandboxKey, ""
		}
		ep.Left = false
		if err := d.st.Put(bucketEndpoints, ep.ID, ep); err != nil {
			logEp(n.ID, ep.ID).WithError(err).Warn("saving the container's sandbox (kept in memory)")
		}
	}
	res := &network.JoinResponse{
		InterfaceName: network.InterfaceName{SrcName: ep.PeerVeth, DstPrefix: n.Options.IfacePrefix},
	}
	if gw4, gw6 := n.gateways(ep); gw4.IsValid() || gw6.IsValid() {
		if gw4.IsValid() {
			res.Gateway = gw4.String()
		}
		if gw6.IsValid() {
			res.GatewayIPv6 = gw6.String()
		}
	}
	logEp(n.ID, ep.ID).WithField("sandbox", req.SandboxKey).Debug("joined")
	return res, nil
}

// Leave: the container's end goes away with its namespace; the host end is
// removed by DeleteEndpoint.
func (d *Driver) Leave(req *network.LeaveRequest) error {
	defer d.lock()()
	if ep, ok := d.endpoints[req.EndpointID]; ok && (ep.Sandbox != "" || !ep.Left) {
		// Gone with the container: nothing to heal into any more.
		ep.Sandbox, ep.IfName, ep.Left = "", "", true
		if err := d.st.Put(bucketEndpoints, ep.ID, ep); err != nil {
			logEp(req.NetworkID, req.EndpointID).WithError(err).Warn("saving endpoint state")
		}
	}
	logEp(req.NetworkID, req.EndpointID).Debug("left")
	return nil
}

// gateways are the endpoint's default gateways, per family: the network's
// gateway of the subnet its address is in, unless the network is internal.
func (n *Network) gateways(ep *Endpoint) (v4, v6 netip.Addr) {
	if n.Options.Internal {
		return
	}
	for _, s := range n.IPv4 {
		if s.Gateway.IsValid() && ep.Addr.IsValid() && s.Pool.Contains(ep.Addr.Addr()) {
			v4 = s.Gateway.Addr()
		}
	}
	for _, s := range n.IPv6 {
		if s.Gateway.IsValid() && ep.AddrV6.IsValid() && s.Pool.Contains(ep.AddrV6.Addr()) {
			v6 = s.Gateway.Addr()
		}
	}
	return
}

// ProgramExternalConnectivity is where published ports are programmed.
func (d *Driver) ProgramExternalConnectivity(req *network.ProgramExternalConnectivityRequest) error {
	defer d.lock()()
	return d.programPorts(req)
}

// RevokeExternalConnectivity removes what ProgramExternalConnectivity made.
func (d *Driver) RevokeExternalConnectivity(req *network.RevokeExternalConnectivityRequest) error {
	defer d.lock()()
	return d.revokePorts(req.EndpointID)
}
