package firewall

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"

	"github.com/ournet/ournet/internal/iptables"
	"github.com/ournet/ournet/internal/nft"
)

// Names in table inet ournet (see the package comment).
const (
	TableName    = "ournet"
	ForwardBase  = "forward"      // hook forward
	NATBase      = "postrouting"  // hook postrouting
	NetsSet      = "nets"         // every network's bridge
	PublishedSet = "published"    // bridges that take published ports (not internal)
	ICCSet       = "icc"          // "<bridge>" . "<bridge>": icc on
	Unprot4Set   = "unprotected4" // bridges of IPv4 nat-unprotected networks
	Unprot6Set   = "unprotected6"
	InternalSet  = "internal" // bridges of internal networks
	Masq4Set     = "masq4"    // IPv4 subnets that masquerade
	Masq6Set     = "masq6"
	HairpinSet   = "hairpin" // "<bridge>" . "<bridge>": a masquerading network's own way back in
	Routed4Set   = "routed4" // bridges of IPv4 routed networks: ICMP in
	Routed6Set   = "routed6"
	Open4Set     = "open4"      // "<bridge>" . <address> . <protocol> . <port>: published, open at the container's IPv4 address
	Open6Set     = "open6"      // (and IPv6)
	RoutedOwnSet = "routed_own" // "<bridge>" . "<bridge>": a routed network's own traffic, judged by icc alone
	TrustedSet   = "trusted"    // "<host interface>" . "<bridge>": trusted_host_interfaces, open ports from there
)

// BridgeGroup is the device group of every ournet bridge: how the static
// iptables rules and the forward chain's fail-closed rule know ournet's
// bridges, whatever their names.
const BridgeGroup uint32 = 0x6f75

// Priorities: the forward chain runs before iptables' filter table (0),
// so a packet it drops never reaches dockerd's ACCEPT rules; the
// masquerade after iptables' nat (100), as the bridge driver appends its
// MASQUERADE to POSTROUTING: a rule a user put there (an SNAT to a fixed
// address for a subnet) comes first, and the first to translate wins.
const (
	forwardPriority nftables.ChainPriority = -5
	natPriority     nftables.ChainPriority = 101
)

var table = &nftables.Table{Name: TableName, Family: nftables.TableFamilyINet}

// setKind is how a set's elements are made.
type setKind int

const (
	keys   setKind = iota // one key per element
	ranges                // an interval: a start element and an end element
)

// setDef is one of the table's sets. The IDs are fixed: an ID names a set
// inside a transaction, and the library's own allocator is a global
// counter not safe across connections.
type setDef struct {
	name string
	id   uint32
	kind setKind
	key  nftables.SetDatatype
}

var (
	ifname2 = nftables.MustConcatSetType(nftables.TypeIFName, nftables.TypeIFName)
	open4   = nftables.MustConcatSetType(nftables.TypeIFName, nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService)
	open6   = nftables.MustConcatSetType(nftables.TypeIFName, nftables.TypeIP6Addr, nftables.TypeInetProto, nftables.TypeInetService)
)

var (
	setNets      = &setDef{NetsSet, 1, keys, nftables.TypeIFName}
	setPublished = &setDef{PublishedSet, 2, keys, nftables.TypeIFName}
	setICC       = &setDef{ICCSet, 3, keys, ifname2}
	setUnprot4   = &setDef{Unprot4Set, 4, keys, nftables.TypeIFName}
	setUnprot6   = &setDef{Unprot6Set, 5, keys, nftables.TypeIFName}
	setInternal  = &setDef{InternalSet, 6, keys, nftables.TypeIFName}
	setMasq4     = &setDef{Masq4Set, 7, ranges, nftables.TypeIPAddr}
	setMasq6     = &setDef{Masq6Set, 8, ranges, nftables.TypeIP6Addr}
	setHairpin   = &setDef{HairpinSet, 9, keys, ifname2}
	setRouted4   = &setDef{Routed4Set, 10, keys, nftables.TypeIFName}
	setRouted6   = &setDef{Routed6Set, 11, keys, nftables.TypeIFName}
	setOpen4     = &setDef{Open4Set, 12, keys, open4}
	setOpen6     = &setDef{Open6Set, 13, keys, open6}
	setRoutedOwn = &setDef{RoutedOwnSet, 14, keys, ifname2}
	setTrusted   = &setDef{TrustedSet, 15, keys, ifname2}
	allSets      = []*setDef{setNets, setPublished, setICC, setUnprot4, setUnprot6, setInternal, setMasq4, setMasq6, setHairpin, setRouted4, setRouted6, setOpen4, setOpen6, setRoutedOwn, setTrusted}
)

