package overlay

// The fast path: IPv4 frames between this host's containers and remote
// ones skip the network's bridge. On a bridge in the host's namespace,
// every frame crosses br_netfilter (dockerd turns bridge-nf-call-iptables
// on, and the setting is the namespace's, OR'd with each bridge's own), so
// each inner packet walks the host's iptables and nftables chains; swarm's
// overlay keeps its bridge in a namespace of its own and pays none of it.
// The fast path is tc, at ingress, with u32 and mirred (in every kernel
// Docker runs on):
//
//	on the VXLAN device:  a frame for a local endpoint's MAC goes out of
//	                      that endpoint's veth, to the container;
//	on an endpoint's veth: a frame from the endpoint's own MAC and IPv4
//	                      address, with no IP options, to a remote
//	                      endpoint's MAC goes out of the VXLAN device.
//
// Everything else (ARP, IPv6, broadcast, frames for the gateway or another
// local container, and any frame whose source is not the endpoint's own)
// takes the bridge as before, with every check there: what the fast path
// forwards is exactly what anti-spoofing lets through, and a DHCP server
// reply (UDP from port 67) is passed to the bridge, where anti-spoofing
// drops it. The driver uses it only where the bridge would forward such a
// frame anyway (icc on); icc=false keeps every frame on the bridge's
// isolated ports.

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sort"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// Local is one of this host's endpoints of the network.
type Local struct {
	Veth string // its host end, a port of the network's bridge
	MAC  net.HardwareAddr
	IPv4 netip.Addr
}

// Filter priorities on the ingress hook: the frames that must take the
// bridge first, then the redirects.
const (
	prioPass     = 1
	prioRedirect = 2
)

// SetFastPath makes the fast path of dev (a network's VXLAN device)
// exactly locals and remotes (the remote endpoints' MACs): the filters of
// dev and of each port of its bridge are added or removed to match, and a
// device left with none loses its clsact qdisc. A local whose veth is not
// there (being made or deleted) is skipped. Idempotent; nil locals remove
// the whole fast path.
func (m *Manager) SetFastPath(dev string, locals []Local, remotes []net.HardwareAddr) error {
	vx, err := m.h.LinkByName(dev)
	if err != nil {
		return fmt.Errorf("looking up %s: %w", dev, err)
	}
	in := []*netlink.U32{macTable(), macLink()} // on dev: to each local endpoint
	var first error
	type port struct {
		link  netlink.Link
		local Local
	}
	var ports []port
	for _, l := range locals {
		link, err := m.h.LinkByName(l.Veth)
		if isNotFound(err) || len(l.MAC) != 6 || !l.IPv4.Is4() {
			continue
		} else if err != nil {
			first = cmpErr(first, fmt.Errorf("looking up %s: %w", l.Veth, err))
			continue
		}
		ports = append(ports, port{link, l})
		in = append(in, inBucket(l.MAC, redirect(keysDstMAC(l.MAC), link.Attrs().Index)))
	}
	if len(remotes) == 0 || len(ports) == 0 {
		in = nil // nothing can come for them from there
	}
	if err := m.setIngress(vx, in); err != nil {
		first = cmpErr(first, err)
	}
	// The bridge's other ports (endpoints gone from locals) have none.
	if master := vx.Attrs().MasterIndex; master != 0 {
		links, err := m.h.LinkList()
		if err != nil {
			first = cmpErr(first, fmt.Errorf("listing links: %w", err))
		}
		kept := map[int]bool{vx.Attrs().Index: true}
		for _, p := range ports {
			kept[p.link.Attrs().Index] = true
		}
		for _, l := range links {
			if l.Attrs().MasterIndex == master && !kept[l.Attrs().Index] {
				if err := m.setIngress(l, nil); err != nil {
					first = cmpErr(first, err)
				}
			}
		}
	}
	for _, p := range ports {
		var out []*netlink.U32
		if len(remotes) > 0 {
			out = append(out, pass(keysDHCPServer()), macTable(), macLink())
			for _, r := range remotes {
				if len(r) != 6 {
					continue
				}
				out = append(out, inBucket(r, redirect(append(append(keysDstMAC(r), keysSrcMAC(p.local.MAC)...), keysIPv4(p.local.IPv4)...), vx.Attrs().Index)))
			}
		}
		if err := m.setIngress(p.link, out); err != nil {
			first = cmpErr(first, err)
		}
	}
	return first
}

