// Package driver implements Docker's remote NetworkDriver API: one Linux
// bridge per network, one veth pair per endpoint, and the firewall rules of
// Docker's bridge driver in chains of ournet's own.
//
// Files follow the CNM lifecycle: network.go (CreateNetwork/DeleteNetwork),
// endpoint.go (CreateEndpoint/DeleteEndpoint), joinleave.go (Join/Leave and
// external connectivity), state.go (what is persisted and the restore).
package driver

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/docker/go-plugins-helpers/network"
	log "github.com/sirupsen/logrus"

	"github.com/ournet/ournet/internal/firewall"
	"github.com/ournet/ournet/internal/iptables"
	"github.com/ournet/ournet/internal/netdev"
	"github.com/ournet/ournet/internal/store"
	"github.com/ournet/ournet/internal/subnet"
)

// Links is the part of netdev the driver uses; tests may stand in for it.
type Links interface {
	EnsureBridge(netdev.Bridge) error
	DeleteBridge(name, owner string) error
	EnsureVeth(netdev.Veth) error
	DeleteVeth(host, owner string) error
	Exists(name string) (bool, error)
	DeleteLink(name, owner string) error
	Owned() (map[string]string, error)
	// HostRoutes is the host's routes, for subnet.Check.
	HostRoutes() subnet.Routes
	// SandboxIfName names the link with mac in a container's namespace
	// (Join's SandboxKey); Replumb makes an endpoint's interface there again.
	SandboxIfName(sandbox string, mac net.HardwareAddr) (string, error)
	Replumb(sandbox string, p netdev.Plumb) error
}

// Firewall is the part of the firewall package the driver uses.
type Firewall interface {
	Setup() error
	AddNetwork(firewall.Network) error
	AddNetworks([]firewall.Network) error
	DelNetwork(id string) error
	Drifted([]firewall.Network) ([]firewall.Network, error)
	OwnedNetworks() (map[string]bool, error)
}

// Sysctls sets network sysctls (internal/sysctl in the plugin).
type Sysctls interface {
	Set(key, value string) error
}

// Driver is ournet's NetworkDriver. It is safe for concurrent use.
type Driver struct {
	mu        sync.Mutex
	links     Links
	fw        Firewall
	sys       Sysctls
	st        *store.Store
	networks  map[string]*Network
	endpoints map[string]*Endpoint
	// subnets indexes the networks' subnets (a create's overlap check);
	// owners names the networks of each. Changed with networks, by
	// addNetwork, dropNetwork and setNetworks.
	subnets *subnet.Index
	owners  map[netip.Prefix][]string
	// spoof: anti-spoofing checks (antispoof.go); ports: published ports
	// (ports.go). Never nil: Deps fills in no-ops.
	spoof AntiSpoof
	ports Ports
	pools Pools // nil: none to tell
	// cl: cluster networks (cluster.go); nil refuses them.
	cl    *clusterState
	clOff string // why cl is nil though ETCD_ENDPOINTS is set

	// unsaved are deletions a full disk kept from the state
	// file; the repair loop writes them (journal.go).
	unsaved []unsavedDelete
	// strays are kernel objects marked as ournet's whose IDs neither the
	// state nor the journal knows: left alone, reported by Status.
	strays []string
	// strayLinks are the names of the stray links: a stray endpoint's
	// anti-spoofing checks are left as they are while its veth exists.
	strayLinks map[string]bool
	// removeUnknown makes the restore treat every unknown object as an
	// orphan (STATE_RECOVER=fresh).
	removeUnknown bool
	// keepUnknown keeps the published ports of endpoints the state does
	// not know (a state restored from a backup older than them).
	keepUnknown bool

	// cutShort: endpoints of CreateEndpoint calls an earlier run saved
	// and never answered, until dockerd shows it has them
	// (cutshort.go); cutShortWindow overrides the const (tests).
	cutShort       map[string]bool
	cutShortWindow time.Duration

	ready chan struct{} // closed once Restore has run
	boot  string        // this run's ID, see Network.Boot
}

// New returns a driver over the given kernel interfaces and store. Calls
// wait until Restore has run, so that the plugin can listen before it
// restores (dockerd gives it only seconds to open its socket).
func New(deps Deps) *Driver {
	if deps.AntiSpoof == nil {
		deps.AntiSpoof = &noSpoof{ports: map[string]bool{}}
	}
	if deps.Ports == nil {
		deps.Ports = noPorts{}
	}
	return &Driver{
		links:     deps.Links,
		fw:        deps.Firewall,
		sys:       deps.Sysctls,
		st:        deps.Store,
		spoof:     deps.AntiSpoof,
		ports:     deps.Ports,
		pools:     deps.Pools,
		networks:  map[string]*Network{},
		endpoints: map[string]*Endpoint{},
		subnets:   subnet.NewIndex(),
		owners:    map[netip.Prefix][]string{},
		ready:     make(chan struct{}),
		boot:      newBootID(),
	}
}

// Deps is what the driver works with, given at construction: the kernel
// through Links, Firewall, Sysctls, AntiSpoof and Ports, and the state
// file. AntiSpoof and Ports may be left out (unit tests): no checks are
// programmed, no port is published.
type Deps struct {
	Links     Links
	Firewall  Firewall
	Sysctls   Sysctls
	Store     *store.Store
	AntiSpoof AntiSpoof
	Ports     Ports
	Pools     Pools
}

