package netdev

import (
	"net/netip"
	"sync"
	"time"

	log "github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ournet/ournet/internal/subnet"
)

// routeSet keeps the host's main-table routes current from the kernel's
// route notifications, so that checking a new subnet against them costs
// the same with one network as with 500: a dump of the routes took 1.7 ms
// with 500 ournet bridges on them, and every network create made two.
//
// The kernel does not announce the IPv4 routes it removes with a device
// that goes down or away: such a change marks the set stale, and the next
// HostPrefixes dumps again (under the lock, so that the notifications
// queued meanwhile apply on top of the dump, in order).
type routeSet struct {
	mu    sync.Mutex
	live  bool // false: not (or no longer) watched, HostPrefixes dumps
	stale bool // a device with IPv4 routes went down or away
	dsts  map[routeKey]netip.Prefix
	// idx holds dsts' destinations (one per route), for HostRoutes' checks;
	// v4oif counts the IPv4 routes by device, for applyLink.
	idx   *subnet.Index
	v4oif map[int]int
	// prefixes is dsts' prefixes, each once, as HostPrefixes hands them
	// out; nil after a change (built again at the next ask).
	prefixes []netip.Prefix
	// down: devices that went down or away with no IPv4 route counted on
	// them. Routes and links come on two sockets, so a route's add can be
	// read after its device's removal: a route added on one marks the set
	// stale. At most maxDown (then cleared, and the set stale).
	down map[int]bool
}

const maxDown = 4096

func (s *routeSet) add(k routeKey) {
	if _, ok := s.dsts[k]; ok {
		return
	}
	s.dsts[k] = k.dst
	s.idx.Add(k.dst)
	if k.family == netlink.FAMILY_V4 {
		s.v4oif[k.oif]++
	}
	s.prefixes = nil
}

func (s *routeSet) remove(k routeKey) {
	if _, ok := s.dsts[k]; !ok {
		return
	}
	delete(s.dsts, k)
	s.idx.Remove(k.dst)
	if k.family == netlink.FAMILY_V4 {
		if s.v4oif[k.oif]--; s.v4oif[k.oif] <= 0 {
			delete(s.v4oif, k.oif)
		}
	}
	s.prefixes = nil
}

// routeKey tells routes apart as the kernel does, near enough: two routes
// to one destination (another device, another metric) are two.
type routeKey struct {
	dst                netip.Prefix
	table, oif, prio   int
	tos, family, scope int
}

func keyOf(r netlink.Route) (routeKey, bool) {
	if r.Dst == nil {
		return routeKey{}, false // the default route: overlaps everything, means nothing here
	}
	p, ok := ipNetToPrefix(r.Dst)
	if !ok {
		return routeKey{}, false
	}
	return routeKey{dst: p, table: r.Table, oif: r.LinkIndex, prio: r.Priority, tos: r.Tos, family: r.Family, scope: int(r.Scope)}, true
}

// WatchRoutes keeps the routes HostPrefixes answers with current until
// stop is closed. A subscription that fails (the socket's buffer overran)
// is made again, with a fresh dump; meanwhile HostPrefixes dumps.
func (m *Manager) WatchRoutes(stop <-chan struct{}) error {
	updates, links, err := m.subscribeRoutes(stop)
	if err != nil {
		return err
	}
	go func() {
		for {
			for updates != nil || links != nil {
				select {
				case u, ok := <-updates:
					if !ok {
						updates, links = nil, nil
						continue
					}
					m.applyRoute(u)
				case l, ok := <-links:
					if !ok {
						updates, links = nil, nil
						continue
					}
					m.applyLink(l)
				}
			}
			m.routes.mu.Lock()
			m.routes.live = false
			m.routes.mu.Unlock()
			for {
				select {
				case <-stop:
					return
				case <-time.After(time.Second):
				}
				if updates, links, err = m.subscribeRoutes(stop); err == nil {
					break
				}
				log.WithError(err).Warn("watching routes")
			}
		}
	}()
	return nil
}