func (d *setDef) set() *nftables.Set {
	// Concatenated keys in a hash set need no NFT_SET_CONCAT (that is
	// for intervals), and nft, loading the table as it lists it, sets
	// none: with it, the set was not the one ournet adds.
	s := &nftables.Set{Table: table, Name: d.name, ID: d.id, KeyType: d.key, Interval: d.kind == ranges}
	if d.key.Name == nftables.TypeIFName.Name || d.key.Name == ifname2.Name {
		// Interface names are strings, which nft prints in host order.
		s.KeyByteOrder = binaryutil.NativeEndian
	}
	return s
}

// same reports whether a set found in the table is this one.
func (d *setDef) same(s *nftables.Set) bool {
	return !s.IsMap && s.Interval == (d.kind == ranges) && !s.Concatenation && s.KeyType.Bytes == d.key.Bytes
}

func unprotSet(f iptables.Family) *setDef { return pick(f, setUnprot4, setUnprot6) }
func routedSet(f iptables.Family) *setDef { return pick(f, setRouted4, setRouted6) }
func openSet(f iptables.Family) *setDef   { return pick(f, setOpen4, setOpen6) }
func masqSet(f iptables.Family) *setDef   { return pick(f, setMasq4, setMasq6) }

func pick(f iptables.Family, v4, v6 *setDef) *setDef {
	if f == iptables.IPv6 {
		return v6
	}
	return v4
}

func nftChain(name string) *nftables.Chain { return &nftables.Chain{Name: name, Table: table} }

// owner is the comment every element of network id carries: by it the
// table's elements are known as a network's (drift, orphans, deletes).
func owner(id string) string { return "ournet:" + iptables.Short(id) }

// elem is one element as ournet writes it. end is, for ranges, the first
// key after the range (nil: it runs to the top of the address space).
type elem struct {
	set      *setDef
	key, end []byte
	comment  string
}

func (e elem) id() string { return e.set.name + "|" + string(e.key) + "|" + string(e.end) }

// elements are e as the kernel takes them (ranges: two).
func (e elem) elements() []nftables.SetElement {
	switch e.set.kind {
	case ranges:
		out := []nftables.SetElement{{Key: e.key, Comment: e.comment}}
		if e.end != nil {
			out = append(out, nftables.SetElement{Key: e.end, IntervalEnd: true})
		}
		return out
	}
	return []nftables.SetElement{{Key: e.key, Comment: e.comment}}
}

// overlaps reports whether two elements of a ranges set share an address.
func (e elem) overlaps(o elem) bool {
	if e.set != o.set {
		return false
	}
	if e.set.kind != ranges {
		return bytes.Equal(e.key, o.key)
	}
	below := func(a, b elem) bool { return a.end != nil && bytes.Compare(a.end, b.key) <= 0 }
	return !below(e, o) && !below(o, e)
}

