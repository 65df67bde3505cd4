package driver

// Cluster networks (issue #13): one ournet network spanning many Docker
// hosts. Each host has a network of its own in its engine (its own ID,
// bridge, rules), linked to the others by the cluster name of
// `-o ournet.cluster=NAME`. What the hosts share is in the cluster store
// (internal/cluster): the network's definition and VXLAN network
// identifier, the address blocks each host holds, and every endpoint with
// the host it lives on. The data path is one VXLAN device per network on
// its bridge (internal/overlay), with a permanent neighbour and forwarding
// entry per remote endpoint, kept equal to the store by a watch per
// network and a periodic comparison.

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/docker/go-plugins-helpers/network"

	"github.com/ournet/ournet/internal/cluster"
	"github.com/ournet/ournet/internal/overlay"
)

// ClusterStore is the part of internal/cluster the driver uses.
type ClusterStore interface {
	Host() string
	Lease() int64
	Advertise() netip.Addr
	Define(ctx context.Context, name string, spec cluster.Spec) (cluster.Network, error)
	Leave(ctx context.Context, name string) error
	Memberships(ctx context.Context) ([]string, error)
	PutEndpoint(ctx context.Context, name string, ep cluster.Endpoint) error
	DeleteEndpoint(ctx context.Context, name string, a netip.Addr) error
	Endpoints(ctx context.Context, name string) (map[netip.Addr]cluster.Endpoint, int64, error)
	WatchEndpoints(ctx context.Context, name string, rev int64) <-chan cluster.EndpointEvent
}

// Overlay is the part of internal/overlay the driver uses.
type Overlay interface {
	Ensure(overlay.Device) error
	Delete(name, owner string) error
	SetPeers(dev string, peers []overlay.Peer) (added, removed int, err error)
	SetFastPath(dev string, locals []overlay.Local, remotes []net.HardwareAddr) error
}

// ClusterPools is the IPAM's side of a cluster network: its pool takes its
// addresses from this host's blocks once attached.
type ClusterPools interface {
	CheckAttach(subnet netip.Prefix, name string) error
	Attach(subnet netip.Prefix, name string) error
}

// Guard is the firewall's VXLAN guard (internal/firewall/vxlan.go).
type Guard interface {
	EnsureVXLAN(port int, iface string, local netip.Addr, hosts []netip.Addr, keep bool) error
	DelVXLAN() error
}

// Cluster is what the driver needs for cluster networks; without it (no
// ETCD_ENDPOINTS) a cluster network is refused, saying what to set.
type Cluster struct {
	Store   ClusterStore
	Overlay Overlay
	Pools   ClusterPools
	Guard   Guard
	// Underlay is the interface holding the advertised address, and
	// UnderlayMTU its MTU.
	Underlay    string
	UnderlayMTU int
	// SyncEvery is how often the host's endpoints and memberships are
	// compared with the store (default 5 s).
	SyncEvery time.Duration
}

// ClusterNet is what a network record keeps of its cluster network.
type ClusterNet struct {
	Name   string
	VNI    int
	MTU    int
	Device string
}

// clusterState is the driver's running part of the cluster.
type clusterState struct {
	cfg    *Cluster
	mu     sync.Mutex
	agents map[string]*agent // network ID -> its data path's watcher
	// guarded are networks guardFirst guarded whose agent has not
	// started: their VXLAN device may exist, so a guard stays (admitting
	// the other agents' hosts: this network has no peer yet).
	guarded map[string]bool
	down    bool // the store did not answer (noteStore)
	kick    chan struct{}
	// guardMu orders the guard's updates (each writes what it read of the
	// agents under mu): the last one written is the newest.
	guardMu sync.Mutex
}

// SetCluster enables cluster networks; call before Restore.
func (d *Driver) SetCluster(c *Cluster) {
	if c.SyncEvery == 0 {
		c.SyncEvery = 5 * time.Second
	}
	d.cl = &clusterState{cfg: c, agents: map[string]*agent{}, guarded: map[string]bool{}, kick: make(chan struct{}, 1)}
}

// ClusterOff records why the cluster store could not be set up (a bad
// setting): cluster networks are refused with it.
func (d *Driver) ClusterOff(reason string) { d.clOff = reason }

