package driver

import (
	"errors"
	"net/netip"
	"time"

	"github.com/ournet/ournet/internal/netdev"
)

// healEndpoints plumbs again, into its container, every endpoint whose
// host veth is gone while its container still runs (a veth deleted by hand,
// or lost across a restore): the same interface name, MAC, MTU, addresses
// and default routes, its anti-spoofing checks and published ports
// (issue #16). It also learns, once, the name the engine gave each
// container interface (learn: not during the restore, which must stay
// fast). Called with d.mu held, by the restore and by every repair round.
func (d *Driver) healEndpoints(learn bool, only func(name string) bool) (healed int) {
	for _, ep := range d.endpoints {
		n := d.networks[ep.NetworkID]
		if n == nil || ep.Sandbox == "" || only != nil && !only(ep.HostVeth) {
			continue
		}
		if ok, err := d.links.Exists(ep.HostVeth); err != nil {
			continue
		} else if !ok {
			d.heal(n, ep)
			healed++
			continue
		}
		mac, _ := parseMAC(ep.MAC)
		if !learn || ep.IfName != "" || ep.ifNameTried || mac == nil {
			continue
		}
		// A sandbox that cannot be opened is not looked into again this
		// run; one where the engine has not named the interface yet is.
		name, err := d.links.SandboxIfName(ep.Sandbox, mac)
		if err != nil {
			ep.ifNameTried = true
		}
		if err == nil && name != "" {
			ep.IfName = name
			if err := d.st.Put(bucketEndpoints, ep.ID, ep); err != nil {
				logEp(n.ID, ep.ID).WithError(err).Debug("saving the container's interface name")
			}
		}
	}
	return healed
}

func (d *Driver) heal(n *Network, ep *Endpoint) {
	log := logEp(n.ID, ep.ID).WithField("veth", ep.HostVeth)
	p := netdev.Plumb{Veth: d.veth(n, ep), IfName: ep.IfName}
	if p.IfName == "" {
		p.IfName = n.Options.IfacePrefix + "0"
	}
	for _, a := range []netip.Prefix{ep.Addr, ep.AddrV6} {
		if a.IsValid() {
			p.Addrs = append(p.Addrs, a)
		}
	}
	if ep.Gateway {
		// Only the container's gateway endpoint gives it default routes:
		// on a container of several networks another one may have them.
		p.GatewayV4, p.GatewayV6 = n.gateways(ep)
	}
	err := d.links.Replumb(ep.Sandbox, p)
	if errors.Is(err, netdev.ErrNoSandbox) {
		// The container is gone; the engine's DeleteEndpoint follows.
		log.Debug("veth gone with its container")
		ep.Sandbox = ""
		return
	}
	if err != nil {
		if ep.healErr != err.Error() {
			log.WithError(err).Error("the endpoint's veth is gone and it cannot be plumbed into its container again")
		}
		ep.healErr = err.Error()
		return
	}
	if err := d.addSpoofChecks(n, ep); err != nil {
		log.WithError(err).Error("anti-spoofing checks of the endpoint plumbed again")
	}
	if len(ep.Ports) > 0 {
		// The host ports it had, -P's included (the restore may have
		// pruned them while the veth was gone).
		if err := d.ports.Restore(n.portEndpoint(ep), ep.PortReq, ep.Ports); err != nil {
			log.WithError(err).Error("published ports of the endpoint plumbed again")
		}
	}
	if n.Cluster != nil && d.cl != nil {
		d.kickAgent(n.ID) // the fast path's filters follow the new veth
	}
	ep.healed, ep.healErr = time.Now().UTC(), ""
	log.WithField("interface", p.IfName).Warn("drift: the endpoint's veth was gone; plumbed it into its container again (address, MAC, MTU, routes)")
}
