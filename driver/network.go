package driver

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"

	"github.com/docker/go-plugins-helpers/network"

	"github.com/ournet/ournet/internal/crash"
	"github.com/ournet/ournet/internal/netdev"
	"github.com/ournet/ournet/internal/subnet"
)

// CreateNetwork creates the network's bridge and rules, then persists it.
// On any failure it undoes what it made: no bridge, rule or record remains.
func (d *Driver) CreateNetwork(req *network.CreateNetworkRequest) (retErr error) {
	defer d.lock()()
	log := logNet(req.NetworkID)
	if old, ok := d.networks[req.NetworkID]; ok {
		// The engine does not send the same ID twice; if it does, the
		// network is already there: make sure it still is, whole.
		return d.programNetwork(old)
	}
	n, err := newNetwork(req)
	if err != nil {
		return err
	}
	n.Boot, n.Unanswered = d.boot, true
	if err := d.reclaimOverlapping(n); err != nil {
		return err
	}
	if err := d.checkHostRoutes(n); err != nil {
		return err
	}
	for _, other := range d.networks {
		if other.Bridge == n.Bridge {
			return fmt.Errorf("ournet: bridge name %s is already used by ournet network %s; choose another %s", n.Bridge, short12(other.ID), optBridgeName)
		}
	}
	if ok, err := d.links.Exists(n.Bridge); err != nil {
		return err
	} else if ok {
		return fmt.Errorf("ournet: a network device named %s already exists on this host; choose another %s or remove that device", n.Bridge, optBridgeName)
	}

	if n.Options.Cluster != "" {
		undo, err := d.defineCluster(n, req)
		if err != nil {
			return err
		}
		defer func() {
			if retErr != nil {
				undo()
			}
		}()
	}
	if err := d.journalCreate("network", n.ID); err != nil {
		return err
	}
	defer func() {
		if retErr != nil && d.unprogramNetwork(n) == nil {
			d.journalUndone(n.ID)
		}
	}()
	if err := d.programNetwork(n); err != nil {
		return err
	}
	crash.Point("create-network:before-save")
	if err := d.saveCreated(bucketNetworks, n.ID, n); err != nil {
		return fmt.Errorf("ournet: saving network state: %w", err)
	}
	crash.Point("create-network:after-save")
	d.addNetwork(n)
	if d.pools != nil {
		d.pools.NetworkMade(n.pools(Subnet.ournetIPAM))
	}
	if n.Cluster != nil {
		d.startAgent(n)
		d.kickSync()
		log = log.WithField("cluster", n.Cluster.Name).WithField("vni", n.Cluster.VNI)
	}
	log.WithField("bridge", n.Bridge).Info("network created")
	return nil
}

// CreateAnswered records that the reply to CreateNetwork for id has
// reached dockerd's socket: from now on dockerd knows the network, and no
// overlapping create may reclaim it.
func (d *Driver) CreateAnswered(id string) {
	defer d.lock()()
	n, ok := d.networks[id]
	if !ok || !n.Unanswered {
		return
	}
	n.Unanswered = false
	if err := d.st.Put(bucketNetworks, n.ID, n); err != nil {
		// Kept in memory: this run never reclaims its own networks anyway.
		logNet(id).WithError(err).Warn("saving that the network's creation was answered")
	}
}

// newNetwork validates the request into a Network.
func newNetwork(req *network.CreateNetworkRequest) (*Network, error) {
	opts, err := ParseOptions(req.NetworkID, req.Options)
	if err != nil {
		return nil, err
	}
	n := &Network{ID: req.NetworkID, Bridge: opts.BridgeName, Options: opts}
	if n.IPv4, err = subnets(req.IPv4Data, false); err != nil {
		return nil, err
	}
	if n.IPv6, err = subnets(req.IPv6Data, true); err != nil {
		return nil, err
	}
	switch {
	case opts.IPv4Off && len(n.IPv4) > 0:
		// Engines before 28 know no IPv6-only networks: they pass the option
		// on and give the network an IPv4 subnet all the same.
		return nil, fmt.Errorf("ournet: IPv4 is disabled on this network (com.docker.network.enable_ipv4=false) but it was given IPv4 subnet %s; "+
			"drop the IPv4 --subnet, or, on an engine before Docker 28 (which always assigns one), drop the option: IPv6-only networks need Docker 28 or later", n.IPv4[0].Pool)
	case opts.IPv4Off && len(n.IPv6) == 0:
		return nil, errors.New("ournet: an IPv6-only network needs an IPv6 subnet; give one with --subnet (e.g. fd00:1::/64)")
	case !opts.IPv4Off && len(n.IPv4) == 0 && !opts.InhibitIPv4:
		return nil, errors.New("ournet: the network has no IPv4 subnet; give one with --subnet")
	}
	return n, nil
}