// storeCtx bounds a driver-side call to the store (each call has its own
// deadline too, inside dockerd's 30 s).
func storeCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 8*time.Second)
}

// clusterSpec is what every host's `docker network create` must agree on:
// the subnets and gateways, and the options that shape behaviour (not the
// bridge's name, the interface prefix or the host binding: those are each
// host's own).
func clusterSpec(n *Network, mtu int) cluster.Spec {
	o := n.Options
	spec := cluster.Spec{MTU: mtu, Options: map[string]string{
		optICC:          strconv.FormatBool(o.ICC),
		optMasquerade:   strconv.FormatBool(o.Masquerade),
		optInternal:     strconv.FormatBool(o.Internal),
		optEnableIPv6:   strconv.FormatBool(o.EnableIPv6),
		optEnableIPv4:   strconv.FormatBool(!o.IPv4Off),
		optInhibitIPv4:  strconv.FormatBool(o.InhibitIPv4),
		optGwModeV4:     o.GwModeV4,
		optGwModeV6:     o.GwModeV6,
		optAntiSpoofing: strconv.FormatBool(!o.AntiSpoofingOff),
	}}
	if o.MTU != 0 {
		spec.Options[optMTU] = strconv.Itoa(o.MTU)
	}
	for _, s := range append(slices.Clone(n.IPv4), n.IPv6...) {
		spec.Subnets = append(spec.Subnets, s.Pool.String())
		if s.Gateway.IsValid() {
			spec.Options["gateway of "+s.Pool.String()] = s.Gateway.Addr().String()
		}
	}
	return spec
}

// defineCluster defines or joins n's cluster network in the store and
// attaches its pools; on failure nothing of it stays in the store. Called
// with d.mu held, before anything of n is in the kernel.
func (d *Driver) defineCluster(n *Network, req *network.CreateNetworkRequest) (undo func(), err error) {
	name := n.Options.Cluster
	if d.cl == nil && d.clOff != "" {
		return nil, fmt.Errorf("ournet: cluster network %s: the cluster store is not set up: %s", name, d.clOff)
	}
	if d.cl == nil {
		return nil, fmt.Errorf("ournet: option %s needs the cluster store: set it on every host with `docker plugin set ournet/ournet ETCD_ENDPOINTS=http://HOST:2379,...` (see README.md, Across hosts)", optCluster)
	}
	for _, other := range d.networks {
		if other.Cluster != nil && other.Cluster.Name == name {
			return nil, fmt.Errorf("ournet: cluster network %s already exists on this host (ournet network %s, bridge %s)", name, short12(other.ID), other.Bridge)
		}
	}
	for _, data := range append(slices.Clone(req.IPv4Data), req.IPv6Data...) {
		if data != nil && data.Pool != "" && !strings.HasPrefix(data.AddressSpace, "ournet-") {
			return nil, fmt.Errorf("ournet: cluster network %s needs ournet's IPAM, which hands out each address once in the whole cluster (the default IPAM would give two hosts the same addresses): add --ipam-driver ournet", name)
		}
	}
	cfg := d.cl.cfg
	over := overlay.OverheadFor(cfg.Store.Advertise())
	room := cfg.UnderlayMTU - over
	mtu := n.Options.MTU
	if mtu == 0 {
		mtu = room
	} else if mtu > room {
		return nil, fmt.Errorf("ournet: MTU %d is too large for cluster network %s: the underlay (%s, MTU %d) carries at most %d after VXLAN's %d bytes; give %s=%d or less, or leave it out",
			mtu, name, cfg.Underlay, cfg.UnderlayMTU, room, over, optMTU, room)
	}
	// What the IPAM would refuse, it refuses before anything is written.
	for _, s := range append(slices.Clone(n.IPv4), n.IPv6...) {
		if err := cfg.Pools.CheckAttach(s.Pool, name); err != nil {
			return nil, err
		}
	}
	ctx, cancel := storeCtx()
	defer cancel()
	cn, err := cfg.Store.Define(ctx, name, clusterSpec(n, mtu))
	if err != nil {
		d.noteStore(err)
		return nil, err
	}
	undo = func() {
		ctx, cancel := storeCtx()
		defer cancel()
		if err := cfg.Store.Leave(ctx, name); err != nil {
			logNet(n.ID).WithError(err).Warn("cluster: leaving after a failed create (the sync does it later)")
		}
	}
	if cn.MTU > room {
		undo()
		return nil, fmt.Errorf("ournet: cluster network %s has MTU %d, more than this host's underlay (%s, MTU %d) carries after VXLAN (%d); raise the underlay's MTU",
			name, cn.MTU, cfg.Underlay, cfg.UnderlayMTU, room)
	}
	for _, s := range append(slices.Clone(n.IPv4), n.IPv6...) {
		if err := cfg.Pools.Attach(s.Pool, name); err != nil {
			undo()
			return nil, err
		}
	}
	n.Cluster = &ClusterNet{Name: name, VNI: cn.VNI, MTU: cn.MTU, Device: "ovx" + strconv.Itoa(cn.VNI)}
	n.Options.MTU = cn.MTU
	return undo, nil
}

