// Package netdev creates and removes ournet's bridges and veth pairs through
// netlink. Every Ensure* is idempotent (an existing, matching device is
// reused) and every Delete* treats a missing device as success.
package netdev

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// AliasPrefix marks a link as ournet's: its IFLA_IFALIAS is AliasPrefix + an ID.
// It is how ournet tells its own devices from everyone else's.
const AliasPrefix = "ournet:"

// MaxNameLen is the kernel's limit on interface names (IFNAMSIZ - 1).
const MaxNameLen = 15

// Manager owns one netlink handle in the namespace it was created in.
type Manager struct {
	h      *netlink.Handle
	routes routeSet // see WatchRoutes
}

// New opens a netlink handle in the current network namespace.
func New() (*Manager, error) {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("opening netlink: %w", err)
	}
	return &Manager{h: h}, nil
}

// Close releases the netlink handle.
func (m *Manager) Close() { m.h.Close() }

// Bridge describes one ournet bridge.
type Bridge struct {
	Name  string
	Owner string // network ID, stored in the alias
	MTU   int    // 0: kernel default
	MAC   net.HardwareAddr
	Addrs []netip.Prefix // gateway addresses, in the subnet's prefix length
	Group uint32         // the device group (0: the kernel's default)
}

// ErrNotOurs is returned when a device of the wanted name exists but is not
// a bridge that ournet created for this network.
var ErrNotOurs = errors.New("device exists and is not ournet's")

// EnsureBridge creates the bridge if needed, and makes its MTU, MAC,
// addresses and state match b.
func (m *Manager) EnsureBridge(b Bridge) error {
	if err := CheckName(b.Name); err != nil {
		return err
	}
	link, err := m.h.LinkByName(b.Name)
	mark := false
	switch {
	case isNotFound(err):
		attrs := netlink.NewLinkAttrs()
		attrs.Name = b.Name
		attrs.MTU = b.MTU
		attrs.HardwareAddr = b.MAC
		attrs.Group = b.Group
		if err := m.h.LinkAdd(&netlink.Bridge{LinkAttrs: attrs}); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("creating bridge %s: %w", b.Name, err)
		}
		if link, err = m.h.LinkByName(b.Name); err != nil {
			return fmt.Errorf("looking up new bridge %s: %w", b.Name, err)
		}
		mark = true // the kernel takes no alias at creation (but the group)
	case err != nil:
		return fmt.Errorf("looking up %s: %w", b.Name, err)
	case link.Type() == "bridge" && link.Attrs().Alias == "" && b.Group != 0 && link.Attrs().Group == b.Group:
		mark = true // made by a call cut between creating and marking it: ours
	case link.Type() != "bridge" || link.Attrs().Alias != AliasPrefix+b.Owner:
		return fmt.Errorf("%w: %s (type %s)", ErrNotOurs, b.Name, link.Type())
	}
	if mark {
		if err := m.h.LinkSetAlias(link, AliasPrefix+b.Owner); err != nil {
			return fmt.Errorf("marking bridge %s: %w", b.Name, err)
		}
	}
	if b.MTU != 0 && link.Attrs().MTU != b.MTU {
		if err := m.h.LinkSetMTU(link, b.MTU); err != nil {
			return fmt.Errorf("setting MTU %d on %s: %w", b.MTU, b.Name, err)
		}
	}
	if link.Attrs().Group != b.Group {
		if err := m.h.LinkSetGroup(link, int(b.Group)); err != nil {
			return fmt.Errorf("setting device group %d on %s: %w", b.Group, b.Name, err)
		}
	}
	if len(b.MAC) != 0 && link.Attrs().HardwareAddr.String() != b.MAC.String() {
		if err := m.h.LinkSetHardwareAddr(link, b.MAC); err != nil {
			return fmt.Errorf("setting MAC on %s: %w", b.Name, err)
		}
	}
	for _, p := range b.Addrs {
		addr := &netlink.Addr{IPNet: prefixToIPNet(p)}
		if p.Addr().Is6() {
			// The bridge's own address must work before DAD would finish.
			addr.Flags = unix.IFA_F_NODAD
		}
		if err := m.h.AddrReplace(link, addr); err != nil {
			return fmt.Errorf("adding %s to %s: %w", p, b.Name, err)
		}
	}
	if err := m.h.LinkSetUp(link); err != nil {
		return fmt.Errorf("bringing up %s: %w", b.Name, err)
	}
	return nil
}

