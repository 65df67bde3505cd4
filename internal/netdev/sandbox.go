package netdev

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// ErrNoSandbox says a container's network namespace is gone (the container
// stopped): there is nothing to plumb into.
var ErrNoSandbox = errors.New("the container's network namespace is gone")

// Plumb is what a container's interface is made of, to make it again
// after its veth was deleted (issue #16: self-healing endpoints).
type Plumb struct {
	Veth             // the pair, created in the host and attached as usual
	IfName    string // the interface's name in the container (eth0)
	Addrs     []netip.Prefix
	GatewayV4 netip.Addr // default routes, where the endpoint is a gateway
	GatewayV6 netip.Addr
}

// openSandbox opens the network namespace the engine gave as Join's
// SandboxKey. That path lives in the engine's mount namespace, not the
// plugin's: it is reached through /proc/<pid>/root of a process that sees
// it (the engine itself), which needs the plugin to share the host's PID
// namespace. The pid that worked last is tried first.
func openSandbox(key string) (*os.File, error) {
	try := func(p string) *os.File {
		f, err := os.Open(p)
		if err != nil {
			return nil
		}
		var st unix.Statfs_t
		if unix.Fstatfs(int(f.Fd()), &st) != nil || st.Type != unix.NSFS_MAGIC {
			f.Close()
			return nil
		}
		return f
	}
	if f := try(key); f != nil {
		return f, nil
	}
	sandboxPID.Lock()
	last := sandboxPID.pid
	sandboxPID.Unlock()
	if last != "" {
		if f := try("/proc/" + last + "/root" + key); f != nil {
			return f, nil
		}
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		if f := try("/proc/" + e.Name() + "/root" + key); f != nil {
			sandboxPID.Lock()
			sandboxPID.pid = e.Name()
			sandboxPID.Unlock()
			return f, nil
		}
	}
	return nil, ErrNoSandbox
}

var sandboxPID struct {
	sync.Mutex
	pid string
}

// withSandbox runs fn with a netlink handle inside the sandbox key's
// namespace.
func withSandbox(key string, fn func(*netlink.Handle, *os.File) error) error {
	f, err := openSandbox(key)
	if err != nil {
		return err
	}
	defer f.Close()
	h, err := netlink.NewHandleAt(netns.NsHandle(f.Fd()))
	if err != nil {
		return fmt.Errorf("entering the container's network namespace: %w", err)
	}
	defer h.Close()
	return fn(h, f)
}

// SandboxIfName returns the name of the link with mac inside the sandbox
// ("" if there is none).
func (m *Manager) SandboxIfName(key string, mac net.HardwareAddr) (string, error) {
	name := ""
	err := withSandbox(key, func(h *netlink.Handle, _ *os.File) error {
		links, err := h.LinkList()
		if err != nil {
			return err
		}
		for _, l := range links {
			if l.Attrs().HardwareAddr.String() == mac.String() {
				name = l.Attrs().Name
			}
		}
		return nil
	})
	return name, err
}

// Replumb makes the pair again, moves its peer into the sandbox and gives
// it the name, MAC, MTU, addresses and default routes it had. The sandbox
// must still exist; a half-made pair is removed on failure.
func (m *Manager) Replumb(key string, p Plumb) (retErr error) {
	return withSandbox(key, func(h *netlink.Handle, ns *os.File) error {
		if l, err := h.LinkByName(p.IfName); err == nil {
			return fmt.Errorf("the container already has an interface %s (%s)", p.IfName, l.Type())
		}
		if err := m.EnsureVeth(p.Veth); err != nil {
			return err
		}
		defer func() {
			if retErr != nil {
				_ = m.DeleteVeth(p.Host, p.Owner)
			}
		}()
		peer, err := m.h.LinkByName(p.Peer)
		if err != nil {
			return fmt.Errorf("looking up %s: %w", p.Peer, err)
		}
		if err := m.h.LinkSetNsFd(peer, int(ns.Fd())); err != nil {
			return fmt.Errorf("moving %s into the container: %w", p.Peer, err)
		}
		in, err := h.LinkByName(p.Peer)
		if err != nil {
			return fmt.Errorf("finding %s in the container: %w", p.Peer, err)
		}
		if err := h.LinkSetName(in, p.IfName); err != nil {
			return fmt.Errorf("naming %s %s in the container: %w", p.Peer, p.IfName, err)
		}
		if p.MTU > 0 {
			if err := h.LinkSetMTU(in, p.MTU); err != nil {
				return fmt.Errorf("setting the MTU of %s: %w", p.IfName, err)
			}
		}
		for _, a := range p.Addrs {
			addr := &netlink.Addr{IPNet: prefixToIPNet(a)}
			if a.Addr().Is6() {
				addr.Flags = unix.IFA_F_NODAD
			}
			if err := h.AddrAdd(in, addr); err != nil && !errors.Is(err, unix.EEXIST) {
				return fmt.Errorf("adding %s to %s: %w", a, p.IfName, err)
			}
		}
		if err := h.LinkSetUp(in); err != nil {
			return fmt.Errorf("bringing up %s: %w", p.IfName, err)
		}
		for _, gw := range []netip.Addr{p.GatewayV4, p.GatewayV6} {
			if !gw.IsValid() {
				continue
			}
			r := &netlink.Route{LinkIndex: in.Attrs().Index, Gw: net.IP(gw.AsSlice()), Dst: nil}
			if err := h.RouteAdd(r); err != nil && !errors.Is(err, unix.EEXIST) {
				return fmt.Errorf("default route via %s: %w", gw, err)
			}
		}
		return nil
	})
}