func subnets(data []*network.IPAMData, v6 bool) ([]Subnet, error) {
	var out []Subnet
	for _, d := range data {
		if d == nil || d.Pool == "" {
			continue
		}
		pool, err := netip.ParsePrefix(d.Pool)
		if err != nil || pool.Addr().Is6() != v6 {
			return nil, fmt.Errorf("ournet: subnet %q is not a valid IPv%s prefix", d.Pool, map[bool]string{false: "4", true: "6"}[v6])
		}
		s := Subnet{Pool: pool.Masked(), Space: d.AddressSpace}
		// Whatever IPAM driver chose it: a subnet no network can use.
		if err := subnet.Usable(s.Pool); err != nil {
			return nil, fmt.Errorf("ournet: %w", err)
		}
		if d.Gateway != "" {
			gw, err := netip.ParsePrefix(d.Gateway)
			if err != nil {
				a, aerr := netip.ParseAddr(d.Gateway)
				if aerr != nil {
					return nil, fmt.Errorf("ournet: gateway %q is not an IP address", d.Gateway)
				}
				gw = netip.PrefixFrom(a, pool.Bits())
			}
			if !s.Pool.Contains(gw.Addr()) {
				return nil, fmt.Errorf("ournet: gateway %s is outside subnet %s; give a --gateway inside the subnet", gw.Addr(), s.Pool)
			}
			s.Gateway = netip.PrefixFrom(gw.Addr(), pool.Bits())
		}
		out = append(out, s)
	}
	return out, nil
}

// programNetwork makes the kernel match n: bridge, addresses, rules. It is
// idempotent, so the restore and drift repair use it too.
func (d *Driver) programNetwork(n *Network) error {
	if err := d.prepareNetwork(n); err != nil {
		return err
	}
	if err := d.fw.AddNetwork(d.fwNetwork(n)); err != nil {
		return fmt.Errorf("ournet: programming firewall rules for bridge %s: %w", n.Bridge, err)
	}
	return nil
}

// prepareNetwork is programNetwork less the firewall: the bridge and the
// sysctls.
func (d *Driver) prepareNetwork(n *Network) error {
	if err := d.links.EnsureBridge(n.bridge()); err != nil {
		if errors.Is(err, netdev.ErrNotOurs) {
			return fmt.Errorf("ournet: a network device named %s already exists and is not ournet's; choose another %s", n.Bridge, optBridgeName)
		}
		return fmt.Errorf("ournet: setting up bridge %s: %w", n.Bridge, err)
	}
	if n.Cluster != nil {
		if d.cl == nil && d.clOff != "" {
			return fmt.Errorf("ournet: network %s is part of cluster network %s, but the cluster store is not set up: %s", short12(n.ID), n.Cluster.Name, d.clOff)
		}
		if d.cl == nil {
			return fmt.Errorf("ournet: network %s is part of cluster network %s, but ETCD_ENDPOINTS is not set any more; set it again", short12(n.ID), n.Cluster.Name)
		}
		if err := d.guardFirst(n); err != nil {
			return err
		}
		if err := d.cl.cfg.Overlay.Ensure(d.device(n)); err != nil {
			return fmt.Errorf("ournet: setting up the VXLAN device of cluster network %s: %w", n.Cluster.Name, err)
		}
	}
	return d.setSysctls(n)
}

// setSysctls turns on forwarding, as Docker's bridge driver does, and keeps
// router advertisements from configuring the bridge: ournet's bridges are
// routers, and an RA sent by a container must not give the host a route.
func (d *Driver) setSysctls(n *Network) error {
	want := [][2]string{{"ipv4/ip_forward", "1"}}
	if len(n.IPv6) > 0 {
		want = append(want, [2]string{"ipv6/conf/all/forwarding", "1"})
	}
	for _, kv := range want {
		if err := d.sys.Set(kv[0], kv[1]); err != nil {
			return fmt.Errorf("ournet: enabling forwarding: %w", err)
		}
	}
	// The bridge's IPv6 settings exist only while IPv6 is on in the kernel.
	if err := d.sys.Set("ipv6/conf/"+n.Bridge+"/accept_ra", "0"); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("ournet: turning off router advertisements on %s: %w", n.Bridge, err)
	}
	// Gateway mode isolated for IPv6, as the bridge driver does it: the
	// bridge takes no part in IPv6 (no link-local address either), so the
	// host cannot reach the containers over it; they still reach each other.
	if n.Options.GwModeV6 == gwIsolated {
		if err := d.sys.Set("ipv6/conf/"+n.Bridge+"/disable_ipv6", "1"); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("ournet: turning off IPv6 on %s (gateway mode isolated): %w", n.Bridge, err)
		}
	}
	return nil
}

