// Package overlay programs the data path of cluster networks (issue #13):
// one VXLAN device per network, attached to the network's bridge, with no
// multicast and no learning. What each remote endpoint is (its address,
// its MAC, the host it lives on) comes from the cluster store; overlay
// turns it into permanent kernel entries, as flannel and swarm's overlay
// do: a neighbour entry (IP -> MAC) on the VXLAN device, which answers the
// containers' ARP and neighbour solicitations on this host (the device runs
// with proxy on), and a forwarding entry (MAC -> the remote host's
// address). SetPeers makes the kernel match a list exactly, so a periodic
// comparison with the store removes stale entries.
package overlay

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Port is the IANA VXLAN port.
const Port = 4789

// Overhead is what VXLAN over IPv4 adds to every frame: outer IPv4 (20),
// UDP (8), VXLAN (8) and the inner Ethernet header (14); over IPv6 the outer
// header is 40, so 70 (OverheadFor).
const Overhead = 50

// OverheadFor is the encapsulation's cost over an underlay of local's family.
func OverheadFor(local netip.Addr) int {
	if local.Is6() {
		return 70
	}
	return Overhead
}

// Device is one cluster network's VXLAN device.
type Device struct {
	Name   string // e.g. ov-<vni>
	VNI    int
	Local  netip.Addr // this host's advertised underlay address
	Bridge string     // the network's bridge, which the device joins
	MTU    int        // the underlay's MTU minus Overhead
	Owner  string     // the network ID, in the device's alias
	// Isolated makes the device an isolated bridge port (icc=false): then
	// frames from remote containers reach no local container, only the
	// bridge (the gateway), as between local containers.
	Isolated bool
}

// Peer is one remote endpoint.
type Peer struct {
	Addr netip.Addr
	MAC  net.HardwareAddr
	VTEP netip.Addr // the host it lives on
}

// AliasPrefix marks ournet's devices (as internal/netdev does).
const AliasPrefix = "ournet:"

// Manager programs one network namespace's VXLAN devices.
type Manager struct{ h *netlink.Handle }

// New returns a Manager over h (a handle in the host's namespace).
func New(h *netlink.Handle) *Manager { return &Manager{h: h} }

// Ensure creates the device, or checks one that exists is ours and right,
// attaches it to the bridge and brings it up. Idempotent.
func (m *Manager) Ensure(d Device) error {
	br, err := m.h.LinkByName(d.Bridge)
	if err != nil {
		return fmt.Errorf("looking up bridge %s: %w", d.Bridge, err)
	}
	l, err := m.h.LinkByName(d.Name)
	if err == nil {
		v, ok := l.(*netlink.Vxlan)
		if !ok || l.Attrs().Alias != AliasPrefix+d.Owner || v.VxlanId != d.VNI || !v.SrcAddr.Equal(net.IP(d.Local.AsSlice())) {
			if l.Attrs().Alias != AliasPrefix+d.Owner {
				return fmt.Errorf("a device named %s exists and is not ournet's", d.Name)
			}
			// Ours but with other settings (the host's address changed):
			// made again.
			if err := m.h.LinkDel(l); err != nil {
				return fmt.Errorf("replacing %s: %w", d.Name, err)
			}
			l = nil
		}
	} else if !isNotFound(err) {
		return fmt.Errorf("looking up %s: %w", d.Name, err)
	} else {
		l = nil
	}
	if l == nil {
		attrs := netlink.NewLinkAttrs()
		attrs.Name = d.Name
		attrs.MTU = d.MTU
		v := &netlink.Vxlan{LinkAttrs: attrs, VxlanId: d.VNI, SrcAddr: net.IP(d.Local.AsSlice()), Port: Port,
			Learning: false, Proxy: true, L2miss: false, L3miss: false}
		if err := m.h.LinkAdd(v); err != nil {
			return fmt.Errorf("creating VXLAN device %s (VNI %d): %w", d.Name, d.VNI, err)
		}
		if l, err = m.h.LinkByName(d.Name); err != nil {
			return fmt.Errorf("looking up new %s: %w", d.Name, err)
		}
		if err := m.h.LinkSetAlias(l, AliasPrefix+d.Owner); err != nil {
			return fmt.Errorf("marking %s: %w", d.Name, err)
		}
	}
	if d.MTU > 0 && l.Attrs().MTU != d.MTU {
		if err := m.h.LinkSetMTU(l, d.MTU); err != nil {
			return fmt.Errorf("setting the MTU of %s: %w", d.Name, err)
		}
	}
	if l.Attrs().MasterIndex != br.Attrs().Index {
		if err := m.h.LinkSetMaster(l, br); err != nil {
			return fmt.Errorf("attaching %s to %s: %w", d.Name, d.Bridge, err)
		}
	}
	if err := m.h.LinkSetIsolated(l, d.Isolated); err != nil {
		return fmt.Errorf("setting port isolation on %s: %w", d.Name, err)
	}
	// The tunnel is one bridge port for every remote container: frames
	// between two remote containers never come back through it.
	if err := m.h.LinkSetUp(l); err != nil {
		return fmt.Errorf("bringing up %s: %w", d.Name, err)
	}
	return nil
}

