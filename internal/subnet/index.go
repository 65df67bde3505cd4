package subnet

import (
	"net/netip"
	"slices"
)

// Routes answers which of the host's routes lies strictly inside a prefix
// (longer than it, within it): what Check refuses.
type Routes interface {
	Inside(p netip.Prefix) (netip.Prefix, bool)
}

// List is Routes over a plain list (scanned whole).
type List []netip.Prefix

// Inside implements Routes.
func (l List) Inside(p netip.Prefix) (netip.Prefix, bool) {
	p = p.Masked()
	for _, r := range l {
		if r = r.Masked(); inside(r, p) {
			return r, true
		}
	}
	return netip.Prefix{}, false
}

// inside reports whether r lies strictly inside p.
func inside(r, p netip.Prefix) bool {
	return r.IsValid() && r.Addr().Is6() == p.Addr().Is6() && p.Bits() < r.Bits() && p.Contains(r.Addr())
}

// Index is a set of prefixes, each held any number of times (two routes to
// one destination are two), that answers which of them overlaps or lies
// inside a prefix with a binary search and a few lookups, however many it
// holds: the host's routes and the IPAM's pools are checked at every
// network create, and with a thousand networks a scan of each would be
// most of the create. Not safe for concurrent use.
type Index struct {
	count  map[netip.Prefix]int
	sorted []netip.Prefix // distinct, by address then length
	lens   [2][129]int    // distinct prefixes per family (IPv4, IPv6) and length
}

// NewIndex returns an empty Index.
func NewIndex() *Index { return &Index{count: map[netip.Prefix]int{}} }

func fam(p netip.Prefix) int {
	if p.Addr().Is6() {
		return 1
	}
	return 0
}

func cmpPrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// Add holds p once more.
func (x *Index) Add(p netip.Prefix) {
	if p = p.Masked(); !p.IsValid() {
		return
	}
	if x.count[p]++; x.count[p] > 1 {
		return
	}
	i, _ := slices.BinarySearchFunc(x.sorted, p, cmpPrefix)
	x.sorted = slices.Insert(x.sorted, i, p)
	x.lens[fam(p)][p.Bits()]++
}

// Remove holds p once less; a prefix not held is no error.
func (x *Index) Remove(p netip.Prefix) {
	p = p.Masked()
	n, ok := x.count[p]
	if !ok {
		return
	}
	if n > 1 {
		x.count[p] = n - 1
		return
	}
	delete(x.count, p)
	if i, found := slices.BinarySearchFunc(x.sorted, p, cmpPrefix); found {
		x.sorted = slices.Delete(x.sorted, i, i+1)
	}
	x.lens[fam(p)][p.Bits()]--
}

// Len is how many distinct prefixes are held.
func (x *Index) Len() int { return len(x.sorted) }

// All lists the distinct prefixes held, sorted (a copy).
func (x *Index) All() []netip.Prefix { return slices.Clone(x.sorted) }

// Inside returns a held prefix strictly inside p, if there is one.
func (x *Index) Inside(p netip.Prefix) (netip.Prefix, bool) {
	p = p.Masked()
	// Everything held at p's address or after it, while within p: first
	// the prefixes at p's address itself (no longer than p: they hold p
	// or are p), then, if any, one that is inside it.
	i, _ := slices.BinarySearchFunc(x.sorted, netip.PrefixFrom(p.Addr(), 0), cmpPrefix)
	for ; i < len(x.sorted) && p.Contains(x.sorted[i].Addr()); i++ {
		if q := x.sorted[i]; q.Addr().Is6() == p.Addr().Is6() && q.Bits() > p.Bits() {
			return q, true
		}
	}
	return netip.Prefix{}, false
}

// Overlap returns a held prefix that overlaps p (holds it, is it, or lies
// inside it), if there is one.
func (x *Index) Overlap(p netip.Prefix) (netip.Prefix, bool) {
	p = p.Masked()
	f := fam(p)
	for l := 0; l <= p.Bits(); l++ {
		if x.lens[f][l] == 0 {
			continue
		}
		if q := netip.PrefixFrom(p.Addr(), l).Masked(); x.count[q] > 0 {
			return q, true
		}
	}
	return x.Inside(p)
}
