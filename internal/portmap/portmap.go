// Package portmap publishes container ports on the host without a userland
// proxy: for each endpoint it holds every host port with a bound socket
// (which is how a port already taken on the host is found and refused) and
// DNATs it to the container with iptables rules installed atomically by
// iptables-restore. See rules.go for the chains and why they look as they do.
package portmap

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
	"sync"

	log "github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"

	"github.com/ournet/ournet/internal/iptables"
	"github.com/ournet/ournet/internal/sysctl"
)

// Runner runs iptables-save and iptables-restore --noflush: the one
// iptables layer's.
type Runner = iptables.Runner

// Config is what a Mapper works with; nil functions get the real ones.
type Config struct {
	Runner   Runner
	Families []iptables.Family
	Reserve  ReserveFunc                                // default ReserveSocket
	Sysctl   func(key, value string) error              // default sysctl.Set
	Hairpin  func(link string) error                    // default: netlink
	Range    func() (first, last uint16)                // default EphemeralRange
	Forget   func(ms []Mapping, toContainer bool) error // default: conntrack over netlink
}

// Mapper publishes the ports of endpoints. It is safe for concurrent use.
type Mapper struct {
	cfg  Config
	mu   sync.Mutex
	eps  map[string]*published
	next map[Proto]uint16 // where the next search in the ephemeral range starts
}

// published is what the mapper holds for one endpoint.
type published struct {
	ep       Endpoint
	req      []Binding
	mappings []Mapping
	held     []io.Closer
}

// New returns a Mapper; call Setup once before use.
func New(cfg Config) *Mapper {
	if cfg.Reserve == nil {
		cfg.Reserve = ReserveSocket
	}
	if cfg.Sysctl == nil {
		cfg.Sysctl = sysctl.Set
	}
	if cfg.Hairpin == nil {
		cfg.Hairpin = setHairpin
	}
	if cfg.Range == nil {
		cfg.Range = EphemeralRange
	}
	if cfg.Forget == nil {
		cfg.Forget = forgetFlows
	}
	return &Mapper{cfg: cfg, eps: map[string]*published{}, next: map[Proto]uint16{}}
}

// setHairpin lets a container reach its own published ports through the
// host's address: with br_netfilter, the DNATed packet is bridged back out
// of the port it came in on, which the bridge allows only in hairpin mode.
func setHairpin(link string) error {
	l, err := netlink.LinkByName(link)
	if err != nil {
		return fmt.Errorf("looking up %s: %w", link, err)
	}
	if err := netlink.LinkSetHairpin(l, true); err != nil {
		return fmt.Errorf("setting hairpin mode on %s: %w", link, err)
	}
	return nil
}

func (m *Mapper) save(f iptables.Family, tables ...string) (iptables.Tables, error) {
	return iptables.Read(m.cfg.Runner, f, tables...)
}

// Setup creates the base chains, the localhost guard and their jumps where
// missing; safe to call at any time.
func (m *Mapper) Setup() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, f := range m.cfg.Families {
		if _, err := m.ensureBase(f); err != nil {
			return err
		}
	}
	return nil
}