// setIngress makes link's ingress filters exactly want (with a clsact
// qdisc), or removes its clsact qdisc if want is empty.
func (m *Manager) setIngress(link netlink.Link, want []*netlink.U32) error {
	name, idx := link.Attrs().Name, link.Attrs().Index
	clsact := &netlink.GenericQdisc{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: idx, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT}, QdiscType: "clsact"}
	if len(want) == 0 {
		if err := m.h.QdiscDel(clsact); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) && !isNotFound(err) {
			return fmt.Errorf("removing the fast path of %s: %w", name, err)
		}
		return nil
	}
	if err := m.h.QdiscAdd(clsact); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("adding a clsact qdisc to %s: %w", name, err)
	}
	have, err := m.h.FilterList(link, netlink.HANDLE_MIN_INGRESS)
	if err != nil {
		return fmt.Errorf("listing the filters of %s: %w", name, err)
	}
	wanted := map[string]*netlink.U32{}
	for _, f := range want {
		f.LinkIndex, f.Parent, f.Protocol = idx, netlink.HANDLE_MIN_INGRESS, unix.ETH_P_IP
		wanted[filterKey(f)] = f
	}
	for _, f := range have {
		u, ok := f.(*netlink.U32)
		if ok && u.Sel == nil && (u.Handle != macHT || u.Divisor != macBuckets) {
			continue // a priority's root hash table
		}
		if ok {
			if _, keep := wanted[filterKey(u)]; keep {
				delete(wanted, filterKey(u))
				continue
			}
		}
		// Not wanted, or not ours: only ournet's own devices get a fast
		// path, so whatever else is there is stale.
		if err := m.h.FilterDel(f); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("removing a stale fast-path filter of %s: %w", name, err)
		}
	}
	keys := make([]string, 0, len(wanted))
	for k := range wanted {
		keys = append(keys, k)
	}
	sort.Strings(keys) // pass filters (priority 1) first
	for _, k := range keys {
		if err := m.h.FilterAdd(wanted[k]); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("adding a fast-path filter to %s: %w", name, err)
		}
	}
	return nil
}

