package netdev

import (
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/ournet/ournet/internal/testns"
	"github.com/vishvananda/netlink"
)

// The watched routes follow the kernel's: a bridge's address adds its
// route, deleting the bridge (or setting it down, which the kernel does not
// announce) removes it, and the set always ends equal to a dump;
// HostRoutes' check answers from it.
func TestWatchedRoutesInNetns(t *testing.T) {
	testns.Do(t, func() {
		m := watching(t)
		dumped := func() []netip.Prefix {
			routes, err := m.dumpRoutes()
			if err != nil {
				t.Fatal(err)
			}
			var out []netip.Prefix
			for _, r := range routes {
				if k, ok := keyOf(r); ok {
					out = append(out, k.dst)
				}
			}
			slices.SortFunc(out, func(a, b netip.Prefix) int {
				if c := a.Addr().Compare(b.Addr()); c != 0 {
					return c
				}
				return a.Bits() - b.Bits()
			})
			return slices.Compact(out)
		}
		want := netip.MustParsePrefix("198.18.77.0/24")
		waitFor := func(has bool) {
			t.Helper()
			for end := time.Now().Add(2 * time.Second); ; time.Sleep(5 * time.Millisecond) {
				got, ok := m.watchedPrefixes()
				if !ok {
					t.Fatal("the watched set is not live")
				}
				got = slices.Clone(got)
				slices.SortFunc(got, func(a, b netip.Prefix) int {
					if c := a.Addr().Compare(b.Addr()); c != 0 {
						return c
					}
					return a.Bits() - b.Bits()
				})
				r, in := m.HostRoutes().Inside(netip.MustParsePrefix("198.18.0.0/16"))
				if slices.Contains(got, want) == has && slices.Equal(got, dumped()) && in == has && (!has || r == want) {
					return
				}
				if time.Now().After(end) {
					t.Fatalf("watched %v, dumped %v; want %s present = %v", got, dumped(), want, has)
				}
			}
		}
		for i := 0; i < 3; i++ {
			br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "brw"}}
			if err := netlink.LinkAdd(br); err != nil {
				t.Fatal(err)
			}
			l, _ := netlink.LinkByName("brw")
			if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(198, 18, 77, 1), Mask: net.CIDRMask(24, 32)}}); err != nil {
				t.Fatal(err)
			}
			if err := netlink.LinkSetUp(l); err != nil {
				t.Fatal(err)
			}
			waitFor(true)
			if i == 1 {
				if err := netlink.LinkSetDown(l); err != nil {
					t.Fatal(err)
				}
				waitFor(false)
			}
			if err := netlink.LinkDel(l); err != nil {
				t.Fatal(err)
			}
			waitFor(false)
		}
	})
}

// A device's route read after the device's removal (routes and links come
// on two sockets; here both wait while the set's lock is held, as during a
// HostPrefixes dump) leaves no route of it in the set: a subnet over it
// is not refused for a route no device has.
func TestRouteOfAGoneDeviceInNetns(t *testing.T) {
	testns.Do(t, func() {
		m := watching(t)
		for i := range 40 {
			pfx := netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(100 + i), 0}), 24)
			m.routes.mu.Lock()
			a := netlink.NewLinkAttrs()
			a.Name = "gone0"
			err := m.h.LinkAdd(&netlink.Bridge{LinkAttrs: a})
			var l netlink.Link
			if err == nil {
				l, err = m.h.LinkByName("gone0")
			}
			if err == nil {
				err = m.h.LinkSetUp(l)
			}
			if err == nil {
				err = m.h.AddrAdd(l, &netlink.Addr{IPNet: prefixToIPNet(netip.PrefixFrom(pfx.Addr().Next(), 24))})
			}
			if err == nil {
				err = m.h.LinkDel(l)
			}
			m.routes.mu.Unlock()
			if err != nil {
				t.Fatal(err)
			}
			time.Sleep(20 * time.Millisecond) // the watcher reads what is queued
			if r, ok := m.HostRoutes().Inside(netip.MustParsePrefix("198.18.0.0/15")); ok {
				t.Fatalf("round %d: %s covers %s, a route of a device that is gone", i, pfx, r)
			}
		}
	})
}

// watching is a Manager of the test's namespace that watches its routes
// until the test ends. Call inside testns.Do.
func watching(t *testing.T) *Manager {
	t.Helper()
	m, err := New()
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop); m.Close() })
	if err := m.WatchRoutes(stop); err != nil {
		t.Fatal(err)
	}
	return m
}