// device is n's VXLAN device.
func (d *Driver) device(n *Network) overlay.Device {
	return overlay.Device{Name: n.Cluster.Device, VNI: n.Cluster.VNI, Local: d.cl.cfg.Store.Advertise(),
		Bridge: n.Bridge, MTU: n.Cluster.MTU, Owner: n.ID, Isolated: !n.Options.ICC}
}

// noteStore remembers that the store did not answer, so that calls do not
// wait on it again until it does: until then the sync asks it every
// storeRetry, and the first answer (the sync's or any call's) clears it.
func (d *Driver) noteStore(err error) {
	if d.cl != nil && errors.Is(err, cluster.ErrUnavailable) {
		d.cl.mu.Lock()
		was := d.cl.down
		d.cl.down = true
		d.cl.mu.Unlock()
		if !was {
			d.kickSync() // the sync waits storeRetry from now on
		}
	}
}

// storeAnswered clears what noteStore remembered.
func (d *Driver) storeAnswered() {
	d.cl.mu.Lock()
	d.cl.down = false
	d.cl.mu.Unlock()
}

// StoreDown says whether the cluster store did not answer moments ago
// and has not answered since (always false without a cluster): a call to
// it from outside the driver, such as the IPAM's block claims, fails at
// once then instead of waiting on it again.
func (d *Driver) StoreDown() bool { return d.cl != nil && d.storeDown() }

// StoreResult tells the driver how such a call ended: a store that could
// not be reached is down until it answers; any answer (a refusal too)
// clears that.
func (d *Driver) StoreResult(err error) {
	switch {
	case d.cl == nil:
	case errors.Is(err, cluster.ErrUnavailable):
		d.noteStore(err)
	default:
		d.storeAnswered()
	}
}

func (d *Driver) storeDown() bool {
	d.cl.mu.Lock()
	defer d.cl.mu.Unlock()
	return d.cl.down
}

// storeRetry is how often the sync asks a store that did not answer: the
// longest a user is refused after it answers again.
const storeRetry = time.Second

// publish puts ep's addresses in the store; on failure none stays. A
// store that did not answer moments ago is not waited for again: calls
// wait under the driver's lock, and parallel runs would queue past
// dockerd's timeout.
func (d *Driver) publish(n *Network, ep *Endpoint) error {
	if d.storeDown() {
		return fmt.Errorf("ournet: publishing endpoint %s: cluster store: %w (it did not answer moments ago; check etcd's health: `docker rm` and `docker network rm` still work meanwhile)", ep.Addr.Addr(), cluster.ErrUnavailable)
	}
	mac, _ := net.ParseMAC(ep.MAC)
	var done []netip.Addr
	for _, p := range []netip.Prefix{ep.Addr, ep.AddrV6} {
		if !p.IsValid() {
			continue
		}
		ctx, cancel := storeCtx()
		err := d.cl.cfg.Store.PutEndpoint(ctx, n.Cluster.Name, cluster.Endpoint{Addr: p.Addr(), MAC: mac.String()})
		cancel()
		if err != nil {
			d.noteStore(err)
			for _, a := range done {
				d.unpublishAddr(n, a)
			}
			return err
		}
		done = append(done, p.Addr())
	}
	return nil
}

