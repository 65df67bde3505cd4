// Package antispoof keeps containers from sending as someone else: on the
// bridge port of each endpoint it drops frames whose source MAC, IPv4 or
// IPv6 source, ARP sender or NDP target is not the endpoint's, and router
// advertisements, redirects and DHCP/DHCPv6 server replies.
//
// Layout, in the nftables bridge family, which sees every frame a bridge
// port receives, before it is forwarded or delivered to the host:
//
//	table bridge ournet {
//		map ports { type ifname : verdict }        # "ovXXXX" : jump ep-ovXXXX
//		chain prerouting {                         # hook prerouting, priority -350
//			iifname vmap @ports
//		}
//		chain ep-ovXXXX { ...checks, each a drop... }
//	}
//
// The map keeps the cost per frame constant however many endpoints there
// are: one hash lookup, then the sender's own checks. Frames from ports that
// are not ournet endpoints (docker0, other bridges) find no element and pass.
//
// Every change is one nftables transaction, so the kernel never holds half
// an endpoint's checks, and a failure leaves the previous rules in place.
//
// Cost. A transaction that deletes or flushes a chain, deletes an element or
// redeclares an existing chain waits for an RCU grace period in the kernel
// (about 13 ms measured here); one that only creates a chain, its rules and
// its element does not (under 1 ms). So Add, for a port the Filter knows has
// no chain yet and with a base it knows is intact, only creates; every other
// case (the first change, a repeated Add, anything after an error) rewrites
// the base and the chain whole. Del leaves its removal to a goroutine,
// which does every removal queued meanwhile in one transaction.
// nftables works whatever iptables backend the host uses and needs only
// CAP_NET_ADMIN.
package antispoof

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netns"

	"github.com/ournet/ournet/internal/nft"
	"golang.org/x/sys/unix"
)

// Names in the kernel.
const (
	TableName   = "ournet"
	BaseChain   = "prerouting"
	PortsMap    = "ports"
	ChainPrefix = "ep-"
)

// priority runs the checks before ebtables' nat (-300) and filter (-200)
// and br_netfilter (0), so they see frames as the container sent them.
const priority nftables.ChainPriority = -350

// Endpoint is what the checks of one bridge port need.
type Endpoint struct {
	Port string           // the host end of the endpoint's veth: the bridge port
	MAC  net.HardwareAddr // the container's MAC
	IPv4 netip.Addr       // zero: the endpoint has none and may send no IPv4
	IPv6 netip.Addr       // zero: it may send IPv6 from link-local and :: only
}

func (ep Endpoint) check() error {
	switch {
	case ep.Port == "" || len(ep.Port) >= unix.IFNAMSIZ:
		return fmt.Errorf("antispoof: port name %q is not an interface name", ep.Port)
	case len(ep.MAC) != 6:
		return fmt.Errorf("antispoof: port %s: MAC %q is not an Ethernet address", ep.Port, ep.MAC)
	case ep.IPv4.IsValid() && !ep.IPv4.Is4():
		return fmt.Errorf("antispoof: port %s: %s is not an IPv4 address", ep.Port, ep.IPv4)
	case ep.IPv6.IsValid() && (!ep.IPv6.Is6() || ep.IPv6.Is4In6()):
		return fmt.Errorf("antispoof: port %s: %s is not an IPv6 address", ep.Port, ep.IPv6)
	}
	return nil
}

// Conn is the nftables connection the filter uses (internal/nft).
type Conn = nft.Conn

// Filter programs the table. It is safe for concurrent use.
type Filter struct {
	mu   sync.Mutex
	dial func() (Conn, error)
	// known, when not nil, holds the ports that have a chain in the kernel,
	// each with what its checks were last written for (nil: not known), and
	// says that the table, map and base chain are as ensureBase makes them:
	// all as of this Filter's last change or check. nil: unknown.
	known map[string]*Endpoint

	// gone holds the ports Del queued, reaping whether a goroutine is on
	// its way to remove them (reap). pmu guards both; taken after mu when
	// both are, and alone by Del, which so never waits for a transaction.
	pmu     sync.Mutex
	gone    map[string]bool
	reaping bool
	hold    chan struct{} // tests: the reaper waits for it first,
	reaped  chan struct{} // and sends on this when done
}

// New returns a Filter for the network namespace it is called in, or for
// another one with nftables.WithNetNSFd. It holds on to that namespace:
// Del's goroutine may run on a thread in another one (a test's thread in
// its own namespace, say).
func New(opts ...nftables.ConnOption) *Filter {
	if len(opts) == 0 {
		if ns, err := netns.Get(); err == nil { // kept open for the Filter's life
			opts = append(opts, nftables.WithNetNSFd(int(ns)))
		}
	}
	return NewWith(nft.Dialer(opts...))
}