// netElems are the elements network n should have, in a fixed order.
func netElems(n Network) []elem {
	c := owner(n.ID)
	br := nft.IfName(n.Bridge)
	out := []elem{{set: setNets, key: br, comment: c}}
	if n.Internal {
		out = append(out, elem{set: setInternal, key: br, comment: c})
		return append(out, iccElem(n, br, c)...)
	}
	out = append(out, elem{set: setPublished, key: br, comment: c})
	out = append(out, iccElem(n, br, c)...)
	for _, f := range []iptables.Family{iptables.IPv4, iptables.IPv6} {
		if n.Unprotected[f] {
			out = append(out, elem{set: unprotSet(f), key: br, comment: c})
		}
		if n.Routed[f] {
			out = append(out, elem{set: routedSet(f), key: br, comment: c})
		}
	}
	if n.Routed[iptables.IPv4] || n.Routed[iptables.IPv6] {
		out = append(out, elem{set: setRoutedOwn, key: concat(br, br), comment: c})
	}
	for _, name := range n.Trusted {
		if name == n.Bridge {
			continue // the network's own traffic: icc decides
		}
		out = append(out, elem{set: setTrusted, key: concat(nft.IfName(name), br), comment: c})
	}
	out = append(out, openElems(n, br, c)...)
	hairpin := false
	for _, f := range []iptables.Family{iptables.IPv4, iptables.IPv6} {
		if !n.Masquerade[f] {
			continue
		}
		subnets := n.subnets(f)
		slices.SortFunc(subnets, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
		for _, s := range subnets {
			lo, hi, top := bounds(s)
			if top {
				hi = nil
			}
			out = append(out, elem{set: masqSet(f), key: lo, end: hi, comment: c})
			hairpin = true
		}
	}
	if hairpin {
		out = append(out, elem{set: setHairpin, key: concat(br, br), comment: c})
	}
	return out
}

// openElems are the elements of n's open ports (bridge br), each once:
// those of a routed family, open from anywhere, and, when n has trusted
// host interfaces, every other family's too, open from those.
func openElems(n Network, br []byte, c string) []elem {
	var out []elem
	for _, o := range n.Open {
		a, f := o.Addr.Unmap(), iptables.IPv4
		if a.Is6() {
			f = iptables.IPv6
		}
		if !n.Routed[f] && len(n.Trusted) == 0 {
			continue
		}
		// Each field padded to 4 bytes, as the rule loads them; the port
		// in network order.
		e := elem{set: openSet(f), key: concat(br, a.AsSlice(), []byte{o.Proto, 0, 0, 0}, []byte{byte(o.Port >> 8), byte(o.Port), 0, 0}), comment: c}
		if !slices.ContainsFunc(out, func(x elem) bool { return x.id() == e.id() }) {
			out = append(out, e)
		}
	}
	return out
}

func iccElem(n Network, br []byte, c string) []elem {
	if !n.ICC {
		return nil
	}
	return []elem{{set: setICC, key: concat(br, br), comment: c}}
}

func concat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// bounds is p's first address and the first one after it (top: none, p
// runs to the end of the address space).
func bounds(p netip.Prefix) (lo, hi []byte, top bool) {
	p = p.Masked()
	lo = p.Addr().AsSlice()
	host := len(lo)*8 - p.Bits() // p's size is 2^host
	if host == len(lo)*8 {
		return lo, nil, true
	}
	hi = slices.Clone(lo)
	i, add := len(hi)-1-host/8, uint16(1)<<(host%8)
	for ; i >= 0 && add != 0; i-- {
		sum := uint16(hi[i]) + add
		hi[i], add = byte(sum), sum>>8
	}
	if add != 0 {
		return lo, nil, true
	}
	return lo, hi, false
}

// nftState is what table inet ournet holds, as far as drift and the fast
// path need to know.
type nftState struct {
	exists     bool
	legacy     bool // objects of another layout: the table is made anew
	baseIntact bool // the sets are there, the base chains hold their rules, no stray element
	// byOwner: network (12 characters) -> its elements, by elem.id.
	byOwner map[string]map[string]elem
	strays  []elem // elements that name no network
}

// baseChainIs says whether ch hooks hook at priority p.
func baseChainIs(ch *nftables.Chain, hook *nftables.ChainHook, p nftables.ChainPriority) bool {
	return ch.Hooknum != nil && *ch.Hooknum == *hook && ch.Priority != nil && *ch.Priority == p
}

// readNFT reads the table; an absent table is an empty state.
func readNFT(c nft.Conn) (*nftState, error) {
	s := &nftState{byOwner: map[string]map[string]elem{}}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("listing nftables chains: %w", err)
	}
	hooked := map[string]bool{}
	for _, ch := range chains {
		if ch.Table.Name != TableName {
			continue
		}
		s.exists = true
		switch ch.Name {
		case ForwardBase:
			hooked[ch.Name] = baseChainIs(ch, nftables.ChainHookForward, forwardPriority)
		case NATBase:
			hooked[ch.Name] = baseChainIs(ch, nftables.ChainHookPostrouting, natPriority)
		default:
			s.legacy = true // a network's chain of the layout before sets
		}
		// A base chain on another hook or priority (an older version's
		// masquerade came before iptables' nat) cannot be changed in place.
		s.legacy = s.legacy || (ch.Hooknum != nil && !hooked[ch.Name])
	}
	if !s.exists {
		return s, nil
	}
	sets, err := c.GetSets(table)
	if err != nil && !isNoEnt(err) {
		return nil, fmt.Errorf("listing the sets of table inet %s: %w", TableName, err)
	}
	found := map[string]bool{}
	for _, set := range sets {
		i := slices.IndexFunc(allSets, func(d *setDef) bool { return d.name == set.Name })
		if i < 0 || !allSets[i].same(set) {
			s.legacy = true
			continue
		}
		found[set.Name] = true
	}
	if s.legacy {
		return s, nil
	}
	s.baseIntact = len(found) == len(allSets)
	for _, d := range allSets {
		if !found[d.name] {
			continue
		}
		elems, err := c.GetSetElements(d.set())
		if err != nil && !errors.Is(err, os.ErrNotExist) && !isNoEnt(err) {
			return nil, fmt.Errorf("listing set %s: %w", d.name, err)
		}
		for _, e := range fromKernel(d, elems) {
			id, ok := strings.CutPrefix(e.comment, "ournet:")
			if !ok || id == "" {
				s.strays = append(s.strays, e)
				continue
			}
			if s.byOwner[id] == nil {
				s.byOwner[id] = map[string]elem{}
			}
			s.byOwner[id][e.id()] = e
		}
	}
	s.baseIntact = s.baseIntact && len(s.strays) == 0
	for name, want := range map[string][]nftRule{ForwardBase: forwardBaseRules(), NATBase: natBaseRules()} {
		if !hooked[name] {
			s.baseIntact = false
			continue
		}
		rules, err := c.GetRules(table, nftChain(name))
		if err != nil {
			return nil, fmt.Errorf("listing chain %s: %w", name, err)
		}
		s.baseIntact = s.baseIntact && sameComments(rules, want)
	}
	return s, nil
}