// unpublish removes ep's addresses from the store. It never fails the
// caller: `docker rm` must work while the store is down; what is left is
// removed by the sync once the store answers.
func (d *Driver) unpublish(n *Network, ep *Endpoint) {
	if n == nil || n.Cluster == nil || d.cl == nil {
		return
	}
	if d.storeDown() {
		logEp(n.ID, ep.ID).Info("cluster: store down, the endpoint leaves it at the next sync")
		return
	}
	for _, p := range []netip.Prefix{ep.Addr, ep.AddrV6} {
		if p.IsValid() {
			d.unpublishAddr(n, p.Addr())
		}
	}
}

func (d *Driver) unpublishAddr(n *Network, a netip.Addr) {
	ctx, cancel := storeCtx()
	defer cancel()
	if err := d.cl.cfg.Store.DeleteEndpoint(ctx, n.Cluster.Name, a); err != nil {
		d.noteStore(err)
		logNet(n.ID).WithError(err).WithField("addr", a).Warn("cluster: removing an endpoint from the store (the sync does it later)")
	}
}

// leaveCluster is DeleteNetwork's part: this host is no longer a member
// (the last member removes the network's keys). Never fails the caller.
func (d *Driver) leaveCluster(n *Network) {
	if n.Cluster == nil || d.cl == nil {
		return
	}
	d.stopAgent(n.ID)
	// The VXLAN device goes with the bridge (unprogramNetwork, which both
	// callers run next).
	if !d.storeDown() {
		ctx, cancel := storeCtx()
		err := d.cl.cfg.Store.Leave(ctx, n.Cluster.Name)
		cancel()
		if err != nil {
			d.noteStore(err)
			logNet(n.ID).WithError(err).Warn("cluster: leaving the cluster network (the sync does it later)")
		}
	}
	d.kickSync()
}

// clusterNets lists the local cluster networks. Called with d.mu held.
func (d *Driver) clusterNets() []*Network {
	var out []*Network
	for _, n := range d.networks {
		if n.Cluster != nil {
			out = append(out, n)
		}
	}
	return out
}

// agent follows one cluster network's endpoints in the store and keeps the
// kernel's entries equal to the remote ones.
type agent struct {
	stop context.CancelFunc
	kick chan struct{}
	// local: this host's endpoints of the network changed (programmed
	// again without listing: the store's echo of a change that wrote
	// nothing, such as an address and MAC taken again, never comes).
	local  chan struct{}
	vteps  []netip.Addr
	listed bool // vteps come from the store (not yet after a start)
	// fastPathErr: the fast path's last error, said once (only the
	// agent's goroutine uses it).
	fastPathErr string
}

// startAgent starts n's agent if it has none. Called with d.mu held.
func (d *Driver) startAgent(n *Network) {
	if d.cl == nil || n.Cluster == nil {
		return
	}
	d.cl.mu.Lock()
	defer d.cl.mu.Unlock()
	delete(d.cl.guarded, n.ID) // its agent keeps the guard from now on
	if _, ok := d.cl.agents[n.ID]; ok {
		return
	}
	ctx, stop := context.WithCancel(context.Background())
	a := &agent{stop: stop, kick: make(chan struct{}, 1), local: make(chan struct{}, 1)}
	d.cl.agents[n.ID] = a
	go d.runAgent(ctx, a, n.ID, n.Cluster.Name, n.Cluster.Device)
}

func (d *Driver) stopAgent(id string) {
	d.cl.mu.Lock()
	defer d.cl.mu.Unlock()
	if a, ok := d.cl.agents[id]; ok {
		a.stop()
		delete(d.cl.agents, id)
	}
}

// kickAgent makes n's agent list and program again (its device was made
// again).
func (d *Driver) kickAgent(id string) {
	d.cl.mu.Lock()
	defer d.cl.mu.Unlock()
	if a, ok := d.cl.agents[id]; ok {
		select {
		case a.kick <- struct{}{}:
		default:
		}
	}
}