// NewWith returns a Filter that opens its connections with dial (a
// nft.Fake's Dial in tests).
func NewWith(dial func() (Conn, error)) *Filter { return &Filter{dial: dial} }

var table = &nftables.Table{Name: TableName, Family: nftables.TableFamilyBridge}

// portsMap has a fixed ID: it names the set inside a transaction, and the
// library's own allocator is a global counter that is not safe across
// connections.
func portsMap() *nftables.Set {
	return &nftables.Set{Table: table, Name: PortsMap, ID: 1, IsMap: true,
		KeyType: nftables.TypeIFName, DataType: nftables.TypeVerdict,
		// Interface names are strings, which nft prints in host order.
		KeyByteOrder: binaryutil.NativeEndian}
}

func chainOf(port string) *nftables.Chain {
	return &nftables.Chain{Name: ChainPrefix + port, Table: table}
}

// Add installs or rewrites the checks of ep's port. Checks this Filter
// wrote for the same endpoint are left alone, so repeating Add (Join after
// CreateEndpoint) costs nothing.
func (f *Filter) Add(ep Endpoint) error {
	if err := ep.check(); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pmu.Lock()
	delete(f.gone, ep.Port) // its checks are still there: the cases below judge them
	f.pmu.Unlock()
	if f.known != nil {
		switch cur, ok := f.known[ep.Port]; {
		case ok && cur != nil && cur.same(ep):
			return nil
		case !ok:
			err := f.send(func(c Conn) error {
				c.AddTable(table)
				return createEndpoint(c, ep)
			})
			if err == nil {
				f.known[ep.Port] = &ep
				return nil
			}
			f.known = nil // the kernel is not as thought: rewrite it whole
		}
	}
	if err := f.apply("adding checks for "+ep.Port, func(c Conn) error {
		return addEndpoint(c, ep)
	}); err != nil {
		return err
	}
	if f.known != nil {
		f.known[ep.Port] = &ep
	}
	return nil
}

func (ep Endpoint) same(o Endpoint) bool {
	return ep.Port == o.Port && bytes.Equal(ep.MAC, o.MAC) && ep.IPv4 == o.IPv4 && ep.IPv6 == o.IPv6
}

// Del removes the checks of a port; a port without any is success. It
// only queues the removal: a goroutine does it, in one transaction with
// the others queued meanwhile. A deletion waits for an RCU grace period
// in the kernel, which removing a container need not wait for and which
// parallel removals then share. Call it once the port is gone: its checks
// outlive it, never the reverse. An Add of a queued port cancels its
// removal; Ports first does what is queued, and Sync and Teardown do it
// as part of their work. A removal that fails stays queued: the next
// Settle retries it and reports why, the next Ports retries it and lists
// the port while it keeps its checks.
func (f *Filter) Del(port string) error {
	if err := (Endpoint{Port: port, MAC: make(net.HardwareAddr, 6)}).check(); err != nil {
		return err
	}
	f.pmu.Lock()
	defer f.pmu.Unlock()
	f.queue(port)
	if !f.reaping {
		f.reaping = true
		go f.reap(f.hold, f.reaped)
	}
	return nil
}

func (f *Filter) reap(hold, reaped chan struct{}) {
	if hold != nil {
		<-hold
	}
	f.mu.Lock()
	_ = f.settle() // what failed stays queued for the next call
	f.mu.Unlock()
	if reaped != nil {
		reaped <- struct{}{}
	}
}

// Settle removes the checks Del queued, and says why it could not.
func (f *Filter) Settle() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.settle()
}

// queue adds ports to the queue. Called with f.pmu held.
func (f *Filter) queue(ports ...string) {
	if f.gone == nil {
		f.gone = map[string]bool{}
	}
	for _, p := range ports {
		f.gone[p] = true
	}
}

// takeGone empties the queue and returns it, sorted.
func (f *Filter) takeGone() []string {
	f.pmu.Lock()
	defer f.pmu.Unlock()
	ports := slices.Sorted(maps.Keys(f.gone))
	f.gone, f.reaping = nil, false
	return ports
}

