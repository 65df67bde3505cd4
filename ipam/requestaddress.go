package ipam

import (
	"github.com/ournet/ournet/internal/crash"
	"net/netip"
	"strings"

	api "github.com/docker/go-plugins-helpers/ipam"
	log "github.com/sirupsen/logrus"
)

// RequestAddress implements ipam.Ipam. With Address it reserves exactly
// that address (the gateway, an --aux-address or a container's --ip);
// without, it picks a free one from the --ip-range, or from the subnet when
// there is none. The answer is in CIDR form with the subnet's length.
func (a *Allocator) RequestAddress(req *api.RequestAddressRequest) (*api.RequestAddressResponse, error) {
	return a.RequestAddressIn("", req)
}

// RequestAddressIn is RequestAddress in the plugin's call named call (""
// for none), which the address it hands out records: a replay of the
// call (its work saved, its reply lost to a crash) gets that address
// again, instead of a second one, or a refusal of the --ip it holds.
func (a *Allocator) RequestAddressIn(call string, req *api.RequestAddressRequest) (*api.RequestAddressResponse, error) {
	log.WithFields(log.Fields{"pool": req.PoolID, "addr": req.Address, "options": req.Options}).Debug("ipam: RequestAddress")
	gateway := req.Options[optRequestAddressType] == optGateway
	var want netip.Addr
	if req.Address != "" {
		var err error
		if want, err = parseAddr(req.Address); err != nil {
			return nil, err
		}
	}

	a.mu.Lock()
	defer a.mu.Unlock()
	cur, ok := a.pools[req.PoolID]
	if !ok {
		return nil, newErr(ErrUnknownPool, "this network's address pool %q is not known to ournet (its state may have been lost); "+
			"remove the network and create it again", req.PoolID)
	}
	if i := cur.madeIn(call); i >= 0 {
		log.WithFields(log.Fields{"pool": cur.ID, "addr": cur.Addrs[i].Addr}).Info("ipam: a replayed RequestAddress gets the address its first run saved")
		return &api.RequestAddressResponse{Address: netip.PrefixFrom(cur.Addrs[i].Addr, cur.Prefix.Bits()).String()}, nil
	}
	p := cur.clone()
	p.Pending = false
	delete(a.cutShort, p.ID) // dockerd retried it after all (orphan.go)
	p.Orphaned = 0           // in use after all (orphan.go)
	p.dropStale()            // addresses whose ReleaseAddress can no longer come
	kind := KindDynamic
	if gateway {
		kind = KindGateway
	}

	if p.Cluster != "" && kind != KindGateway {
		addr, err := a.clusterAddress(p, want)
		if err != nil {
			return nil, err
		}
		want = addr
	} else if want.IsValid() {
		if kind == KindDynamic {
			kind = KindStatic
		}
		if err := p.claim(want, kind); err != nil {
			return nil, err
		}
	} else {
		// Docker takes the gateway as the lowest free address (x.x.x.1),
		// never round-robin.
		addr, ok := p.pick(!gateway && a.serialFor(p, req.Options))
		if !ok {
			return nil, newErr(ErrPoolFull, "no free address is left in %s: every address is in use; "+
				"remove containers you no longer need, or create the network with a larger --subnet or --ip-range", describe(p))
		}
		p.add(addr, kind)
		p.Next = addr.Next()
		want = addr
	}

	p.recordCall(want, call)
	if err := a.save(p); err != nil {
		return nil, err
	}
	crash.Point("request-address:after-save")
	a.pools[p.ID] = p
	return &api.RequestAddressResponse{Address: netip.PrefixFrom(want, p.Prefix.Bits()).String()}, nil
}

// claim reserves an address asked for by value. Like Docker, it must lie in
// the subnet but not necessarily in the --ip-range: that is how `--ip`
// places containers outside the dynamic range.
func (p *pool) claim(addr netip.Addr, kind AddrKind) error {
	if !p.Prefix.Contains(addr) {
		return newErr(ErrOutOfRange, "address %s is not in this network's subnet %s; choose an address inside %s", addr, p.Prefix, p.Prefix)
	}
	if role := p.reserved(addr); role != "" {
		return newErr(ErrReserved, "address %s is %s of %s and cannot be assigned; choose another address", addr, role, p.Prefix)
	}
	if i, held := p.find(addr); held {
		by := map[AddrKind]string{
			KindGateway: "as the network's gateway",
			KindStatic:  "by a container's --ip or an --aux-address",
			KindDynamic: "by a container",
		}[p.Addrs[i].Kind]
		return newErr(ErrAddressInUse, "address %s is already in use in %s (%s); choose another address, or leave --ip out to get a free one",
			addr, p.Prefix, by)
	}
	p.add(addr, kind)
	return nil
}

// serialFor decides round-robin: the request's option, else the network's
// --ipam-opt, else the plugin's setting.
func (a *Allocator) serialFor(p *pool, opts map[string]string) bool {
	if v, ok := opts[OptSerial]; ok {
		return v == "true"
	}
	if v, ok := p.Options[OptSerial]; ok {
		return v == "true"
	}
	return a.serial
}

// ReleaseAddress implements ipam.Ipam. Releasing what is not held succeeds:
// dockerd releases addresses of endpoints that ournet may have forgotten.
func (a *Allocator) ReleaseAddress(req *api.ReleaseAddressRequest) error {
	fields := log.Fields{"pool": req.PoolID, "addr": req.Address}
	if strings.TrimSpace(req.Address) == "" {
		log.WithFields(fields).Debug("ipam: ReleaseAddress without an address; nothing to do")
		return nil
	}
	addr, err := parseAddr(req.Address)
	if err != nil {
		return err
	}

	a.mu.Lock()
	defer a.mu.Unlock()
	cur, ok := a.pools[req.PoolID]
	if !ok {
		log.WithFields(fields).Debug("ipam: ReleaseAddress in an unknown pool; nothing to do")
		return nil
	}
	i, held := cur.find(addr)
	var al *Allocation
	if held {
		al = &cur.Addrs[i]
	}
	if a.lateRelease(addr, al) {
		log.WithFields(fields).Info("ipam: ignored the late release of an address freed by the sweep after a crash, which a new container holds now")
		return nil
	}
	if !held {
		log.WithFields(fields).Debug("ipam: ReleaseAddress of an address not held; nothing to do")
		return nil
	}
	p := cur.clone()
	p.remove(addr)
	a.saveRelease(p)
	a.pools[p.ID] = p
	return nil
}

// parseAddr accepts a bare address or CIDR form; dockerd sends bare ones.
func parseAddr(s string) (netip.Addr, error) {
	s = strings.TrimSpace(s)
	if pfx, err := netip.ParsePrefix(s); err == nil {
		return pfx.Addr().Unmap(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Addr{}, newErr(ErrInvalid, "%q is not a valid IP address; give one such as 10.1.0.5 or fd00:1::5", s)
	}
	return a.Unmap(), nil
}
