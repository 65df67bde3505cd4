// Package ipam is ournet's IPAM driver: it hands out subnets and addresses
// for ournet networks the way Docker's default IPAM does for bridge networks.
//
// Persistence: ournet keeps its own allocations. Every pool, with each
// address it holds, is one JSON record in the store's "ipam" bucket, keyed
// by pool ID. A change is built on a copy of the pool, written (fsynced) to
// the store while the allocator's lock is held, and only then installed in
// memory and answered; if the write fails the copy is dropped and the caller
// gets an error, so memory and disk never disagree. New reloads everything.
//
// Hence GetCapabilities does not ask for RequiresRequestReplay. With replay,
// dockerd re-sends RequestPool and every RequestAddress when *dockerd*
// starts, but a managed plugin also restarts on its own (crash, upgrade,
// `docker plugin disable/enable`) while dockerd runs on, and nothing is
// replayed then; the plugin has to remember anyway. Replaying on top of
// remembered state would also make every replayed pool collide with itself.
//
// Address order: lowest free first, as Docker's default IPAM does for local
// networks (its round-robin mode is only switched on by swarmkit, through
// the com.docker.network.ipam.serial option). A freed address can therefore
// come back at once; ournet's driver derives IPv4 MACs from the address, so
// neighbours' ARP entries stay right. Round-robin is available per network
// (--ipam-opt com.docker.network.ipam.serial=true) or for all (Config.Serial).
package ipam

import (
	"cmp"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	api "github.com/docker/go-plugins-helpers/ipam"
	log "github.com/sirupsen/logrus"

	"github.com/ournet/ournet/internal/store"
	"github.com/ournet/ournet/internal/subnet"
)

const (
	// LocalAddressSpace and GlobalAddressSpace are ournet's own names, so
	// that a pool ID shows which IPAM made it. ournet networks are local.
	LocalAddressSpace  = "ournet-local"
	GlobalAddressSpace = "ournet-global"

	// Bucket is the store bucket holding one record per pool.
	Bucket = "ipam"

	// Option keys, as libnetwork spells them.
	optRequestAddressType = "RequestAddressType"
	optGateway            = "com.docker.network.gateway"
	OptSerial             = "com.docker.network.ipam.serial"
)

// Config tunes an Allocator.
type Config struct {
	// DefaultPools and DefaultPoolsV6 are where subnets come from when a
	// network is created without --subnet, tried in order. Entries of both
	// lists are sorted by family, so either may hold any family.
	DefaultPools   []DefaultPool
	DefaultPoolsV6 []DefaultPool
	// HostNetworks lists prefixes in use on the host (addresses, routes);
	// default subnets overlapping one are skipped. May be nil.
	HostNetworks func() ([]netip.Prefix, error)
	// HostRoutes answers which host route a --subnet covers (refused);
	// nil: HostNetworks' list, scanned.
	HostRoutes subnet.Routes
	// Serial hands out addresses round-robin in every pool instead of lowest
	// free first. Docker's default is lowest free; a network opts in with
	// --ipam-opt com.docker.network.ipam.serial=true.
	Serial bool
}

// Allocator is ournet's IPAM driver. All methods are safe for concurrent use.
type Allocator struct {
	v4Defaults, v6Defaults []DefaultPool
	hostNetworks           func() ([]netip.Prefix, error)
	hostRoutes             subnet.Routes
	serial                 bool
	st                     *store.Store // nil: memory only
	blocks                 Blocks       // the cluster store; nil: none

	mu    sync.Mutex
	pools map[string]*pool
	// byPrefix holds every pool's subnet, for the overlap check of a new
	// one (a pool's subnet never changes).
	byPrefix *subnet.Index
	// unsaved are releases a full disk kept from the state file: pool ID
	// to the pool as memory holds it (nil: the pool is gone). Flush writes
	// them. The release itself takes effect at once.
	unsaved map[string]*pool
	// lost: when empty ReleasePool retries came that freed no orphan,
	// oldest first (orphan.go).
	lost []time.Time
	// reclaim: the driver's hook for the pools of networks dockerd never
	// learnt of (orphan.go); nil: none.
	reclaim func(netip.Prefix) (subnets []netip.Prefix, known bool)
	// cutShort: pools whose gateway RequestAddress or CreateNetwork an
	// earlier run was handling when it stopped, unanswered (orphan.go).
	cutShort map[string]bool
	// swept: addresses SweepAddresses freed, and when; the late release
	// of such an address may still come (orphan.go).
	swept map[netip.Addr]time.Time
	// started is when this allocator was made: an address orphaned before
	// it was orphaned by a plugin that is gone (orphan.go).
	started time.Time
}