// settle removes the queued ports' checks, syncChunk per transaction.
// Called with f.mu held.
func (f *Filter) settle() error {
	ports := f.takeGone()
	for i := 0; i < len(ports); i += syncChunk {
		chunk := ports[i:min(i+syncChunk, len(ports))]
		if err := f.apply("removing checks for "+strings.Join(chunk, ", "), func(c Conn) error {
			for _, p := range chunk {
				if err := delEndpoint(c, p); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			f.pmu.Lock()
			f.queue(ports[i:]...) // no reaper: the next Settle or Ports
			f.pmu.Unlock()
			return err
		}
		for _, p := range chunk {
			delete(f.known, p) // a no-op on nil
		}
	}
	return nil
}

// syncChunk bounds one transaction of Sync: a batch and the kernel's
// acknowledgements of it must fit the netlink socket's buffers (about 16
// messages per endpoint).
const syncChunk = 32

// Sync makes the table hold exactly the checks of eps: it rewrites theirs
// and removes those of every other port but keep's, which stay as they are
// (where the table is rebuilt, they go too). Each transaction rewrites
// whole endpoints, so a port that keeps its checks never goes without them.
func (f *Filter) Sync(eps []Endpoint, keep ...string) error {
	for _, ep := range eps {
		if err := ep.check(); err != nil {
			return err
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.takeGone() // every port not in eps goes below
	have, _, _, err := f.ports()
	if err != nil {
		return err
	}
	f.known = nil
	if err := f.apply("checking the table", func(Conn) error { return nil }); err != nil {
		// The table is not as this version makes it (a base chain with
		// another hook, a map of another type): rebuild it from nothing.
		if err := f.rebuild(); err != nil {
			return err
		}
	}
	want := map[string]*Endpoint{}
	for i := 0; i < len(eps); i += syncChunk {
		chunk := eps[i:min(i+syncChunk, len(eps))]
		for _, ep := range chunk {
			want[ep.Port] = &ep
		}
		if err := f.apply(fmt.Sprintf("syncing checks for %d ports", len(chunk)), func(c Conn) error {
			for _, ep := range chunk {
				if err := addEndpoint(c, ep); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			return err
		}
	}
	var stale []string
	for _, p := range have {
		if _, ok := want[p]; !ok && !slices.Contains(keep, p) {
			stale = append(stale, p)
		}
	}
	for i := 0; i < len(stale); i += syncChunk {
		chunk := stale[i:min(i+syncChunk, len(stale))]
		if err := f.apply(fmt.Sprintf("removing checks of %d stale ports", len(chunk)), func(c Conn) error {
			for _, p := range chunk {
				if err := delEndpoint(c, p); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			return err
		}
	}
	f.known = want
	return nil
}

// rebuild deletes the table, whatever it holds, and makes an empty one.
func (f *Filter) rebuild() error {
	c, err := f.dial()
	if err != nil {
		return fmt.Errorf("antispoof: opening nftables: %w", err)
	}
	// Adding the table first makes deleting it valid when it is absent.
	c.AddTable(table)
	c.DelTable(table)
	if err := ensureBase(c); err != nil {
		return fmt.Errorf("antispoof: rebuilding table %s: %w", TableName, err)
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("antispoof: rebuilding table %s: %w", TableName, err)
	}
	return nil
}

// Ports lists the ports whose checks are in force, sorted: those that have
// a chain or a map element, or none at all when the base chain that leads
// to them is missing or altered. altered says that the table is there in
// such a shape, where Add can fail until Sync rebuilds it. It first does
// the removals Del queued; a port whose removal fails keeps its checks and
// stays queued and listed, so that the repair loop, seeing it, calls Sync,
// which removes it or rebuilds the table. For the repair loop, tests and
// troubleshooting.
func (f *Filter) Ports() (ports []string, altered bool, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	_ = f.settle() // what failed shows below
	have, intact, present, err := f.ports()
	if err != nil {
		return nil, false, err
	}
	if !intact {
		return nil, present, nil
	}
	return have, false, nil
}

// ports lists the ports that have a chain or a map element, whether the
// base chain holds its one rule, and whether the table exists; it records
// what it saw in f.known (nil when the base is altered, so that the next
// Add rewrites it).
func (f *Filter) ports() (have []string, intact, present bool, err error) {
	defer func() {
		if !intact {
			f.known = nil
		}
	}()
	c, err := f.dial()
	if err != nil {
		return nil, false, false, fmt.Errorf("antispoof: opening nftables: %w", err)
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyBridge)
	if err != nil {
		return nil, false, false, fmt.Errorf("antispoof: listing chains: %w", err)
	}
	seen := map[string]bool{}
	hasTable, hasBase := false, false
	for _, ch := range chains {
		if ch.Table.Name != TableName {
			continue
		}
		hasTable = true
		if ch.Name == BaseChain {
			hasBase = ch.Hooknum != nil && *ch.Hooknum == *nftables.ChainHookPrerouting
		}
		if p, ok := strings.CutPrefix(ch.Name, ChainPrefix); ok {
			seen[p] = true
		}
	}
	if hasTable {
		elems, err := c.GetSetElements(portsMap())
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, false, false, fmt.Errorf("antispoof: listing map %s: %w", PortsMap, err)
		}
		for _, e := range elems {
			seen[strings.TrimRight(string(e.Key), "\x00")] = true
		}
	}
	if hasBase {
		rules, err := c.GetRules(table, &nftables.Chain{Name: BaseChain, Table: table})
		if err != nil {
			return nil, false, false, fmt.Errorf("antispoof: listing chain %s: %w", BaseChain, err)
		}
		intact = len(rules) == 1
	}
	out := make([]string, 0, len(seen))
	for p := range seen {
		out = append(out, p)
	}
	sort.Strings(out)
	if intact {
		known := map[string]*Endpoint{}
		for p := range seen {
			known[p] = f.known[p] // what was written, if this Filter knows
		}
		f.known = known
	}
	return out, intact, hasTable, nil
}

// apply sends the base objects and fill's messages as one transaction.
// Called with f.mu held.
func (f *Filter) apply(what string, fill func(Conn) error) error {
	err := f.send(func(c Conn) error {
		if err := ensureBase(c); err != nil {
			return err
		}
		return fill(c)
	})
	if err != nil {
		f.known = nil
		return fmt.Errorf("antispoof: %s: %w", what, err)
	}
	return nil
}

// send runs fill on a new connection and sends what it queued as one
// transaction.
func (f *Filter) send(fill func(Conn) error) error {
	c, err := f.dial()
	if err != nil {
		return fmt.Errorf("opening nftables: %w", err)
	}
	if err := fill(c); err != nil {
		return err
	}
	return c.Flush()
}

// ensureBase queues the table, the map and the base chain, creating what is
// missing, and rewrites the base chain's one rule so it is never doubled.
func ensureBase(c Conn) error {
	c.AddTable(table)
	m := portsMap()
	if err := c.AddSet(m, nil); err != nil {
		return err
	}
	accept := nftables.ChainPolicyAccept
	base := c.AddChain(&nftables.Chain{
		Name: BaseChain, Table: table, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRef(priority),
		Policy: &accept,
	})
	c.FlushChain(base)
	c.AddRule(&nftables.Rule{Table: table, Chain: base, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: reg1},
		&expr.Lookup{SourceRegister: reg1, DestRegister: 0, IsDestRegSet: true, SetName: m.Name, SetID: m.ID},
	}})
	return nil
}

// addEndpoint queues ep's chain, rewritten whole, and its map element.
func addEndpoint(c Conn, ep Endpoint) error {
	ch := c.AddChain(chainOf(ep.Port))
	c.FlushChain(ch)
	return fillEndpoint(c, ch, ep)
}

// createEndpoint queues ep's chain, which must not exist yet, and its map
// element.
func createEndpoint(c Conn, ep Endpoint) error {
	return fillEndpoint(c, c.AddChain(chainOf(ep.Port)), ep)
}

func fillEndpoint(c Conn, ch *nftables.Chain, ep Endpoint) error {
	for _, exprs := range endpointRules(ep) {
		c.AddRule(&nftables.Rule{Table: table, Chain: ch, Exprs: exprs})
	}
	return c.SetAddElements(portsMap(), []nftables.SetElement{{Key: nft.IfName(ep.Port),
		VerdictData: &expr.Verdict{Kind: expr.VerdictJump, Chain: ch.Name}}})
}

// delEndpoint queues the removal of port's element and chain. It creates
// them first, in the same transaction: deleting something absent would
// fail the whole batch, and this way an unknown port is success.
func delEndpoint(c Conn, port string) error {
	m, ch := portsMap(), c.AddChain(chainOf(port))
	elem := []nftables.SetElement{{Key: nft.IfName(port),
		VerdictData: &expr.Verdict{Kind: expr.VerdictJump, Chain: ch.Name}}}
	if err := c.SetAddElements(m, elem); err != nil {
		return err
	}
	// The element refers to the chain: it goes first.
	if err := c.SetDeleteElements(m, []nftables.SetElement{{Key: nft.IfName(port)}}); err != nil {
		return err
	}
	c.FlushChain(ch)
	c.DelChain(ch)
	return nil
}