// ensureBase makes the base rules of f whole and returns the nat table as it
// was read, for the caller's endpoint scripts.
func (m *Mapper) ensureBase(f iptables.Family) (iptables.Tables, error) {
	s, err := m.save(f, "raw", "nat")
	if err != nil {
		return nil, err
	}
	if script := BaseScript(f, s); script != "" {
		if err := m.cfg.Runner.Restore(f, script); err != nil {
			return nil, fmt.Errorf("%s: installing base chains: %w", f, err)
		}
		if s, err = m.save(f, "nat"); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// Map publishes req for ep: it picks and reserves every host port, then
// installs the rules. A new publication is all or nothing: on error no
// port of ep stays reserved and no rule of ep remains. Mapping an
// endpoint again with the same request keeps its ports and repairs its
// rules; if that repair fails, the publication stays as it was (returned
// with the error), for the endpoint's removal or the repair round. With
// another request, the old publication is replaced.
func (m *Mapper) Map(ep Endpoint, req []Binding) ([]Mapping, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if cur, ok := m.eps[ep.ID]; ok {
		if cur.ep == ep && sameRequest(cur.req, req) {
			return cur.mappings, m.install(ep, cur.mappings)
		}
		if err := m.unmap(ep.ID); err != nil {
			return nil, err
		}
	}
	if len(req) == 0 {
		return nil, nil
	}
	wants, err := resolve(ep, req)
	if err != nil {
		return nil, err
	}
	p := &published{ep: ep, req: req}
	for _, w := range wants {
		p.mappings = append(p.mappings, w.directMappings(ep)...)
		if len(w.hostIPs) == 0 {
			continue
		}
		ms, held, err := m.reserve(ep, w)
		if err != nil {
			closeAll(p.held)
			return nil, err
		}
		p.mappings = append(p.mappings, ms...)
		p.held = append(p.held, held...)
	}
	if err := m.install(ep, p.mappings); err != nil {
		closeAll(p.held)
		m.removeRules(ep.ID)
		return nil, err
	}
	m.eps[ep.ID] = p
	m.forget(p.mappings, false)
	return p.mappings, nil
}

// Restore takes back an endpoint published before a restart: the host
// ports it had, its rules. A port someone else took meanwhile is reported
// but its rule is installed all the same: the container is running and its
// mappings are what its users know. The endpoint is kept whatever fails.
func (m *Mapper) Restore(ep Endpoint, req []Binding, ms []Mapping) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.eps[ep.ID]; ok {
		if err := m.unmap(ep.ID); err != nil {
			return err
		}
	}
	p := &published{ep: ep, req: req, mappings: ms}
	var errs []error
	for _, mp := range ms {
		if mp.Direct() {
			continue
		}
		c, err := m.cfg.Reserve(mp.Proto, netip.AddrPortFrom(mp.HostIP, mp.HostPort))
		if err != nil {
			errs = append(errs, inUse(mp.Proto, mp.HostIP, mp.HostPort, err))
			continue
		}
		p.held = append(p.held, c)
	}
	// Kept even if the install fails: Reconcile retries it, and Unmap
	// removes whatever part of it got in.
	m.eps[ep.ID] = p
	if err := m.install(ep, ms); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Unmap removes the endpoint's rules and releases its ports. An endpoint
// without any is fine, and costs nothing: rules of endpoints the mapper
// does not know were removed by Prune at start (Map and Restore are the
// only ways in).
func (m *Mapper) Unmap(id string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.unmap(id)
}

func (m *Mapper) unmap(id string) error {
	p, ok := m.eps[id]
	if !ok {
		return nil
	}
	if err := m.removeRules(id); err != nil {
		return err
	}
	closeAll(p.held)
	delete(m.eps, id)
	m.forget(p.mappings, true)
	return nil
}

func (m *Mapper) removeRules(id string) error {
	var errs []error
	for _, f := range m.cfg.Families {
		s, err := m.save(f, "nat")
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if script := DelScript(id, s); script != "" {
			if err := m.cfg.Runner.Restore(f, script); err != nil {
				errs = append(errs, fmt.Errorf("%s: removing published ports of endpoint %s: %w", f, iptables.Short(id), err))
			}
		}
	}
	return errors.Join(errs...)
}

// Prune removes the rules of endpoints other than keep's (left by a crash
// between installing them and saving the endpoint, or by an endpoint whose
// container went away while the plugin was down), and forgets them.
func (m *Mapper) Prune(keep []string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	short12 := map[string]bool{}
	for _, id := range keep {
		short12[iptables.Short(id)] = true
	}
	for id := range m.eps {
		if !short12[iptables.Short(id)] {
			if err := m.unmap(id); err != nil {
				return err
			}
		}
	}
	var errs []error
	for _, f := range m.cfg.Families {
		s, err := m.save(f, "nat")
		if err != nil {
			return err
		}
		for _, id := range endpointIDs(s) {
			if short12[id] {
				continue
			}
			if err := m.cfg.Runner.Restore(f, DelScript(id, s)); err != nil {
				errs = append(errs, fmt.Errorf("%s: removing orphan published ports %s: %w", f, id, err))
			}
		}
	}
	return errors.Join(errs...)
}

// Reconcile puts back base rules and endpoint rules that someone removed or
// changed (a firewall reload, a hand edit). It returns the IDs it repaired.
func (m *Mapper) Reconcile() ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var repaired []string
	for _, f := range m.cfg.Families {
		s, err := m.ensureBase(f)
		if err != nil {
			return repaired, err
		}
		for id, p := range m.eps {
			if installed(f, id, p.mappings, s) {
				continue
			}
			if err := m.cfg.Runner.Restore(f, AddScript(f, id, p.mappings, s)); err != nil {
				return repaired, fmt.Errorf("%s: restoring published ports of endpoint %s: %w", f, iptables.Short(id), err)
			}
			if !slices.Contains(repaired, id) {
				repaired = append(repaired, id)
			}
		}
	}
	var errs []error
	for _, p := range m.eps {
		err := m.kernelSettings(p.ep, p.mappings)
		// A port that is gone belongs to a container that is gone: its
		// DeleteEndpoint is on the way.
		if nf := (netlink.LinkNotFoundError{}); err != nil && !errors.As(err, &nf) {
			errs = append(errs, fmt.Errorf("endpoint %s: %w", iptables.Short(p.ep.ID), err))
		}
	}
	return repaired, errors.Join(errs...)
}

// install writes the endpoint's rules for every family and the kernel
// settings they need.
func (m *Mapper) install(ep Endpoint, ms []Mapping) error {
	for _, f := range m.cfg.Families {
		s, err := m.ensureBase(f)
		if err != nil {
			return err
		}
		if err := m.cfg.Runner.Restore(f, AddScript(f, ep.ID, ms, s)); err != nil {
			return fmt.Errorf("%s: installing published ports of endpoint %s: %w", f, iptables.Short(ep.ID), err)
		}
	}
	return m.kernelSettings(ep, ms)
}

// kernelSettings turns on what the rules need: route_localnet on the bridge
// for connections from the host's loopback, hairpin mode on the bridge
// port. Both are lost when drift repair recreates the bridge or reattaches
// the port, so Reconcile applies them again.
func (m *Mapper) kernelSettings(ep Endpoint, ms []Mapping) error {
	if !slices.ContainsFunc(ms, func(mp Mapping) bool { return !mp.Direct() }) {
		return nil
	}
	if slices.ContainsFunc(ms, func(mp Mapping) bool { return mp.Is4() && !mp.Direct() && (mp.HostIP.IsUnspecified() || mp.loopback()) }) {
		// Never turned off again: other endpoints of the bridge may need
		// it, and the guard makes it harmless.
		if err := m.cfg.Sysctl("ipv4/conf/"+ep.Bridge+"/route_localnet", "1"); err != nil {
			return fmt.Errorf("letting the host reach published ports through 127.0.0.1: %w", err)
		}
	}
	if err := m.cfg.Hairpin(ep.HostVeth); err != nil {
		return err
	}
	return nil
}

// forget drops conntrack entries that would send traffic past the new rules
// (UDP and SCTP flows to the host port recorded before it was published) or
// to a container that no longer has the port. TCP entries die with their
// connections. Best effort: a failure only delays the change until the
// entries time out.
func (m *Mapper) forget(ms []Mapping, toContainer bool) {
	var flows []Mapping
	for _, mp := range ms {
		if mp.Proto != TCP && !mp.Direct() {
			flows = append(flows, mp)
		}
	}
	if len(flows) == 0 {
		return
	}
	if err := m.cfg.Forget(flows, toContainer); err != nil {
		log.WithError(err).Debug("clearing conntrack entries")
	}
}

// sameRequest compares port maps as sets: engine 26 lists the same
// bindings in another order in ProgramExternalConnectivity than in
// CreateEndpoint.
func sameRequest(a, b []Binding) bool {
	if len(a) != len(b) {
		return false
	}
	key := func(x Binding) string { return x.String() }
	sa, sb := slices.Clone(a), slices.Clone(b)
	slices.SortFunc(sa, func(x, y Binding) int { return strings.Compare(key(x), key(y)) })
	slices.SortFunc(sb, func(x, y Binding) int { return strings.Compare(key(x), key(y)) })
	return slices.Equal(sa, sb)
}

func closeAll(cs []io.Closer) {
	for _, c := range cs {
		_ = c.Close()
	}
}

// Mappings returns what is published for the endpoint now.
func (m *Mapper) Mappings(id string) []Mapping {
	m.mu.Lock()
	defer m.mu.Unlock()
	if p, ok := m.eps[id]; ok {
		return slices.Clone(p.mappings)
	}
	return nil
}

// Close releases every reserved port and keeps the rules: the process is
// going away, the containers keep running, and the next start restores.
func (m *Mapper) Close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for id, p := range m.eps {
		closeAll(p.held)
		delete(m.eps, id)
	}
}
