package ipam

import (
	"github.com/ournet/ournet/internal/crash"
	"github.com/ournet/ournet/internal/subnet"
	"net/netip"
	"strings"

	api "github.com/docker/go-plugins-helpers/ipam"
	log "github.com/sirupsen/logrus"
)

// RequestPool implements ipam.Ipam: it reserves the --subnet (and
// --ip-range) of a new network, or picks a free default subnet.
func (a *Allocator) RequestPool(req *api.RequestPoolRequest) (*api.RequestPoolResponse, error) {
	log.WithFields(log.Fields{"space": req.AddressSpace, "pool": req.Pool, "subpool": req.SubPool,
		"v6": req.V6, "options": req.Options}).Debug("ipam: RequestPool")
	space, err := addressSpace(req.AddressSpace)
	if err != nil {
		return nil, err
	}

	var pfx, sub netip.Prefix
	var host []netip.Prefix
	var routes subnet.Routes
	if req.Pool == "" {
		if req.SubPool != "" {
			return nil, newErr(ErrInvalid, "an ip-range (%s) needs a subnet that contains it; pass --subnet as well as --ip-range", req.SubPool)
		}
		// Asked outside the lock: it talks to the kernel and may be slow.
		host = a.hostPrefixes(req.V6)
	} else if pfx, sub, err = parsePool(req); err != nil {
		return nil, err
	} else if err := subnet.Usable(pfx); err != nil {
		return nil, newErr(ErrInvalid, "%v", err)
	} else {
		routes = a.routes(req.V6)
		a.reclaimUnlearnt(pfx)
	}

	a.mu.Lock()
	defer a.mu.Unlock()
	picked := !pfx.IsValid()
	if picked {
		if pfx, err = a.pickDefault(req.V6, host); err != nil {
			return nil, err
		}
	} else if q, ok := a.overlap(pfx); ok {
		return nil, newErr(ErrOverlap, "subnet %s overlaps %s, which ournet already uses for another network; "+
			"choose a subnet that does not overlap (see `docker network inspect` of your ournet networks)", pfx, q)
	} else if err := subnet.Check(pfx, routes); err != nil {
		return nil, newErr(ErrInvalid, "%v", err)
	}

	p := &pool{ID: poolID(space, pfx, sub), AddressSpace: space, Prefix: pfx, Sub: sub, Options: copyOptions(req.Options), Pending: true, Picked: picked}
	if err := a.save(p); err != nil {
		return nil, err
	}
	crash.Point("request-pool:after-save")
	a.pools[p.ID] = p
	a.byPrefix.Add(p.Prefix)
	log.WithFields(log.Fields{"id": p.ID}).Debug("ipam: pool reserved")
	return &api.RequestPoolResponse{PoolID: p.ID, Pool: pfx.String()}, nil
}

// ReleasePool implements ipam.Ipam; it frees the pool and all its
// addresses. An unknown pool is already free: dockerd cleans up networks
// that ournet may have forgotten.
func (a *Allocator) ReleasePool(req *api.ReleasePoolRequest) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	p, ok := a.pools[req.PoolID]
	if !ok {
		log.WithField("id", req.PoolID).Debug("ipam: ReleasePool of an unknown pool; nothing to do")
		return nil
	}
	a.release(p)
	log.WithField("id", req.PoolID).Debug("ipam: pool released")
	return nil
}

func addressSpace(s string) (string, error) {
	switch s {
	case "", LocalAddressSpace:
		return LocalAddressSpace, nil
	case GlobalAddressSpace:
		return s, nil
	}
	return "", newErr(ErrInvalid, "address space %q is not one of ournet's (%s, %s); leave it to Docker to choose", s, LocalAddressSpace, GlobalAddressSpace)
}