// DeleteBridge removes the bridge if it is ournet's; a missing one is success.
func (m *Manager) DeleteBridge(name, owner string) error { return m.DeleteLink(name, owner) }

// DeleteLink removes any link ournet made for owner (the alias says so); a
// missing one is success, someone else's is ErrNotOurs.
func (m *Manager) DeleteLink(name, owner string) error {
	link, err := m.h.LinkByName(name)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("looking up %s: %w", name, err)
	}
	if id, unmarked := unmarkedOwner(link); link.Attrs().Alias != AliasPrefix+owner && !(unmarked && strings.HasPrefix(owner, id)) {
		return fmt.Errorf("%w: %s", ErrNotOurs, name)
	}
	if err := m.h.LinkDel(link); err != nil && !isNotFound(err) {
		return fmt.Errorf("deleting %s %s: %w", link.Type(), name, err)
	}
	return nil
}

// Veth describes one endpoint's veth pair.
type Veth struct {
	Host     string // stays in the host, attached to Bridge
	Peer     string // moved into the container by the engine
	Owner    string // endpoint ID, stored in the host end's alias
	Bridge   string
	MTU      int
	PeerMAC  net.HardwareAddr
	Isolated bool // bridge port isolation (no traffic to other isolated ports)
}

// EnsureVeth creates the pair if needed and attaches the host end to the
// bridge, up. The peer end is left down: the engine configures it.
func (m *Manager) EnsureVeth(v Veth) error {
	for _, n := range []string{v.Host, v.Peer} {
		if err := CheckName(n); err != nil {
			return err
		}
	}
	br, err := m.h.LinkByName(v.Bridge)
	if err != nil {
		return fmt.Errorf("looking up bridge %s: %w", v.Bridge, err)
	}
	host, err := m.h.LinkByName(v.Host)
	if isNotFound(err) {
		attrs := netlink.NewLinkAttrs()
		attrs.Name = v.Host
		attrs.MTU = v.MTU
		veth := &netlink.Veth{LinkAttrs: attrs, PeerName: v.Peer, PeerHardwareAddr: v.PeerMAC}
		if v.MTU > 0 {
			veth.PeerMTU = uint32(v.MTU)
		}
		if err := m.h.LinkAdd(veth); err != nil {
			return fmt.Errorf("creating veth %s/%s: %w", v.Host, v.Peer, err)
		}
		host, err = m.h.LinkByName(v.Host)
		if err != nil {
			return fmt.Errorf("looking up new veth %s: %w", v.Host, err)
		}
		if err := m.h.LinkSetAlias(host, AliasPrefix+v.Owner); err != nil {
			return fmt.Errorf("marking veth %s: %w", v.Host, err)
		}
	} else if err != nil {
		return fmt.Errorf("looking up %s: %w", v.Host, err)
	} else if unmarkedVeth(host) && strings.HasPrefix(v.Owner, v.Host[2:]) {
		// Made by a call cut between creating the pair and marking it
		// (the kernel takes no alias at creation): ours, marked now.
		if err := m.h.LinkSetAlias(host, AliasPrefix+v.Owner); err != nil {
			return fmt.Errorf("marking veth %s: %w", v.Host, err)
		}
	} else if host.Type() != "veth" || host.Attrs().Alias != AliasPrefix+v.Owner {
		return fmt.Errorf("%w: %s", ErrNotOurs, v.Host)
	}
	if host.Attrs().MasterIndex != br.Attrs().Index {
		if err := m.h.LinkSetMaster(host, br); err != nil {
			return fmt.Errorf("attaching %s to %s: %w", v.Host, v.Bridge, err)
		}
	}
	if err := m.h.LinkSetIsolated(host, v.Isolated); err != nil {
		return fmt.Errorf("setting port isolation on %s: %w", v.Host, err)
	}
	if err := m.h.LinkSetUp(host); err != nil {
		return fmt.Errorf("bringing up %s: %w", v.Host, err)
	}
	return nil
}

// DeleteVeth removes the pair through its host end; a missing one is success.
func (m *Manager) DeleteVeth(host, owner string) error { return m.DeleteLink(host, owner) }

// Exists reports whether a link of that name exists.
func (m *Manager) Exists(name string) (bool, error) {
	_, err := m.h.LinkByName(name)
	if isNotFound(err) {
		return false, nil
	}
	return err == nil, err
}