// localChanged tells n's agent that this host's endpoints of n changed.
// Called with d.mu held.
func (d *Driver) localChanged(n *Network) {
	if n == nil || n.Cluster == nil || d.cl == nil {
		return
	}
	d.cl.mu.Lock()
	defer d.cl.mu.Unlock()
	if a, ok := d.cl.agents[n.ID]; ok {
		select {
		case a.local <- struct{}{}:
		default:
		}
	}
}

// runAgent lists the network's endpoints, programs the remote ones, then
// follows the watch; it lists again when the watch breaks (the store lost
// its leader, a compaction), when kicked, and every 30 s. While the store
// cannot be reached the kernel keeps what it has: established traffic
// flows on.
func (d *Driver) runAgent(ctx context.Context, a *agent, id, name, dev string) {
	store := d.cl.cfg.Store
	me := store.Host()
	wait := 200 * time.Millisecond
	for ctx.Err() == nil {
		lctx, cancel := context.WithTimeout(ctx, 8*time.Second)
		eps, rev, err := store.Endpoints(lctx, name)
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				logNet(id).WithError(err).Debug("cluster: listing endpoints")
			}
			select {
			case <-ctx.Done():
				return
			case <-a.kick:
			case <-time.After(wait):
			}
			wait = min(2*wait, 2*time.Second)
			continue
		}
		wait = 200 * time.Millisecond
		remote := map[netip.Addr]cluster.Endpoint{}
		for addr, ep := range eps {
			if ep.Host != me {
				remote[addr] = ep
			}
		}
		d.program(id, dev, a, remote)
		wctx, wstop := context.WithCancel(ctx)
		events := store.WatchEndpoints(wctx, name, rev)
		resync := time.NewTimer(30 * time.Second)
	watch:
		for {
			select {
			case <-ctx.Done():
				break watch
			case <-a.kick:
				break watch
			case <-resync.C:
				break watch
			case <-a.local:
				d.program(id, dev, a, remote)
			case ev, ok := <-events:
				if !ok {
					break watch
				}
				applyEvent(remote, ev, me)
				// A burst (a host's lease expiring takes all its endpoints
				// at once) is programmed once.
				drain(events, remote, me)
				d.program(id, dev, a, remote)
			}
		}
		resync.Stop()
		wstop()
	}
}

// applyEvent makes remote follow one event of another host's endpoint
// (a delete only of the endpoint that host had: the address may have moved).
func applyEvent(remote map[netip.Addr]cluster.Endpoint, ev cluster.EndpointEvent, me string) {
	switch {
	case ev.Host == me:
	case !ev.Gone:
		remote[ev.Addr] = ev.Endpoint
	case remote[ev.Addr].Host == ev.Host:
		delete(remote, ev.Addr)
	}
}

// drain applies the events already waiting, without blocking.
func drain(events <-chan cluster.EndpointEvent, remote map[netip.Addr]cluster.Endpoint, me string) {
	for {
		select {
		case ev, ok := <-events:
			if !ok {
				return
			}
			applyEvent(remote, ev, me)
		case <-time.After(20 * time.Millisecond):
			return
		}
	}
}

// program makes the device's entries exactly the remote endpoints, and
// the VXLAN guard admit their hosts.
func (d *Driver) program(id, dev string, a *agent, remote map[netip.Addr]cluster.Endpoint) {
	var peers []overlay.Peer
	var vteps []netip.Addr
	for _, addr := range slices.SortedFunc(maps.Keys(remote), netip.Addr.Compare) {
		ep := remote[addr]
		mac, err := net.ParseMAC(ep.MAC)
		if err != nil || !ep.VTEP.IsValid() {
			continue
		}
		peers = append(peers, overlay.Peer{Addr: addr, MAC: mac, VTEP: ep.VTEP})
		vteps = append(vteps, ep.VTEP)
	}
	added, removed, err := d.cl.cfg.Overlay.SetPeers(dev, peers)
	if err != nil {
		logNet(id).WithError(err).Warn("cluster: programming remote endpoints")
	} else if added+removed > 0 {
		logNet(id).WithFields(map[string]any{"added": added, "removed": removed, "peers": len(peers)}).Debug("cluster: remote endpoints programmed")
	}
	d.fastPath(id, dev, a, peers)
	slices.SortFunc(vteps, netip.Addr.Compare)
	vteps = slices.Compact(vteps)
	d.cl.mu.Lock()
	changed := !slices.Equal(a.vteps, vteps) || !a.listed
	a.vteps, a.listed = vteps, true
	d.cl.mu.Unlock()
	if changed {
		d.updateGuard()
	}
}