// subscribeRoutes subscribes, then dumps: no change falls between the two,
// and a change the dump already shows is applied again harmlessly.
func (m *Manager) subscribeRoutes(stop <-chan struct{}) (chan netlink.RouteUpdate, chan netlink.LinkUpdate, error) {
	ch := make(chan netlink.RouteUpdate, 4096)
	lch := make(chan netlink.LinkUpdate, 4096)
	cb := func(err error) { log.WithError(err).Debug("route notifications") }
	if err := netlink.RouteSubscribeWithOptions(ch, stop, netlink.RouteSubscribeOptions{ReceiveBufferSize: 1 << 20, ErrorCallback: cb}); err != nil {
		return nil, nil, err
	}
	if err := netlink.LinkSubscribeWithOptions(lch, stop, netlink.LinkSubscribeOptions{ReceiveBufferSize: 1 << 20, ErrorCallback: cb}); err != nil {
		return nil, nil, err
	}
	m.routes.mu.Lock()
	defer m.routes.mu.Unlock()
	if err := m.redump(); err != nil {
		return nil, nil, err
	}
	m.routes.live = true
	return ch, lch, nil
}

// redump replaces the set with a dump. Called with m.routes.mu held.
func (m *Manager) redump() error {
	routes, err := m.dumpRoutes()
	if err != nil {
		return err
	}
	s := &m.routes
	s.dsts, s.idx, s.v4oif, s.stale = map[routeKey]netip.Prefix{}, subnet.NewIndex(), map[int]int{}, false
	for _, r := range routes {
		if k, ok := keyOf(r); ok {
			s.add(k)
		}
	}
	s.prefixes = nil
	return nil
}

// applyLink marks the set stale when a device that has IPv4 routes in it
// goes down or away (the kernel removes those routes unannounced), and
// otherwise remembers the device as down (see routeSet.down).
func (m *Manager) applyLink(u netlink.LinkUpdate) {
	if u.Link == nil || u.Link.Attrs() == nil {
		return
	}
	m.routes.mu.Lock()
	defer m.routes.mu.Unlock()
	s, idx := &m.routes, u.Link.Attrs().Index
	switch {
	case u.Header.Type != unix.RTM_DELLINK && u.IfInfomsg.Flags&unix.IFF_UP != 0:
		delete(s.down, idx) // up (again)
	case s.v4oif[idx] > 0:
		s.stale = true
	case len(s.down) >= maxDown:
		s.down, s.stale = nil, true
	default:
		if s.down == nil {
			s.down = map[int]bool{}
		}
		s.down[idx] = true
	}
}

func (m *Manager) applyRoute(u netlink.RouteUpdate) {
	if u.Table != unix.RT_TABLE_MAIN {
		return
	}
	k, ok := keyOf(u.Route)
	if !ok {
		return
	}
	m.routes.mu.Lock()
	defer m.routes.mu.Unlock()
	switch u.Type {
	case unix.RTM_NEWROUTE:
		m.routes.add(k)
		if m.routes.down[k.oif] {
			m.routes.stale = true // its device is gone (or down) already
		}
	case unix.RTM_DELROUTE:
		m.routes.remove(k)
	}
}

// watchedPrefixes is HostPrefixes from the watched set, if it is live.
func (m *Manager) watchedPrefixes() ([]netip.Prefix, bool) {
	m.routes.mu.Lock()
	defer m.routes.mu.Unlock()
	if !m.routes.live {
		return nil, false
	}
	if m.routes.stale && m.redump() != nil {
		return nil, false
	}
	if m.routes.prefixes == nil {
		m.routes.prefixes = m.routes.idx.All()
	}
	return m.routes.prefixes, true
}

// HostRoutes is the host's routes as Check asks them: answered from the
// watched set, in a binary search, while WatchRoutes runs; from a dump
// otherwise (a failed dump answers no route: it costs only the check).
func (m *Manager) HostRoutes() subnet.Routes { return hostRoutes{m} }

type hostRoutes struct{ m *Manager }

func (h hostRoutes) Inside(p netip.Prefix) (netip.Prefix, bool) {
	m := h.m
	m.routes.mu.Lock()
	if m.routes.live && (!m.routes.stale || m.redump() == nil) {
		defer m.routes.mu.Unlock()
		return m.routes.idx.Inside(p)
	}
	m.routes.mu.Unlock()
	all, err := m.HostPrefixes()
	if err != nil {
		log.WithError(err).Warn("listing the host's routes: subnet not checked against them")
		return netip.Prefix{}, false
	}
	return subnet.List(all).Inside(p)
}
