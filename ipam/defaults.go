package ipam

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// DefaultPool is a range that subnets are cut from when a network is created
// without --subnet, like one entry of dockerd's default-address-pools.
type DefaultPool struct {
	Base netip.Prefix
	Size int // prefix length of each subnet cut from Base
}

func (d DefaultPool) String() string { return fmt.Sprintf("%s split into /%d", d.Base, d.Size) }

// DefaultV4Pools is 10.200.0.0/14 cut into 1024 /24s (10.200.0.0 to
// 10.203.255.0). Chosen to stay clear of what else commonly lives on a
// Docker host: Docker's own local pools (172.17.0.0/16 to 172.31.0.0/16 and
// 192.168.0.0/16), swarm's overlay pool (which fills 10.0.0.0/8 from the
// bottom), Kubernetes' usual service and pod ranges (10.96.0.0/12,
// 10.244.0.0/16, k3s' 10.42/10.43), and 100.64.0.0/10 (carrier-grade NAT,
// Tailscale). A /24 is 253 containers, plenty for one bridge, and lets
// many networks coexist. Subnets routed on the host are skipped anyway.
func DefaultV4Pools() []DefaultPool {
	return []DefaultPool{{Base: netip.MustParsePrefix("10.200.0.0/14"), Size: 24}}
}

// DefaultV6Pools is a unique local (RFC 4193) /48 cut into 65536 /64s; its
// global ID spells "ourne" in ASCII so that it is recognisable in `ip -6 r`.
func DefaultV6Pools() []DefaultPool {
	return []DefaultPool{{Base: netip.MustParsePrefix("fd6f:7572:6e65::/48"), Size: 64}}
}

const poolsSyntax = "write entries as base=10.10.0.0/16,size=24 separated by ';'"

// ParseDefaultPools reads "base=10.10.0.0/16,size=24;base=fd00:1::/48,size=64"
// (IPv4 and IPv6 entries may be mixed), the format of the DEFAULT_POOLS
// plugin setting and of dockerd's --default-address-pool.
func ParseDefaultPools(s string) ([]DefaultPool, error) {
	var out []DefaultPool
	for _, entry := range strings.Split(s, ";") {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		d, err := parsePoolEntry(entry)
		if err != nil {
			return nil, fmt.Errorf("default pool %q: %w; %s", entry, err, poolsSyntax)
		}
		for _, prev := range out {
			if prev.Base.Overlaps(d.Base) {
				return nil, fmt.Errorf("default pool %q: base %s overlaps base %s given earlier; list each range once", entry, d.Base, prev.Base)
			}
		}
		out = append(out, d)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no default pool given in %q; %s", s, poolsSyntax)
	}
	return out, nil
}

func parsePoolEntry(entry string) (DefaultPool, error) {
	var d DefaultPool
	var haveBase, haveSize bool
	for _, field := range strings.Split(entry, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(field), "=")
		k, v = strings.ToLower(strings.TrimSpace(k)), strings.TrimSpace(v)
		switch {
		case !ok:
			return d, fmt.Errorf("%q is not key=value", field)
		case k == "base" && !haveBase:
			p, err := netip.ParsePrefix(v)
			if err != nil {
				return d, fmt.Errorf("base %q is not a CIDR prefix such as 10.10.0.0/16", v)
			}
			d.Base, haveBase = p, true
		case k == "size" && !haveSize:
			n, err := strconv.Atoi(v)
			if err != nil {
				return d, fmt.Errorf("size %q is not a prefix length such as 24", v)
			}
			d.Size, haveSize = n, true
		case k == "base" || k == "size":
			return d, fmt.Errorf("%s is given twice", k)
		default:
			return d, fmt.Errorf("unknown key %q (only base and size are known)", k)
		}
	}
	if !haveBase {
		return d, fmt.Errorf("base is missing")
	}
	if !haveSize {
		return d, fmt.Errorf("size is missing")
	}
	return d, d.validate()
}

func (d DefaultPool) validate() error {
	b := d.Base
	switch {
	case !b.IsValid():
		return fmt.Errorf("base is not a valid prefix")
	case b.Addr().Is4In6():
		return fmt.Errorf("base %s is an IPv4-mapped IPv6 prefix; write it as an IPv4 prefix", b)
	case b.Addr().Zone() != "":
		return fmt.Errorf("base %s has an IPv6 zone, which a subnet cannot have", b)
	case b != b.Masked():
		return fmt.Errorf("base %s has host bits set; did you mean %s?", b, b.Masked())
	case d.Size < b.Bits():
		return fmt.Errorf("size /%d is shorter than base %s itself; give a size of at least %d", d.Size, b, b.Bits())
	case b.Addr().Is4() && d.Size > 30:
		return fmt.Errorf("size /%d leaves no room for a gateway and containers; use at most 30 for IPv4", d.Size)
	case b.Addr().Is6() && d.Size > 126:
		return fmt.Errorf("size /%d leaves no room for a gateway and containers; use at most 126 (64 is usual) for IPv6", d.Size)
	}
	return nil
}

// firstFreeSubnet returns the first subnet of d that overlaps no blocker.
// It jumps over each blocker rather than stepping subnet by subnet, so a /32
// cut into /64s costs one step per blocker, not 2^32.
func (d DefaultPool) firstFreeSubnet(blockers []netip.Prefix) (netip.Prefix, bool) {
	v4 := d.Base.Addr().Is4()
	step := pow2(d.Base.Addr().BitLen() - d.Size)
	end := fromAddr(lastAddr(d.Base))
	for cur := fromAddr(d.Base.Addr()); cur.cmp(end) <= 0; {
		c := netip.PrefixFrom(cur.toAddr(v4), d.Size)
		next, more := cur.add(step, v4)
		blocked := false
		for _, b := range blockers {
			if !b.Overlaps(c) {
				continue
			}
			blocked = true
			if b.Bits() <= d.Size { // b covers c and maybe many more subnets
				after, ok := afterPrefix(b)
				if !ok {
					return netip.Prefix{}, false
				}
				if after.cmp(next) > 0 {
					next = after
				}
			}
		}
		if !blocked {
			return c, true
		}
		if !more {
			return netip.Prefix{}, false
		}
		cur = next
	}
	return netip.Prefix{}, false
}