// fastPath makes IPv4 between this host's endpoints of the network and
// the remote ones skip the bridge (overlay.SetFastPath), where the bridge
// would forward it anyway: with icc on. With icc=false every frame stays
// on the bridge's isolated ports, and the network has no fast path.
func (d *Driver) fastPath(id, dev string, a *agent, peers []overlay.Peer) {
	unlock := d.lock()
	n := d.networks[id]
	var locals []overlay.Local
	if n != nil && n.Options.ICC {
		for _, ep := range d.endpoints {
			mac, err := net.ParseMAC(ep.MAC)
			if ep.NetworkID == id && err == nil && ep.Addr.IsValid() && ep.Addr.Addr().Is4() {
				locals = append(locals, overlay.Local{Veth: ep.HostVeth, MAC: mac, IPv4: ep.Addr.Addr()})
			}
		}
	}
	unlock()
	if n == nil {
		return // deleted meanwhile: its device went with it
	}
	var remotes []net.HardwareAddr
	seen := map[string]bool{}
	for _, p := range peers {
		if !seen[p.MAC.String()] {
			seen[p.MAC.String()] = true
			remotes = append(remotes, p.MAC)
		}
	}
	err := d.cl.cfg.Overlay.SetFastPath(dev, locals, remotes)
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	if err != nil && msg != a.fastPathErr { // said once, not at every resync (a kernel without u32 or mirred)
		logNet(id).WithError(err).Warn("cluster: programming the fast path (frames take the bridge meanwhile)")
	}
	a.fastPathErr = msg
}

// updateGuard makes the VXLAN guard admit the hosts that remote
// endpoints of this host's cluster networks live on, and no one else: not
// every host registered in the store (one with no cluster network has no
// guard of its own, so its containers could send VXLAN masqueraded to its
// address). While an agent has not listed its network yet (a start with
// the store down) a guard that exists is kept as it is; with no cluster
// network here there is none.
func (d *Driver) updateGuard() {
	d.cl.guardMu.Lock()
	defer d.cl.guardMu.Unlock()
	d.cl.mu.Lock()
	nets := len(d.cl.agents) + len(d.cl.guarded)
	var hosts []netip.Addr
	keep := false
	for _, a := range d.cl.agents {
		hosts = append(hosts, a.vteps...)
		keep = keep || !a.listed
	}
	d.cl.mu.Unlock()
	g := d.cl.cfg.Guard
	if nets == 0 {
		if err := g.DelVXLAN(); err != nil {
			logNet("").WithError(err).Warn("cluster: removing the VXLAN guard")
		}
		return
	}
	if err := g.EnsureVXLAN(overlay.Port, d.cl.cfg.Underlay, d.cl.cfg.Store.Advertise(), hosts, keep); err != nil {
		logNet("").WithError(err).Warn("cluster: guarding the VXLAN port")
	}
}

// guardFirst makes sure a guard exists before n's VXLAN device does
// (admitting no one until the network's agent has listed its peers), and
// that updateGuard keeps it until the agent starts or the device goes.
// Called with d.mu held.
func (d *Driver) guardFirst(n *Network) error {
	d.cl.guardMu.Lock()
	defer d.cl.guardMu.Unlock()
	d.cl.mu.Lock()
	if _, ok := d.cl.agents[n.ID]; !ok {
		d.cl.guarded[n.ID] = true
	}
	d.cl.mu.Unlock()
	if err := d.cl.cfg.Guard.EnsureVXLAN(overlay.Port, d.cl.cfg.Underlay, d.cl.cfg.Store.Advertise(), nil, true); err != nil {
		return fmt.Errorf("ournet: guarding the VXLAN port (UDP %d) before making the VXLAN device: %w", overlay.Port, err)
	}
	return nil
}