// filterKey is what makes two filters the same: priority, the hash table
// and bucket it is in, matches and where a match goes. The MAC table
// sorts first in its priority: it is added before what goes in or to it.
func filterKey(u *netlink.U32) string {
	if u.Sel == nil || u.Divisor != 0 {
		return fmt.Sprintf("%d|!table %x/%d", u.Priority, u.Handle, u.Divisor)
	}
	in := "root" // a priority's own table, whatever handle the kernel gave it
	if u.Hash&htidMask == macHT {
		in = fmt.Sprintf("bucket %02x", u.Hash&bucketMask>>12)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d|%d|%x|%s|link %x at %d mask %08x|", u.Priority, u.RedirIndex, u.ClassId, in, u.Link, u.Sel.Hoff, u.Sel.Hmask)
	for _, k := range u.Sel.Keys {
		if k.Mask != 0 { // a key that matches all is no match
			fmt.Fprintf(&b, "%d:%08x/%08x,", k.Off, k.Val, k.Mask)
		}
	}
	return b.String()
}

// The redirects are in a u32 hash table of their own, hashed on the last
// byte of the destination MAC: on a veth those to the remote endpoints, on
// the VXLAN device those to the local ones. A frame is matched against the
// few of its bucket, not against all the network's: with 500 remotes in
// one list, 64-byte UDP to the last one got half the packet rate.
const (
	macHT      = 0x00100000 // table 1:, in the redirects' priority
	macBuckets = 256
	htidMask   = 0xfff00000 // of a u32 handle: its table, its bucket, its node
	bucketMask = 0x000ff000
)

// macTable makes the MAC table.
func macTable() *netlink.U32 {
	return &netlink.U32{FilterAttrs: netlink.FilterAttrs{Priority: prioRedirect, Handle: macHT}, Divisor: macBuckets}
}

// macLink sends every frame to the bucket of its destination MAC's last
// byte (the low byte of the word at -12) in the MAC table; a frame no
// filter there matches goes on to the bridge.
func macLink() *netlink.U32 {
	return &netlink.U32{
		FilterAttrs: netlink.FilterAttrs{Priority: prioRedirect},
		Link:        macHT,
		Sel:         &nl.TcU32Sel{Hoff: -12, Hmask: 0x000000ff, Keys: []nl.TcU32Key{{}}}, // the key matches all
	}
}

// inBucket puts f, a redirect of frames to mac, in mac's bucket.
func inBucket(mac net.HardwareAddr, f *netlink.U32) *netlink.U32 {
	f.Hash = macHT | uint32(mac[5])<<12
	return f
}

// redirect sends what keys match out of the device ifindex. Keys are
// clipped: the library sends as many as their capacity, the spare ones
// zero (keys that match all, which the kernel would then check too).
func redirect(keys []nl.TcU32Key, ifindex int) *netlink.U32 {
	return &netlink.U32{
		FilterAttrs: netlink.FilterAttrs{Priority: prioRedirect},
		Sel:         &nl.TcU32Sel{Flags: nl.TC_U32_TERMINAL, Keys: slices.Clip(keys)},
		RedirIndex:  ifindex, // the library adds the mirred action
	}
}

// pass lets what keys match go on to the bridge, unredirected: a match
// with a class and no action ends the classification.
func pass(keys []nl.TcU32Key) *netlink.U32 {
	return &netlink.U32{
		FilterAttrs: netlink.FilterAttrs{Priority: prioPass},
		Sel:         &nl.TcU32Sel{Flags: nl.TC_U32_TERMINAL, Keys: slices.Clip(keys)},
		ClassId:     netlink.MakeHandle(1, 1),
	}
}

// Keys are 32-bit words at offsets from the IPv4 header, the Ethernet
// header being the 14 bytes before it: destination MAC at -14, source MAC
// at -8, as tc's own u32 "match ether" lays them out.
func keysDstMAC(mac net.HardwareAddr) []nl.TcU32Key {
	return []nl.TcU32Key{
		{Off: -16, Mask: 0x0000ffff, Val: uint32(mac[0])<<8 | uint32(mac[1])},
		{Off: -12, Mask: 0xffffffff, Val: uint32(mac[2])<<24 | uint32(mac[3])<<16 | uint32(mac[4])<<8 | uint32(mac[5])},
	}
}

func keysSrcMAC(mac net.HardwareAddr) []nl.TcU32Key {
	return []nl.TcU32Key{
		{Off: -8, Mask: 0xffffffff, Val: uint32(mac[0])<<24 | uint32(mac[1])<<16 | uint32(mac[2])<<8 | uint32(mac[3])},
		{Off: -4, Mask: 0xffff0000, Val: uint32(mac[4])<<24 | uint32(mac[5])<<16},
	}
}

// keysIPv4: a header of 20 bytes (no options) with this source address.
func keysIPv4(src netip.Addr) []nl.TcU32Key {
	a := src.As4()
	return []nl.TcU32Key{
		{Off: 0, Mask: 0x0f000000, Val: 0x05000000},
		{Off: 12, Mask: 0xffffffff, Val: uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])},
	}
}

// keysDHCPServer: UDP from port 67, after a 20-byte header.
func keysDHCPServer() []nl.TcU32Key {
	return []nl.TcU32Key{
		{Off: 0, Mask: 0x0f000000, Val: 0x05000000},
		{Off: 8, Mask: 0x00ff0000, Val: uint32(unix.IPPROTO_UDP) << 16},
		{Off: 20, Mask: 0xffff0000, Val: 67 << 16},
	}
}

func cmpErr(first, err error) error {
	if first != nil {
		return first
	}
	return err
}