// fromKernel turns a set's elements as listed into elems: a ranges set's
// starts paired with their ends (the next end after each start: the
// intervals never overlap).
func fromKernel(d *setDef, elems []nftables.SetElement) []elem {
	if d.kind != ranges {
		out := make([]elem, 0, len(elems))
		for _, e := range elems {
			out = append(out, elem{set: d, key: e.Key, comment: e.Comment})
		}
		return out
	}
	slices.SortFunc(elems, func(a, b nftables.SetElement) int {
		if c := bytes.Compare(a.Key, b.Key); c != 0 {
			return c
		}
		// At one key, an end closes the interval before it: it comes
		// first.
		switch {
		case a.IntervalEnd == b.IntervalEnd:
			return 0
		case a.IntervalEnd:
			return -1
		}
		return 1
	})
	var out []elem
	for i, e := range elems {
		if e.IntervalEnd {
			continue
		}
		iv := elem{set: d, key: e.Key, comment: e.Comment}
		for _, f := range elems[i+1:] {
			if f.IntervalEnd {
				iv.end = f.Key
				break
			}
		}
		out = append(out, iv)
	}
	return out
}

// ids lists the networks (IDs cut to 12) that have elements in the table.
func (s *nftState) ids() map[string]bool {
	out := map[string]bool{}
	for id := range s.byOwner {
		out[id] = true
	}
	return out
}

