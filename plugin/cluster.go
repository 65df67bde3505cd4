package main

// The cluster store's settings and wiring (issue #13): with ETCD_ENDPOINTS
// empty none of this runs, and ournet is single-host exactly as before.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ournet/ournet/driver"
	"github.com/ournet/ournet/internal/cluster"
	"github.com/ournet/ournet/internal/firewall"
	"github.com/ournet/ournet/internal/overlay"
	"github.com/ournet/ournet/internal/store"
	"github.com/ournet/ournet/ipam"
)

// clusterSettings are the plugin settings of the cluster store.
type clusterSettings struct {
	Endpoints     []string
	Advertise     string // "": the source address of the route to the first endpoint
	CA, Cert, Key string
}

func loadClusterSettings() clusterSettings {
	var c clusterSettings
	for _, e := range strings.Split(env("ETCD_ENDPOINTS", ""), ",") {
		if e = strings.TrimSpace(e); e != "" {
			c.Endpoints = append(c.Endpoints, e)
		}
	}
	c.Advertise = strings.TrimSpace(env("CLUSTER_ADVERTISE", ""))
	c.CA, c.Cert, c.Key = hostFile(env("ETCD_CA", "")), hostFile(env("ETCD_CERT", "")), hostFile(env("ETCD_KEY", ""))
	return c
}

// hostFile maps a file under the host's /etc to where the plugin sees it
// (config.json mounts the host's /etc read-only at /host/etc).
func hostFile(p string) string {
	if p == "" {
		return ""
	}
	if _, err := os.Stat(p); err != nil && strings.HasPrefix(p, "/etc/") {
		return "/host" + p
	}
	return p
}

// hostIdentity is this host's ID in the cluster, made once and kept in
// the state file: two hosts may share a hostname, never an ID.
func hostIdentity(st *store.Store) (string, error) {
	var rec struct{ ID string }
	if ok, err := st.Get("cluster", "host", &rec); err != nil {
		return "", err
	} else if ok && rec.ID != "" {
		return rec.ID, nil
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	rec.ID = hex.EncodeToString(b[:])
	if err := st.Put("cluster", "host", rec); err != nil {
		return "", fmt.Errorf("saving this host's cluster identity: %w", err)
	}
	return rec.ID, nil
}

// advertise finds the address other hosts reach this one at, and the
// interface holding it (the underlay) with its MTU.
func advertise(h *netlink.Handle, c clusterSettings) (netip.Addr, netlink.Link, error) {
	var a netip.Addr
	if c.Advertise != "" {
		var err error
		if a, err = netip.ParseAddr(c.Advertise); err != nil {
			return a, nil, fmt.Errorf("CLUSTER_ADVERTISE=%q is not an IP address; give this host's address on the network the other hosts reach it by", c.Advertise)
		}
	} else {
		u, err := url.Parse(c.Endpoints[0])
		if err != nil || u.Hostname() == "" {
			return a, nil, fmt.Errorf("ETCD_ENDPOINTS: %q is not a URL such as http://10.0.0.1:2379", c.Endpoints[0])
		}
		ip := net.ParseIP(u.Hostname())
		if ip == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			ips, err := net.DefaultResolver.LookupIP(ctx, "ip", u.Hostname())
			cancel()
			if err != nil || len(ips) == 0 {
				return a, nil, fmt.Errorf("cannot resolve %s (the first of ETCD_ENDPOINTS) to find this host's address; set CLUSTER_ADVERTISE", u.Hostname())
			}
			ip = ips[0]
		}
		routes, err := h.RouteGet(ip)
		if err != nil || len(routes) == 0 || routes[0].Src == nil {
			return a, nil, fmt.Errorf("no route to %s (the first of ETCD_ENDPOINTS) gives this host's address; set CLUSTER_ADVERTISE", ip)
		}
		a, _ = netip.AddrFromSlice(routes[0].Src)
		a = a.Unmap()
	}
	if a.IsLoopback() || a.IsUnspecified() || a.IsMulticast() {
		return a, nil, fmt.Errorf("this host's cluster address would be %s, which other hosts cannot reach; set CLUSTER_ADVERTISE", a)
	}
	fam := unix.AF_INET
	if a.Is6() {
		fam = unix.AF_INET6
	}
	addrs, err := h.AddrList(nil, fam)
	if err != nil {
		return a, nil, fmt.Errorf("listing addresses: %w", err)
	}
	for _, ad := range addrs {
		if x, ok := netip.AddrFromSlice(ad.IP); ok && x.Unmap() == a {
			l, err := h.LinkByIndex(ad.LinkIndex)
			if err != nil {
				return a, nil, err
			}
			return a, l, nil
		}
	}
	return a, nil, fmt.Errorf("CLUSTER_ADVERTISE=%s is not an address of this host", a)
}