// unprogramNetwork removes n's rules and bridge, logging what it cannot.
func (d *Driver) unprogramNetwork(n *Network) error {
	var first error
	if err := d.fw.DelNetwork(n.ID); err != nil {
		logNet(n.ID).WithError(err).Warn("removing firewall rules")
		first = err
	}
	if n.Cluster != nil && d.cl != nil {
		if err := d.cl.cfg.Overlay.Delete(n.Cluster.Device, n.ID); err != nil {
			logNet(n.ID).WithError(err).Warn("removing the VXLAN device")
			first = err
		} else {
			d.unguard(n.ID)
		}
	}
	if err := d.links.DeleteBridge(n.Bridge, n.ID); err != nil && !errors.Is(err, netdev.ErrNotOurs) {
		logNet(n.ID).WithError(err).Warn("removing bridge")
		first = cmpErr(first, err)
	}
	return first
}

// DeleteNetwork removes the network's endpoints, rules and bridge. A network
// ournet does not know is already gone: success.
func (d *Driver) DeleteNetwork(req *network.DeleteNetworkRequest) error {
	defer d.lock()()
	n, ok := d.networks[req.NetworkID]
	if !ok {
		logNet(req.NetworkID).Debug("delete of unknown network: nothing to do")
		return nil
	}
	for id, ep := range d.endpoints {
		if ep.NetworkID == n.ID {
			if err := d.deleteEndpoint(n, ep); err != nil {
				return err
			}
			delete(d.endpoints, id)
		}
	}
	// Forget it first: a crash after this leaves kernel objects the restore
	// removes as orphans (the journal says they are being deleted), never a
	// record that resurrects a deleted network.
	d.forget("network", bucketNetworks, n.ID)
	d.dropNetwork(n)
	d.leaveCluster(n)
	if d.pools != nil {
		d.pools.NetworkGone(n.pools(Subnet.ournetIPAM))
	}
	crash.Point("delete-network:after-forget")
	if err := d.unprogramNetwork(n); err != nil {
		return fmt.Errorf("ournet: removing network %s: %w", short12(n.ID), err)
	}
	d.journalDone(n.ID)
	logNet(n.ID).Info("network deleted")
	return nil
}

// checkHostRoutes refuses a subnet that covers one of the host's routes
// (a subnet the IPAM driver gave without looking, e.g. --subnet
// 10.0.0.0/8 on a host whose LAN is 10.1.2.0/24). ournet's own networks'
// routes were checked by reclaimOverlapping, which names the network.
func (d *Driver) checkHostRoutes(n *Network) error {
	host := d.links.HostRoutes()
	for _, s := range append(append([]Subnet{}, n.IPv4...), n.IPv6...) {
		if err := subnet.Check(s.Pool, host); err != nil {
			return fmt.Errorf("ournet: %w", err)
		}
	}
	return nil
}

// reclaimOverlapping makes room for n. dockerd never gives two live
// networks overlapping subnets, but an ournet network that overlaps n may
// still be one dockerd has (ournet cannot ask: the plugin never calls the
// engine), so the overlap is refused, naming it, as the bridge driver
// refuses it. Only a network ournet can prove dockerd never learnt of is
// removed instead: one created by an earlier run of the plugin whose
// CreateNetwork was never answered (the plugin died during that call, so
// dockerd failed the command, and the user runs it again).
func (d *Driver) reclaimOverlapping(n *Network) error {
	for {
		mine, overlap, ok := d.overlapping(n)
		if !ok {
			return nil
		}
		other := d.networks[d.owners[overlap][0]]
		if !d.unlearnt(other) {
			return fmt.Errorf("ournet: subnet %s overlaps subnet %s of ournet network %s (bridge %s); choose another subnet or remove that network", mine, overlap, short12(other.ID), other.Bridge)
		}
		if err := d.removeUnlearnt(other, overlap); err != nil {
			return err
		}
	}
}