// Owned lists ournet's links (by alias) as name → owner ID.
func (m *Manager) Owned() (map[string]string, error) {
	links, err := m.linkList()
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, l := range links {
		if id, ok := strings.CutPrefix(l.Attrs().Alias, AliasPrefix); ok {
			out[l.Attrs().Name] = id
		} else if id, ok := unmarkedOwner(l); ok {
			out[l.Attrs().Name] = id // the ID's first characters
		}
	}
	return out, nil
}

// unmarkedOwner is the beginning of the owner's ID of a link ournet made
// whose marking was cut short (a crash between creating it and setting
// its alias): a link with no alias named as ournet names them, a veth's
// host end "ov" and 12 hex digits of an endpoint ID, a bridge "ournet-"
// and 8 of a network's. The names are specific enough to be nobody
// else's. (A bridge with a name of the user's is known by its group, in
// EnsureBridge.)
func unmarkedOwner(l netlink.Link) (string, bool) {
	if l.Attrs().Alias != "" {
		return "", false
	}
	for _, k := range []struct {
		kind, prefix string
		idLen        int
		grouped      bool // ournet makes its bridges in a device group
	}{{"veth", "ov", 12, false}, {"bridge", "ournet-", 8, true}} {
		id, ok := strings.CutPrefix(l.Attrs().Name, k.prefix)
		if ok && l.Type() == k.kind && len(id) == k.idLen && strings.Trim(id, "0123456789abcdef") == "" &&
			(!k.grouped || l.Attrs().Group != 0) {
			return id, true
		}
	}
	return "", false
}

// unmarkedVeth is unmarkedOwner's veth.
func unmarkedVeth(l netlink.Link) bool {
	_, ok := unmarkedOwner(l)
	return ok && l.Type() == "veth"
}

// linkList retries a dump that the kernel interrupted because links changed
// while it ran: the partial answer cannot be trusted.
func (m *Manager) linkList() ([]netlink.Link, error) {
	var err error
	for range 5 {
		var links []netlink.Link
		links, err = m.h.LinkList()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return links, err
		}
	}
	return nil, fmt.Errorf("listing links: %w", err)
}

// HostPrefixes lists the destinations of the main table's routes in this
// namespace (every address has one), for picking default pools that clash
// with nothing and refusing subnets that cover a host route. With
// WatchRoutes running it answers from the watched set, without a dump; the
// slice is then shared, and callers must not change it.
func (m *Manager) HostPrefixes() ([]netip.Prefix, error) {
	if out, ok := m.watchedPrefixes(); ok {
		return out, nil
	}
	routes, err := m.dumpRoutes()
	if err != nil {
		return nil, err
	}
	var out []netip.Prefix
	for _, r := range routes {
		if k, ok := keyOf(r); ok {
			out = append(out, k.dst)
		}
	}
	return out, nil
}

// dumpRoutes lists the main table's routes, both families.
func (m *Manager) dumpRoutes() ([]netlink.Route, error) {
	var routes []netlink.Route
	var err error
	for range 5 {
		routes, err = m.h.RouteList(nil, netlink.FAMILY_ALL)
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("listing routes: %w", err)
	}
	return routes, nil
}

// CheckName rejects names the kernel would refuse, with a message that says why.
func CheckName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("interface name is empty")
	case len(name) > MaxNameLen:
		return fmt.Errorf("interface name %q is %d characters long; Linux allows at most %d", name, len(name), MaxNameLen)
	case name == "." || name == ".." || strings.ContainsAny(name, "/: \t\n"):
		return fmt.Errorf("interface name %q is not valid: it may not be . or .. nor contain '/', ':' or spaces", name)
	}
	return nil
}

func isNotFound(err error) bool {
	var lnf netlink.LinkNotFoundError
	return errors.As(err, &lnf) || errors.Is(err, unix.ENODEV)
}

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func ipNetToPrefix(n *net.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones).Masked(), true
}

// Matters reports whether a link change may call for a repair: a bridge or
// VXLAN device (one of ournet's may have lost its alias), or one of
// ournet's own links. Other drivers' veths and the like are not looked at.
func Matters(u netlink.LinkUpdate) bool {
	l := u.Link
	if l == nil || l.Attrs() == nil {
		return false
	}
	switch l.Type() {
	case "bridge", "vxlan":
		return true
	}
	return strings.HasPrefix(l.Attrs().Alias, AliasPrefix) || unmarkedVeth(l)
}