var _ api.Ipam = (*Allocator)(nil)

// New makes an Allocator and loads the pools saved in st; st may be nil, for
// an allocator that forgets everything when it goes.
func New(cfg Config, st *store.Store) (*Allocator, error) {
	a := &Allocator{hostNetworks: cfg.HostNetworks, hostRoutes: cfg.HostRoutes, serial: cfg.Serial, st: st,
		pools: map[string]*pool{}, byPrefix: subnet.NewIndex(), swept: map[netip.Addr]time.Time{}, started: time.Now(), cutShort: map[string]bool{}}
	for _, d := range append(slices.Clone(cfg.DefaultPools), cfg.DefaultPoolsV6...) {
		if err := d.validate(); err != nil {
			return nil, newErr(ErrInvalid, "default pool %s: %v", d.Base, err)
		}
		if d.Base.Addr().Is4() {
			a.v4Defaults = append(a.v4Defaults, d)
		} else {
			a.v6Defaults = append(a.v6Defaults, d)
		}
	}
	if st == nil {
		return a, nil
	}
	recs, err := store.LoadAll[pool](st, Bucket)
	if err != nil {
		return nil, newErr(ErrInvalid, "loading saved address pools: %v; the state file is damaged", err)
	}
	if err := a.install(recs); err != nil {
		return nil, err
	}
	return a, nil
}

// install checks and repairs loaded records before trusting them.
func (a *Allocator) install(recs map[string]*pool) error {
	for key, p := range recs {
		if p.Pending {
			// See pool.Pending: dockerd never learnt this pool's ID.
			if err := a.drop(key); err != nil {
				return err
			}
			log.WithFields(log.Fields{"pool": key}).Warn("ipam: released a pool that dockerd never used (the plugin stopped before answering it)")
			continue
		}
		if !p.Prefix.IsValid() || p.Prefix != p.Prefix.Masked() ||
			(p.Sub.IsValid() && !contains(p.Prefix, p.Sub)) {
			return newErr(ErrInvalid, "saved pool %q has an unusable subnet %q / ip-range %q; the state file is damaged", key, p.Prefix, p.Sub)
		}
		if p.pastGrace() {
			// See orphan.go: no ReleasePool for it can come any more.
			if err := a.drop(key); err != nil {
				return err
			}
			log.WithFields(log.Fields{"pool": key}).Info("ipam: released the pool of a network deleted before the plugin stopped, whose ReleasePool never came")
			continue
		}
		p.ID = key
		kept := p.Addrs[:0]
		slices.SortFunc(p.Addrs, func(x, y Allocation) int { return x.Addr.Compare(y.Addr) })
		for _, al := range p.Addrs {
			if !p.Prefix.Contains(al.Addr) || (len(kept) > 0 && kept[len(kept)-1].Addr == al.Addr) {
				log.WithFields(log.Fields{"pool": key, "addr": al.Addr}).Warn("ipam: dropping a saved address that is outside its pool or listed twice")
				continue
			}
			if al.pastGrace() {
				// See orphan.go: no ReleaseAddress for it can come any more.
				log.WithFields(log.Fields{"pool": key, "addr": al.Addr}).Info("ipam: released the address of an endpoint deleted before the plugin stopped, whose ReleaseAddress never came")
				continue
			}
			kept = append(kept, al)
		}
		p.Addrs = kept
		if q, ok := a.byPrefix.Overlap(p.Prefix); ok {
			log.WithFields(log.Fields{"pool": key, "other": q}).Warn("ipam: two saved pools overlap")
		}
		a.pools[key] = p
		a.byPrefix.Add(p.Prefix)
	}
	return nil
}

// save writes p before it replaces what memory holds; see the package doc.
func (a *Allocator) save(p *pool) error {
	if a.st == nil {
		return nil
	}
	if err := a.st.Update(func(tx *store.Tx) error { return tx.Put(Bucket, p.ID, p) }); err != nil {
		return notSaved(err)
	}
	delete(a.unsaved, p.ID) // written whole, with any release kept in memory
	return nil
}

func (a *Allocator) drop(id string) error {
	if a.st == nil {
		return nil
	}
	if err := a.st.UpdateReserved(func(tx *store.Tx) error { return tx.Delete(Bucket, id) }); err != nil {
		a.keepUnsaved(id, nil, err)
	}
	return nil
}