// present is ids for Firewall.known, contents not known (nil); nil when
// the base is not intact.
func (s *nftState) present() map[string]*Network {
	if !s.baseIntact {
		return nil
	}
	out := map[string]*Network{}
	for id := range s.ids() {
		out[id] = nil
	}
	return out
}

func isNoEnt(err error) bool { return err != nil && strings.Contains(err.Error(), "no such file") }

func sameComments(have []*nftables.Rule, want []nftRule) bool {
	if len(have) != len(want) {
		return false
	}
	for i := range have {
		if commentOf(have[i]) != want[i].comment {
			return false
		}
	}
	return true
}

// matches reports whether n's elements in the table are exactly what
// createNFT writes.
func (s *nftState) matches(n Network) bool {
	if !s.baseIntact {
		return false
	}
	have := s.byOwner[iptables.Short(n.ID)]
	want := netElems(n)
	if len(have) != len(want) {
		return false
	}
	for _, e := range want {
		if _, ok := have[e.id()]; !ok {
			return false
		}
	}
	return true
}

// ensureBase queues the table, its sets and the base chains, creating
// what is missing, and rewrites the base chains' rules so they are never
// doubled. A table of another layout is deleted first; elements that name
// no network are deleted.
func ensureBase(c nft.Conn, s *nftState) error {
	if s.legacy {
		c.DelTable(table)
		*s = nftState{byOwner: map[string]map[string]elem{}}
	}
	c.AddTable(table)
	for _, d := range allSets {
		if err := c.AddSet(d.set(), nil); err != nil {
			return err
		}
	}
	for _, e := range s.strays {
		if err := c.SetDeleteElements(e.set.set(), e.elements()); err != nil {
			return err
		}
	}
	s.strays = nil
	accept := nftables.ChainPolicyAccept
	fwd := c.AddChain(&nftables.Chain{Name: ForwardBase, Table: table, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityRef(forwardPriority), Policy: &accept})
	nat := c.AddChain(&nftables.Chain{Name: NATBase, Table: table, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityRef(natPriority), Policy: &accept})
	for _, b := range []struct {
		ch    *nftables.Chain
		rules []nftRule
	}{{fwd, forwardBaseRules()}, {nat, natBaseRules()}} {
		c.FlushChain(b.ch)
		for _, r := range b.rules {
			c.AddRule(r.in(b.ch))
		}
	}
	return nil
}

// createNFT queues network n's elements, none of which exists yet.
func createNFT(c nft.Conn, n Network) error {
	return addElems(c, netElems(n))
}

func addElems(c nft.Conn, es []elem) error {
	for _, e := range es {
		if err := c.SetAddElements(e.set.set(), e.elements()); err != nil {
			return err
		}
	}
	return nil
}

// rewriteNFT queues n's elements rewritten whole, whatever the table
// holds of them now (s: as read in this round, and kept current): its own
// are deleted, and any other network's that has one of its keys or
// overlaps one of its subnets (stale: it would refuse n's own).
func rewriteNFT(c nft.Conn, s *nftState, n Network) error {
	want := netElems(n)
	short := iptables.Short(n.ID)
	if err := delNFT(c, s, short); err != nil {
		return err
	}
	for id, have := range s.byOwner {
		for k, e := range have {
			if slices.ContainsFunc(want, e.overlaps) {
				if err := c.SetDeleteElements(e.set.set(), e.elements()); err != nil {
					return err
				}
				delete(have, k)
			}
		}
		if len(have) == 0 {
			delete(s.byOwner, id)
		}
	}
	if err := addElems(c, want); err != nil {
		return err
	}
	s.byOwner[short] = map[string]elem{}
	for _, e := range want {
		s.byOwner[short][e.id()] = e
	}
	return nil
}

// delNFT queues the removal of network id's elements (those read in s).
func delNFT(c nft.Conn, s *nftState, id string) error {
	for _, e := range s.byOwner[id] {
		if err := c.SetDeleteElements(e.set.set(), e.elements()); err != nil {
			return err
		}
	}
	delete(s.byOwner, id)
	return nil
}
