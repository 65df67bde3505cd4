package driver

import (
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/ournet/ournet/internal/firewall"
	"github.com/ournet/ournet/internal/netdev"
	"github.com/ournet/ournet/internal/portmap"
	"github.com/ournet/ournet/internal/store"
)

// Store buckets.
const (
	bucketNetworks  = "networks"
	bucketEndpoints = "endpoints"
)

// Subnet is one of a network's address pools and its gateway.
type Subnet struct {
	Pool    netip.Prefix
	Gateway netip.Prefix // the gateway address in the pool's prefix length; may be invalid
	// Space is the address space the IPAM driver gave the pool in; empty
	// in records made before it was kept.
	Space string `json:",omitempty"`
}

// ournetIPAM says whether ournet's IPAM may hold s's pool: only then does
// the driver tell it of deleted networks and endpoints (ipam/orphan.go),
// lest a pool of the same subnet from another network be marked. A record
// that does not say is told, as before Space was kept.
func (s Subnet) ournetIPAM() bool { return s.Space == "" || strings.HasPrefix(s.Space, "ournet-") }

// Network is one ournet network as persisted.
type Network struct {
	ID      string
	Bridge  string
	Options NetworkOptions
	IPv4    []Subnet
	IPv6    []Subnet
	// Boot is the plugin run that created the network. Unanswered says the
	// CreateNetwork that made it was never seen answered: saved true with
	// the record, cleared once the reply has reached dockerd's socket
	// (CreateAnswered). A network of an earlier run that is still
	// unanswered is one dockerd never learnt of (the plugin died in that
	// call): the only kind reclaimOverlapping may remove. Used says an
	// endpoint was ever created on it (and so dockerd knows it).
	// Cluster: the cluster network this is this host's part of (cluster.go).
	Cluster    *ClusterNet `json:",omitempty"`
	Boot       string      `json:",omitempty"`
	Unanswered bool        `json:",omitempty"`
	Used       bool        `json:",omitempty"`
}

// Endpoint is one ournet endpoint as persisted.
type Endpoint struct {
	ID        string
	NetworkID string
	Addr      netip.Prefix
	AddrV6    netip.Prefix
	MAC       string
	HostVeth  string
	PeerVeth  string
	// Published ports (ports.go): what the engine asked for, and what is
	// installed with the host ports ournet picked, restored after restarts.
	PortReq []portmap.Binding `json:",omitempty"`
	Ports   []portmap.Mapping `json:",omitempty"`
	// Sandbox is Join's SandboxKey (the container's network namespace) and
	// IfName the interface's name there, learnt once the engine has named
	// it: what it takes to plumb the endpoint again if its veth goes
	// (heal.go).
	Sandbox string `json:",omitempty"`
	IfName  string `json:",omitempty"`
	// Left: the engine called Leave and has not joined the endpoint
	// since; its DeleteEndpoint is due (see DeleteLeftEndpoints).
	Left bool `json:",omitempty"`
	// Gateway: the engine made this endpoint the container's gateway
	// (ProgramExternalConnectivity, until Revoke): only then does healing
	// give the container its default routes through it.
	Gateway bool `json:",omitempty"`
	// published: this call put the endpoint in the cluster store (an
	// endpoint being created is not yet in d.endpoints).
	published bool
	// healed is when ournet last plumbed the endpoint again, and healErr
	// why it could not; shown by Status.
	healed      time.Time
	healErr     string
	ifNameTried bool
}

func (n *Network) bridge() netdev.Bridge {
	b := netdev.Bridge{Name: n.Bridge, Owner: n.ID, MTU: n.Options.MTU, MAC: bridgeMAC(n.ID), Group: firewall.BridgeGroup}
	for _, s := range append(append([]Subnet{}, n.IPv4...), n.IPv6...) {
		v4 := s.Gateway.Addr().Is4()
		if s.Gateway.IsValid() && !(v4 && (n.Options.InhibitIPv4 || n.Options.GwModeV4 == gwIsolated)) && !(!v4 && n.Options.GwModeV6 == gwIsolated) {
			b.Addrs = append(b.Addrs, s.Gateway)
		}
	}
	return b
}

func (d *Driver) veth(n *Network, ep *Endpoint) netdev.Veth {
	mac, _ := parseMAC(ep.MAC)
	return netdev.Veth{
		Host: ep.HostVeth, Peer: ep.PeerVeth, Owner: ep.ID, Bridge: n.Bridge,
		MTU: n.Options.MTU, PeerMAC: mac,
		// icc=false is enforced at layer 2 too: isolated bridge ports
		// cannot talk to each other whether or not br_netfilter passes
		// bridged traffic through iptables.
		Isolated: !n.Options.ICC,
	}
}

// Restore loads the persisted networks and endpoints and makes the kernel
// match them: CreateNetwork is never replayed by dockerd, so ournet alone
// knows its networks after a restart. It runs once, after the plugin
// listens; calls that arrive meanwhile wait for it.
func (d *Driver) Restore() error {
	defer close(d.ready)
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.st == nil {
		return nil
	}
	nets, err := store.LoadAll[Network](d.st, bucketNetworks)
	if err != nil {
		return fmt.Errorf("loading networks: %w", err)
	}
	eps, err := store.LoadAll[Endpoint](d.st, bucketEndpoints)
	if err != nil {
		return fmt.Errorf("loading endpoints: %w", err)
	}
	d.setNetworks(nets)
	d.endpoints = eps
	d.removeOrphans()
	var firstErr error
	var rules []firewall.Network
	for _, n := range nets {
		if err := d.prepareNetwork(n); err != nil {
			logNet(n.ID).WithError(err).Error("restoring network")
			firstErr = cmpErr(firstErr, err)
		}
		rules = append(rules, d.fwNetwork(n))
	}
	// All networks' rules in one iptables-restore per family, so that the
	// restore takes about as long for a hundred networks as for one.
	if err := d.fw.AddNetworks(rules); err != nil {
		logNet("").WithError(err).Warn("restoring rules in one go; retrying network by network")
		for _, n := range nets {
			if err := d.fw.AddNetwork(d.fwNetwork(n)); err != nil {
				logNet(n.ID).WithError(err).Error("restoring rules")
				firstErr = cmpErr(firstErr, err)
			}
		}
	}
	for _, n := range nets {
		d.reattachEndpoints(n)
	}
	d.restorePorts()
	d.healEndpoints(false, nil)
	for _, n := range nets {
		d.startAgent(n)
	}
	if err := d.syncSpoofChecks(); err != nil {
		logNet("").WithError(err).Error("restoring anti-spoofing checks")
		firstErr = cmpErr(firstErr, err)
	}
	logNet("").WithField("networks", len(nets)).WithField("endpoints", len(eps)).Info("state restored")
	return firstErr
}

func cmpErr(first, err error) error {
	if first != nil {
		return first
	}
	return err
}