// saveRelease is save for a release: a release always takes effect (dockerd
// does not retry it, and a refused one leaks the address or the subnet), so
// on a disk too full even for the space reserved for deletes it is kept in
// memory and written by Flush. Called with a.mu held.
func (a *Allocator) saveRelease(p *pool) {
	if a.st == nil {
		return
	}
	if err := a.st.UpdateReserved(func(tx *store.Tx) error { return tx.Put(Bucket, p.ID, p) }); err != nil {
		a.keepUnsaved(p.ID, p, err)
	}
}

func (a *Allocator) keepUnsaved(id string, p *pool, err error) {
	log.WithError(err).WithField("pool", id).Error("ipam: cannot save a release; it takes effect now and is saved once the state file can be written")
	if a.unsaved == nil {
		a.unsaved = map[string]*pool{}
	}
	a.unsaved[id] = p
}

// Flush writes the releases a full disk kept in memory; the repair loop
// calls it.
func (a *Allocator) Flush() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for id := range a.unsaved {
		p := a.pools[id] // what memory holds now
		err := a.st.UpdateReserved(func(tx *store.Tx) error {
			if p == nil {
				return tx.Delete(Bucket, id)
			}
			return tx.Put(Bucket, id, p)
		})
		if err == nil {
			delete(a.unsaved, id)
			log.WithField("pool", id).Info("ipam: state file writable again: saved a release kept in memory")
		}
	}
}

// Unsaved counts releases not yet written to the state file.
func (a *Allocator) Unsaved() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.unsaved)
}

// Capabilities is the full GetCapabilities answer of the IPAM protocol;
// go-plugins-helpers' CapabilitiesResponse lacks RequiresRequestReplay.
type Capabilities struct {
	RequiresMACAddress    bool
	RequiresRequestReplay bool
}

// Capabilities says that ournet needs no MAC and no replay (it persists).
func (a *Allocator) Capabilities() Capabilities { return Capabilities{} }

// GetCapabilities implements ipam.Ipam; a missing RequiresRequestReplay
// field reads as false, which is what ournet wants.
func (a *Allocator) GetCapabilities() (*api.CapabilitiesResponse, error) {
	return &api.CapabilitiesResponse{RequiresMACAddress: a.Capabilities().RequiresMACAddress}, nil
}

// GetDefaultAddressSpaces implements ipam.Ipam.
func (a *Allocator) GetDefaultAddressSpaces() (*api.AddressSpacesResponse, error) {
	return &api.AddressSpacesResponse{LocalDefaultAddressSpace: LocalAddressSpace, GlobalDefaultAddressSpace: GlobalAddressSpace}, nil
}

// PoolInfo is a snapshot of one pool, for diagnostics.
type PoolInfo struct {
	ID           string
	AddressSpace string
	Pool         netip.Prefix
	SubPool      netip.Prefix // zero: no --ip-range
	V6           bool
	Gateway      netip.Addr   // zero: none requested yet
	Allocated    []Allocation // sorted by address, gateway included
}

// Pools returns a copy of every pool, sorted by ID.
func (a *Allocator) Pools() []PoolInfo {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]PoolInfo, 0, len(a.pools))
	for _, p := range a.pools {
		info := PoolInfo{ID: p.ID, AddressSpace: p.AddressSpace, Pool: p.Prefix, SubPool: p.Sub,
			V6: p.v6(), Allocated: slices.Clone(p.Addrs)}
		for _, al := range p.Addrs {
			if al.Kind == KindGateway {
				info.Gateway = al.Addr
				break
			}
		}
		out = append(out, info)
	}
	slices.SortFunc(out, func(x, y PoolInfo) int { return cmp.Compare(x.ID, y.ID) })
	return out
}

func contains(outer, inner netip.Prefix) bool {
	return inner.Bits() >= outer.Bits() && outer.Contains(inner.Addr())
}

func family(v6 bool) string {
	if v6 {
		return "IPv6"
	}
	return "IPv4"
}

func describe(p *pool) string {
	if p.Sub.IsValid() {
		return p.Prefix.String() + " (ip-range " + p.Sub.String() + ")"
	}
	return p.Prefix.String()
}

func poolID(space string, pfx, sub netip.Prefix) string {
	id := []string{space, pfx.String()}
	if sub.IsValid() {
		id = append(id, sub.String())
	}
	return strings.Join(id, "/")
}