// blocks adapts the cluster store to the IPAM's second backend. The IPAM
// calls it under its lock, so a store that did not answer moments ago
// (the driver keeps that, from its calls, these and its sync's) is not
// waited for again: parallel runs would queue past dockerd's timeout.
type blocks struct {
	s interface {
		ClaimBlock(ctx context.Context, name string, subnet netip.Prefix, have ...netip.Prefix) (netip.Prefix, error)
		ClaimBlockFor(ctx context.Context, name string, subnet netip.Prefix, a netip.Addr) (netip.Prefix, error)
	}
	gate interface {
		StoreDown() bool
		StoreResult(error)
	}
}

func (b blocks) Claim(name string, subnet netip.Prefix, have []netip.Prefix) (netip.Prefix, error) {
	return b.claim(name, func(ctx context.Context) (netip.Prefix, error) { return b.s.ClaimBlock(ctx, name, subnet, have...) })
}

func (b blocks) ClaimFor(name string, subnet netip.Prefix, a netip.Addr) (netip.Prefix, error) {
	return b.claim(name, func(ctx context.Context) (netip.Prefix, error) { return b.s.ClaimBlockFor(ctx, name, subnet, a) })
}

func (b blocks) claim(name string, call func(context.Context) (netip.Prefix, error)) (netip.Prefix, error) {
	if b.gate.StoreDown() {
		return netip.Prefix{}, fmt.Errorf("ournet: claiming an address block of %s: cluster store: %w (it did not answer moments ago; check etcd's health: `docker rm` and `docker network rm` still work meanwhile)", name, cluster.ErrUnavailable)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	defer cancel()
	p, err := call(ctx)
	b.gate.StoreResult(err)
	return p, err
}

var _ ipam.Blocks = blocks{}

// setupCluster connects to the cluster store and gives the driver and the
// IPAM what cluster networks need. A bad setting does not stop the plugin
// (single-host networks keep working): cluster networks are then refused
// with what is wrong.
func setupCluster(c clusterSettings, st *store.Store, fw *firewall.Firewall, drv *driver.Driver, alloc *ipam.Allocator) (*cluster.Store, error) {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, err
	}
	adv, link, err := advertise(h, c)
	if err != nil {
		h.Close()
		return nil, err
	}
	id, err := hostIdentity(st)
	if err != nil {
		h.Close()
		return nil, err
	}
	hostname, _ := os.Hostname()
	cs, err := cluster.Connect(cluster.Config{Endpoints: c.Endpoints, CA: c.CA, Cert: c.Cert, Key: c.Key,
		Host: id, Hostname: hostname, Advertise: adv})
	if err != nil {
		h.Close()
		return nil, err
	}
	alloc.SetBlocks(blocks{s: cs, gate: drv})
	drv.SetCluster(&driver.Cluster{Store: cs, Overlay: overlay.New(h), Pools: alloc, Guard: fw,
		Underlay: link.Attrs().Name, UnderlayMTU: link.Attrs().MTU})
	cs.OnRegistered = drv.Resync
	cs.Start()
	return cs, nil
}