// Pools is the IPAM's side of a network's life: a new one's pools are in
// use (even without a gateway address); a deleted one's wait for
// dockerd's ReleasePool as orphans, which a ReleasePool lost to a plugin
// restart cannot leave held for ever (ipam/orphan.go). May be nil.
type Pools interface {
	// NetworkMade: a network was created on the pools of subnets.
	NetworkMade(subnets []netip.Prefix)
	NetworkGone(subnets []netip.Prefix)
	// EndpointGone: the address addr, in the pool of subnet, of a deleted
	// endpoint.
	EndpointGone(subnet netip.Prefix, addr netip.Addr)
}

// RemoveUnknownAtRestore makes Restore remove every kernel object marked as
// ournet's whose ID the state does not know, journal or not: for a state
// deliberately started empty (STATE_RECOVER=fresh). Call before Restore.
func (d *Driver) RemoveUnknownAtRestore() { d.removeUnknown = true }

// KeepUnknownAtRestore makes Restore leave the published-port rules of
// endpoints the state does not know: for a state restored from a backup
// (STATE_RECOVER=backup), whose newer containers are still running. Call
// before Restore.
func (d *Driver) KeepUnknownAtRestore() { d.keepUnknown = true }

// lock waits for the restore and takes the driver's lock.
func (d *Driver) lock() func() {
	<-d.ready
	d.mu.Lock()
	return d.mu.Unlock
}

// GetCapabilities: networks are local to this host.
func (d *Driver) GetCapabilities() (*network.CapabilitiesResponse, error) {
	// With a cluster store, connectivity spans hosts (as macvlan's does):
	// each engine still has a network of its own, linked by its cluster name.
	conn := network.LocalScope
	if d.cl != nil {
		conn = network.GlobalScope
	}
	return &network.CapabilitiesResponse{Scope: network.LocalScope, ConnectivityScope: conn}, nil
}

// AllocateNetwork and FreeNetwork are swarm-only (global scope) calls.
func (d *Driver) AllocateNetwork(*network.AllocateNetworkRequest) (*network.AllocateNetworkResponse, error) {
	return &network.AllocateNetworkResponse{}, nil
}

// FreeNetwork is swarm-only.
func (d *Driver) FreeNetwork(*network.FreeNetworkRequest) error { return nil }

// DiscoverNew is unused by local drivers.
func (d *Driver) DiscoverNew(*network.DiscoveryNotification) error { return nil }

// DiscoverDelete is unused by local drivers.
func (d *Driver) DiscoverDelete(*network.DiscoveryNotification) error { return nil }

func logNet(id string) *log.Entry { return log.WithField("nid", short12(id)) }

func logEp(nid, eid string) *log.Entry {
	return log.WithFields(log.Fields{"nid": short12(nid), "eid": short12(eid)})
}

// fwNetwork is what the firewall needs to know of n. Called with d.mu held.
func (d *Driver) fwNetwork(n *Network) firewall.Network {
	fn := firewall.Network{
		ID: n.ID, Bridge: n.Bridge, ICC: n.Options.ICC, Internal: n.Options.Internal,
		Masquerade: map[iptables.Family]bool{
			iptables.IPv4: n.Options.Masquerade && natMode(n.Options.GwModeV4),
			iptables.IPv6: n.Options.Masquerade && natMode(n.Options.GwModeV6),
		},
		Unprotected: map[iptables.Family]bool{
			iptables.IPv4: n.Options.GwModeV4 == gwUnprotected,
			iptables.IPv6: n.Options.GwModeV6 == gwUnprotected,
		},
		Routed: map[iptables.Family]bool{
			iptables.IPv4: n.Options.GwModeV4 == gwRouted,
			iptables.IPv6: n.Options.GwModeV6 == gwRouted,
		},
	}
	fn.Subnets = n.pools(nil)
	fn.Trusted = n.Options.TrustedIfaces
	fn.Open = d.openings(n)
	return fn
}

// pools lists n's subnets, IPv4 first: every one, or those keep accepts
// (Subnet.ournetIPAM: the pools ournet's IPAM may hold).
func (n *Network) pools(keep func(Subnet) bool) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range append(append([]Subnet{}, n.IPv4...), n.IPv6...) {
		if keep == nil || keep(s) {
			out = append(out, s.Pool)
		}
	}
	return out
}

func natMode(m string) bool { return m == gwNAT || m == gwUnprotected }

// bridgeMAC is stable per network: a bridge's MAC would otherwise follow its
// lowest port's and change as containers come and go, which peers' ARP
// caches notice.
func bridgeMAC(id string) net.HardwareAddr {
	mac := net.HardwareAddr{0x02, 0x6f, 0, 0, 0, 0}
	for i := 0; i < 4 && 2*i+1 < len(id); i++ {
		var b byte
		fmt.Sscanf(id[2*i:2*i+2], "%02x", &b)
		mac[2+i] = b
	}
	return mac
}

// endpointMAC derives the MAC the way Docker does (02:42 + IPv4), so that
// users see the addresses they know; without IPv4 it derives from the ID.
func endpointMAC(addr netip.Prefix, id string) net.HardwareAddr {
	if addr.IsValid() && addr.Addr().Is4() {
		a := addr.Addr().As4()
		return net.HardwareAddr{0x02, 0x42, a[0], a[1], a[2], a[3]}
	}
	mac := bridgeMAC(id)
	mac[1] = 0x42
	return mac
}