// unguard forgets what guardFirst noted of network id: its device is gone.
func (d *Driver) unguard(id string) {
	d.cl.mu.Lock()
	delete(d.cl.guarded, id)
	d.cl.mu.Unlock()
}

func (d *Driver) kickSync() {
	select {
	case d.cl.kick <- struct{}{}:
	default:
	}
}

// Resync makes the sync run now (the host registered again: its
// endpoints must be published anew).
func (d *Driver) Resync() {
	if d.cl != nil {
		d.kickSync()
	}
}

// RunCluster compares, every SyncEvery and when kicked, this host's part
// of the store with the host: endpoints and memberships the host no longer
// has leave the store (removed while it was down), endpoints missing from
// it are published (after the host's lease was lost), and the guard is
// kept. It returns when stop is closed.
func (d *Driver) RunCluster(stop <-chan struct{}) {
	if d.cl == nil {
		return
	}
	<-d.ready
	for {
		d.syncCluster()
		wait := d.cl.cfg.SyncEvery
		if d.storeDown() {
			wait = storeRetry
		}
		t := time.NewTimer(wait)
		select {
		case <-stop:
			t.Stop()
			return
		case <-t.C:
		case <-d.cl.kick:
			t.Stop()
		}
	}
}

func (d *Driver) syncCluster() {
	store := d.cl.cfg.Store
	ctx, cancel := storeCtx()
	defer cancel()
	d.updateGuard()
	member, err := store.Memberships(ctx)
	if err != nil {
		d.noteStore(err)
		logNet("").WithError(err).Debug("cluster: sync: store not answering")
		return
	}
	d.storeAnswered()

	// Read the store first, then the host under the lock: a network or
	// endpoint being created holds the lock from before its store write
	// until it is in memory, so it is never taken for a leftover.
	inStore := map[string]map[netip.Addr]cluster.Endpoint{}
	for _, name := range member {
		eps, _, err := store.Endpoints(ctx, name)
		if err != nil {
			return
		}
		inStore[name] = eps
	}
	defer d.lock()()
	local := map[string]*Network{}
	for _, n := range d.clusterNets() {
		local[n.Cluster.Name] = n
		d.startAgent(n)
	}
	d.cl.mu.Lock()
	var stray []string
	for id := range d.cl.agents {
		if _, ok := d.networks[id]; !ok {
			stray = append(stray, id)
		}
	}
	d.cl.mu.Unlock()
	for _, id := range stray {
		d.stopAgent(id)
	}
	for _, name := range member {
		if _, ok := local[name]; !ok {
			logNet("").WithField("cluster", name).Info("cluster: sync: leaving a cluster network this host no longer has")
			if err := store.Leave(ctx, name); err != nil {
				return
			}
		}
	}
	for name, n := range local {
		if _, ok := inStore[name]; !ok {
			continue // not a member (any more): nothing to publish into
		}
		mine := map[netip.Addr]string{}
		for _, ep := range d.endpoints {
			if ep.NetworkID != n.ID {
				continue
			}
			for _, p := range []netip.Prefix{ep.Addr, ep.AddrV6} {
				if p.IsValid() {
					mine[p.Addr()] = ep.MAC
				}
			}
		}
		for addr, ep := range inStore[name] {
			if ep.Host != store.Host() {
				continue
			}
			// Ours, the same, and under this host's lease now (after a
			// restart it hangs on the old one until it is written again).
			if mac, ok := mine[addr]; ok && mac == ep.MAC && ep.VTEP == store.Advertise() && ep.Lease == store.Lease() {
				delete(mine, addr)
				continue
			}
			if _, ok := mine[addr]; !ok {
				logNet(n.ID).WithField("addr", addr).Info("cluster: sync: removing an endpoint this host no longer has from the store")
				if err := store.DeleteEndpoint(ctx, name, addr); err != nil {
					return
				}
			}
		}
		for addr, mac := range mine {
			logNet(n.ID).WithField("addr", addr).Info("cluster: sync: publishing an endpoint the store lacks")
			if err := store.PutEndpoint(ctx, name, cluster.Endpoint{Addr: addr, MAC: mac}); err != nil {
				logNet(n.ID).WithError(err).WithField("addr", addr).Warn("cluster: sync: publishing")
			}
		}
	}
}