// parsePool checks --subnet and --ip-range. A subnet with host bits set is
// refused, as Docker 25 and later refuse it, rather than silently masked as
// older engines did: 10.1.0.5/24 more likely means a typo than 10.1.0.0/24.
func parsePool(req *api.RequestPoolRequest) (pfx, sub netip.Prefix, err error) {
	if pfx, err = parsePrefix("subnet", req.Pool); err != nil {
		return
	}
	if pfx.Addr().Is6() != req.V6 {
		err = newErr(ErrInvalid, "subnet %s is an %s subnet but was given for the network's %s addresses; check the --subnet values",
			pfx, family(pfx.Addr().Is6()), family(req.V6))
		return
	}
	if req.SubPool == "" {
		return
	}
	if sub, err = parsePrefix("ip-range", req.SubPool); err != nil {
		return
	}
	switch {
	case sub.Addr().Is6() != pfx.Addr().Is6():
		err = newErr(ErrInvalid, "ip-range %s is %s but subnet %s is %s; give an ip-range inside the subnet",
			sub, family(sub.Addr().Is6()), pfx, family(pfx.Addr().Is6()))
	case !contains(pfx, sub):
		err = newErr(ErrInvalid, "ip-range %s is not inside subnet %s; give an ip-range within the subnet", sub, pfx)
	case sub == pfx:
		sub = netip.Prefix{} // a range of the whole subnet is no range
	}
	return
}

func parsePrefix(what, s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(strings.TrimSpace(s))
	switch {
	case err != nil:
		return p, newErr(ErrInvalid, "%s %q is not a valid CIDR prefix; write it as address/length, e.g. 10.1.0.0/24 or fd00:1::/64", what, s)
	case p.Addr().Is4In6():
		return p, newErr(ErrInvalid, "%s %s is an IPv4-mapped IPv6 prefix; write it as an IPv4 prefix", what, p)
	case p != p.Masked():
		return p, newErr(ErrInvalid, "%s %s has host bits set; use %s", what, p, p.Masked())
	}
	return p, nil
}

// hostPrefixes is what the host routes, of one family. A failure costs only
// the check, and dockerd re-asks when it sees a clash itself.
func (a *Allocator) hostPrefixes(v6 bool) []netip.Prefix {
	if a.hostNetworks == nil {
		return nil
	}
	all, err := a.hostNetworks()
	if err != nil {
		log.WithError(err).Warn("ipam: cannot list host networks; default subnets are not checked against them")
	}
	var out []netip.Prefix
	for _, p := range all {
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-unmapBits(p)).Masked()
		// A default route overlaps everything and blocks nothing.
		if p.IsValid() && p.Bits() > 0 && p.Addr().Is6() == v6 {
			out = append(out, p)
		}
	}
	return out
}

// routes is what a --subnet is checked against: HostRoutes, or
// HostNetworks' list of one family (asked outside the lock: it talks to
// the kernel and may be slow).
func (a *Allocator) routes(v6 bool) subnet.Routes {
	if a.hostRoutes != nil {
		return a.hostRoutes
	}
	return subnet.List(a.hostPrefixes(v6))
}

func unmapBits(p netip.Prefix) int {
	if p.Addr().Is4In6() {
		return 96
	}
	return 0
}

// pickDefault returns the first default subnet clear of held pools and of
// the host. A pool that dockerd rejected is still held when it asks again,
// so each call answers differently.
func (a *Allocator) pickDefault(v6 bool, host []netip.Prefix) (netip.Prefix, error) {
	defs, setting := a.v4Defaults, "DEFAULT_POOLS"
	if v6 {
		defs, setting = a.v6Defaults, "DEFAULT_POOLS_V6"
	}
	if len(defs) == 0 {
		return netip.Prefix{}, newErr(ErrNoFreeSubnet, "no default %s pools are configured, so ournet cannot choose an %s subnet; "+
			"pass --subnet, or configure pools with `docker plugin set <plugin> %s=base=...,size=...`", family(v6), family(v6), setting)
	}
	blockers := host
	for _, q := range a.pools {
		if q.v6() == v6 {
			blockers = append(blockers, q.Prefix)
		}
	}
	var tried []string
	for _, d := range defs {
		if c, ok := d.firstFreeSubnet(blockers); ok {
			return c, nil
		}
		tried = append(tried, d.String())
	}
	return netip.Prefix{}, newErr(ErrNoFreeSubnet, "every default %s subnet (%s) is taken by ournet networks or overlaps a network of the host; "+
		"remove unused networks (`docker network prune`), pass --subnet, or add pools with the plugin setting %s",
		family(v6), strings.Join(tried, "; "), setting)
}

func copyOptions(m map[string]string) map[string]string {
	if len(m) == 0 {
		return nil
	}
	c := make(map[string]string, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}