// Delete removes the device if it is ours; a missing one is success.
func (m *Manager) Delete(name, owner string) error {
	l, err := m.h.LinkByName(name)
	if isNotFound(err) {
		return nil
	} else if err != nil {
		return err
	}
	if l.Attrs().Alias != AliasPrefix+owner {
		return fmt.Errorf("%s is not ournet's device for %s", name, owner)
	}
	return m.h.LinkDel(l)
}

// SetPeers makes the device's permanent neighbour and forwarding entries
// exactly peers: missing ones are added, stale ones (an endpoint gone, a
// host that moved) removed. It returns how many of each.
func (m *Manager) SetPeers(dev string, peers []Peer) (added, removed int, err error) {
	l, err := m.h.LinkByName(dev)
	if err != nil {
		return 0, 0, fmt.Errorf("looking up %s: %w", dev, err)
	}
	idx := l.Attrs().Index
	wantNeigh := map[netip.Addr]string{}
	wantFDB := map[string]netip.Addr{}
	for _, p := range peers {
		wantNeigh[p.Addr] = p.MAC.String()
		wantFDB[p.MAC.String()] = p.VTEP
	}
	// Neighbour entries: IP -> MAC on the device.
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		have, err := m.h.NeighList(idx, fam)
		if err != nil {
			return added, removed, fmt.Errorf("listing neighbours of %s: %w", dev, err)
		}
		for _, n := range have {
			a, ok := netip.AddrFromSlice(n.IP)
			if !ok || n.State&netlink.NUD_PERMANENT == 0 {
				continue
			}
			a = a.Unmap()
			if wantNeigh[a] == n.HardwareAddr.String() {
				delete(wantNeigh, a)
				continue
			}
			if err := m.h.NeighDel(&n); err != nil && !errors.Is(err, unix.ENOENT) {
				return added, removed, fmt.Errorf("removing neighbour %s from %s: %w", a, dev, err)
			}
			removed++
		}
	}
	for a, mac := range wantNeigh {
		hw, _ := net.ParseMAC(mac)
		fam := netlink.FAMILY_V4
		if a.Is6() {
			fam = netlink.FAMILY_V6
		}
		n := &netlink.Neigh{LinkIndex: idx, Family: fam, State: netlink.NUD_PERMANENT, IP: net.IP(a.AsSlice()), HardwareAddr: hw}
		if err := m.h.NeighSet(n); err != nil {
			return added, removed, fmt.Errorf("adding neighbour %s to %s: %w", a, dev, err)
		}
		added++
	}
	// Forwarding entries: MAC -> remote host, on the device itself.
	fdb, err := m.h.NeighList(idx, unix.AF_BRIDGE)
	if err != nil {
		return added, removed, fmt.Errorf("listing forwarding entries of %s: %w", dev, err)
	}
	for _, n := range fdb {
		if n.State&netlink.NUD_PERMANENT == 0 || n.IP == nil {
			continue
		}
		vtep, ok := netip.AddrFromSlice(n.IP)
		if !ok {
			continue
		}
		mac := n.HardwareAddr.String()
		if want, ok := wantFDB[mac]; ok && want == vtep.Unmap() {
			delete(wantFDB, mac)
			continue
		}
		if err := m.h.NeighDel(&n); err != nil && !errors.Is(err, unix.ENOENT) {
			return added, removed, fmt.Errorf("removing forwarding entry %s from %s: %w", mac, dev, err)
		}
		removed++
	}
	for mac, vtep := range wantFDB {
		hw, _ := net.ParseMAC(mac)
		n := &netlink.Neigh{LinkIndex: idx, Family: unix.AF_BRIDGE, State: netlink.NUD_PERMANENT, Flags: netlink.NTF_SELF,
			IP: net.IP(vtep.AsSlice()), HardwareAddr: hw}
		if err := m.h.NeighAppend(n); err != nil && !errors.Is(err, unix.EEXIST) {
			return added, removed, fmt.Errorf("adding forwarding entry %s -> %s to %s: %w", mac, vtep, dev, err)
		}
		added++
	}
	return added, removed, nil
}

func isNotFound(err error) bool {
	var lnf netlink.LinkNotFoundError
	return errors.As(err, &lnf) || errors.Is(err, unix.ENODEV)
}