// unlearnt says whether n is a network dockerd never learnt of: created by
// an earlier run of the plugin, whose CreateNetwork was never answered.
func (d *Driver) unlearnt(n *Network) bool { return n.Unanswered && n.Boot != d.boot }

// removeUnlearnt removes such a network, found overlapping subnet. Its
// record is forgotten first, so a kernel object left by an error here is an
// orphan the next start removes. Called with d.mu held.
func (d *Driver) removeUnlearnt(n *Network, subnet netip.Prefix) error {
	logNet(n.ID).WithField("subnet", subnet).Warn("removing a network dockerd never learnt of (the plugin stopped before answering its creation)")
	d.forget("network", bucketNetworks, n.ID)
	d.dropNetwork(n)
	d.leaveCluster(n)
	if err := d.unprogramNetwork(n); err != nil {
		return fmt.Errorf("ournet: removing leftover network %s: %w", short12(n.ID), err)
	}
	d.journalDone(n.ID)
	return nil
}

// ReclaimUnlearnt is the IPAM's side of reclaimOverlapping (ipam.Allocator
// SetReclaim): a RequestPool whose subnet overlaps the pool of a network
// dockerd never learnt of has that network removed. dockerd's ReleasePool
// of that pool, sent when the create failed, may have been lost to the
// plugin's restart too, and no DeleteNetwork comes for a network dockerd
// does not have, so the pool would stay held and every later create of the
// subnet be refused. It returns the subnets of the removed network's pools
// of ournet's IPAM, which the IPAM then frees; none if the subnet is not
// such a network's. known says whether an ournet network held the subnet.
func (d *Driver) ReclaimUnlearnt(subnet netip.Prefix) (subnets []netip.Prefix, known bool) {
	defer d.lock()()
	q, ok := d.subnets.Overlap(subnet)
	if !ok {
		return nil, false
	}
	n := d.networks[d.owners[q][0]]
	if n == nil {
		return nil, false
	}
	if !d.unlearnt(n) {
		return nil, true
	}
	if err := d.removeUnlearnt(n, q); err != nil {
		// The record is gone: its pools have no network either.
		logNet(n.ID).WithError(err).Warn("removing a network dockerd never learnt of (the next start removes what is left)")
	}
	return n.pools(Subnet.ournetIPAM), true
}

// overlapping returns a subnet of n that overlaps a known network's, and
// that one, from the index: a create checks every network.
func (d *Driver) overlapping(n *Network) (mine, theirs netip.Prefix, ok bool) {
	for _, ss := range [2][]Subnet{n.IPv4, n.IPv6} {
		for _, s := range ss {
			if q, ok := d.subnets.Overlap(s.Pool); ok {
				return s.Pool, q, true
			}
		}
	}
	return netip.Prefix{}, netip.Prefix{}, false
}

// addNetwork, dropNetwork and setNetworks change the known networks, and
// their subnets' index with them. Called with d.mu held.
func (d *Driver) addNetwork(n *Network) {
	if old, ok := d.networks[n.ID]; ok {
		d.dropNetwork(old)
	}
	d.networks[n.ID] = n
	for _, ss := range [2][]Subnet{n.IPv4, n.IPv6} {
		for _, s := range ss {
			p := s.Pool.Masked() // as the index answers it
			d.subnets.Add(p)
			d.owners[p] = append(d.owners[p], n.ID)
		}
	}
}

func (d *Driver) dropNetwork(n *Network) {
	if _, ok := d.networks[n.ID]; !ok {
		return
	}
	delete(d.networks, n.ID)
	for _, ss := range [2][]Subnet{n.IPv4, n.IPv6} {
		for _, s := range ss {
			p := s.Pool.Masked()
			d.subnets.Remove(p)
			if ids := slices.DeleteFunc(d.owners[p], func(id string) bool { return id == n.ID }); len(ids) > 0 {
				d.owners[p] = ids
			} else {
				delete(d.owners, p)
			}
		}
	}
}

func (d *Driver) setNetworks(nets map[string]*Network) {
	d.networks, d.subnets, d.owners = map[string]*Network{}, subnet.NewIndex(), map[netip.Prefix][]string{}
	for _, n := range nets {
		d.addNetwork(n)
	}
}

func newBootID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
