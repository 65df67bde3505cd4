package firewall

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/ournet/ournet/internal/iptables"
	"github.com/ournet/ournet/internal/nft"
)

// Names in table inet ournet (see the package comment).
const (
	TableName   = "ournet"
	ForwardBase = "forward"     // hook forward
	NATBase     = "postrouting" // hook postrouting
	IntoMap     = "into"        // bridge : jump net-<id>
	OutofMap    = "outof"       // an internal network's bridge : drop
	Masq4Map    = "masq4"       // an IPv4 subnet : jump nat-<id>
	Masq6Map    = "masq6"       // an IPv6 subnet : jump nat-<id>
	NetPrefix   = "net-"        // net-<id>: what may enter the network's bridge
	NATPrefix   = "nat-"        // nat-<id>: the network's masquerade
)

// BridgeGroup is the device group of every ournet bridge: how the static
// iptables rules and the forward chain's fail-closed rule know ournet's
// bridges, whatever their names.
const BridgeGroup uint32 = 0x6f75

// Priorities: the forward chain runs before iptables' filter table (0),
// so a packet it drops never reaches dockerd's ACCEPT rules; the
// masquerade before iptables' nat (100), as OURNET-POSTROUTING was first
// in POSTROUTING.
const (
	forwardPriority nftables.ChainPriority = -5
	natPriority     nftables.ChainPriority = 95
)

var table = &nftables.Table{Name: TableName, Family: nftables.TableFamilyINet}

// The maps have fixed IDs: an ID names a set inside a transaction, and
// the library's own allocator is a global counter not safe across
// connections.
func intoMap() *nftables.Set  { return ifMap(IntoMap, 1) }
func outofMap() *nftables.Set { return ifMap(OutofMap, 2) }

func ifMap(name string, id uint32) *nftables.Set {
	return &nftables.Set{Table: table, Name: name, ID: id, IsMap: true,
		KeyType: nftables.TypeIFName, DataType: nftables.TypeVerdict,
		// Interface names are strings, which nft prints in host order.
		KeyByteOrder: binaryutil.NativeEndian}
}

// masqMap maps the subnets of one family to their network's nat chain.
// A map, not a rule per subnet in the base chain: the kernel copies a
// chain's rules whole at every commit that changes it, so a rule added to
// a chain of 500 costs more than one added to a chain of its own.
func masqMap(v6 bool) *nftables.Set {
	if v6 {
		return &nftables.Set{Table: table, Name: Masq6Map, ID: 4, IsMap: true, Interval: true,
			KeyType: nftables.TypeIP6Addr, DataType: nftables.TypeVerdict}
	}
	return &nftables.Set{Table: table, Name: Masq4Map, ID: 3, IsMap: true, Interval: true,
		KeyType: nftables.TypeIPAddr, DataType: nftables.TypeVerdict}
}

func netChain(id string) *nftables.Chain {
	return &nftables.Chain{Name: NetPrefix + iptables.Short(id), Table: table}
}

func natChain(id string) *nftables.Chain {
	return &nftables.Chain{Name: NATPrefix + iptables.Short(id), Table: table}
}

func nftChain(name string) *nftables.Chain { return &nftables.Chain{Name: name, Table: table} }

// comment is a rule's userdata: the comment nft prints, which names the
// rule's network ("ournet:<id>") and what the rule is for. Drift is
// judged on these: a rule edited, added or removed by hand changes them.
func comment(s string) []byte { return userdata.AppendString(nil, userdata.TypeComment, s) }

func commentOf(r *nftables.Rule) string {
	s, _ := userdata.GetString(r.UserData, userdata.TypeComment)
	return s
}

// nftRule is one rule as ournet writes it.
type nftRule struct {
	comment string
	exprs   []expr.Any
}

func (r nftRule) in(ch *nftables.Chain) *nftables.Rule {
	return &nftables.Rule{Table: table, Chain: ch, Exprs: r.exprs, UserData: comment(r.comment)}
}

// ensureBase queues the table, the maps and the base chains, creating what
// is missing, and rewrites the base chains' rules so they are never
// doubled.
func ensureBase(c nft.Conn) error {
	c.AddTable(table)
	for _, m := range []*nftables.Set{intoMap(), outofMap(), masqMap(false), masqMap(true)} {
		if err := c.AddSet(m, nil); err != nil {
			return err
		}
	}
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

// interval is one element of a masquerade map: a start (which jumps to a
// network's nat chain) and the end that closes it (none for a range that
// runs to the top of the address space).
type interval struct {
	v6         bool
	start, end nftables.SetElement
	hasEnd     bool
}

func (iv interval) target() string { return jumpTarget(iv.start) }

// elements are the interval's elements, as a delete names them.
func (iv interval) elements() []nftables.SetElement {
	out := []nftables.SetElement{{Key: iv.start.Key}}
	if iv.hasEnd {
		out = append(out, nftables.SetElement{Key: iv.end.Key, IntervalEnd: true})
	}
	return out
}

// overlaps reports whether the interval covers any address of p.
func (iv interval) overlaps(p netip.Prefix) bool {
	lo, hi, top := bounds(p)
	if p.Addr().Is6() != iv.v6 {
		return false
	}
	if !top && bytes.Compare(iv.start.Key, hi) >= 0 {
		return false
	}
	return !iv.hasEnd || bytes.Compare(lo, iv.end.Key) < 0
}

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

// masqIntervals are the masquerade elements network n should have.
func masqIntervals(n Network) []interval {
	if n.Internal {
		return nil
	}
	ch := natChain(n.ID).Name
	var out []interval
	for _, f := range []iptables.Family{iptables.IPv4, iptables.IPv6} {
		if !n.Masquerade[f] {
			continue
		}
		subnets := n.subnets(f)
		// In address order, as the kernel lists them.
		slices.SortFunc(subnets, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
		for _, s := range subnets {
			lo, hi, top := bounds(s)
			iv := interval{v6: f == iptables.IPv6,
				start: nftables.SetElement{Key: lo, VerdictData: &expr.Verdict{Kind: expr.VerdictJump, Chain: ch}}}
			if !top {
				iv.end, iv.hasEnd = nftables.SetElement{Key: hi, IntervalEnd: true}, true
			}
			out = append(out, iv)
		}
	}
	return out
}

// nftState is what table inet ournet holds, as far as drift and the fast
// path need to know.
type nftState struct {
	exists     bool
	baseIntact bool                // the base chains hold their rules
	chains     map[string][]string // net-<id>, nat-<id> -> its rules' comments (nil: not read)
	into       map[string]string   // bridge -> the chain its element jumps to
	outof      map[string]bool     // bridges with a drop element
	masq       []interval
}

// readNFT reads the table; an absent table is an empty state. withRules
// reads the networks' chains' rules too.
func readNFT(c nft.Conn, withRules bool) (*nftState, error) {
	s := &nftState{chains: map[string][]string{}, into: map[string]string{}, outof: map[string]bool{}}
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
		switch {
		case ch.Name == ForwardBase:
			hooked[ch.Name] = ch.Hooknum != nil && *ch.Hooknum == *nftables.ChainHookForward
		case ch.Name == NATBase:
			hooked[ch.Name] = ch.Hooknum != nil && *ch.Hooknum == *nftables.ChainHookPostrouting
		case strings.HasPrefix(ch.Name, NetPrefix), strings.HasPrefix(ch.Name, NATPrefix):
			s.chains[ch.Name] = nil
		}
	}
	if !s.exists {
		return s, nil
	}
	for _, m := range []*nftables.Set{intoMap(), outofMap()} {
		elems, err := elements(c, m)
		if err != nil {
			return nil, err
		}
		for _, e := range elems {
			br := strings.TrimRight(string(e.Key), "\x00")
			if m.Name == IntoMap {
				s.into[br] = jumpTarget(e)
			} else {
				s.outof[br] = true
			}
		}
	}
	for _, v6 := range []bool{false, true} {
		elems, err := elements(c, masqMap(v6))
		if err != nil {
			return nil, err
		}
		s.masq = append(s.masq, pairIntervals(v6, elems)...)
	}
	s.baseIntact = true
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
	if withRules {
		for name := range s.chains {
			rules, err := c.GetRules(table, nftChain(name))
			if err != nil {
				return nil, fmt.Errorf("listing chain %s: %w", name, err)
			}
			cs := []string{}
			for _, r := range rules {
				cs = append(cs, commentOf(r))
			}
			s.chains[name] = cs
		}
	}
	return s, nil
}

// elements lists a map's elements; a missing map has none.
func elements(c nft.Conn, m *nftables.Set) ([]nftables.SetElement, error) {
	elems, err := c.GetSetElements(m)
	if err != nil && !errors.Is(err, os.ErrNotExist) && !isNoEnt(err) {
		return nil, fmt.Errorf("listing map %s: %w", m.Name, err)
	}
	return elems, nil
}

// pairIntervals pairs each start element of an interval map with its end:
// the next end element after it (the intervals never overlap).
func pairIntervals(v6 bool, elems []nftables.SetElement) []interval {
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
	var out []interval
	for i, e := range elems {
		if e.IntervalEnd {
			continue
		}
		iv := interval{v6: v6, start: e}
		for _, f := range elems[i+1:] {
			if f.IntervalEnd {
				iv.end, iv.hasEnd = f, true
				break
			}
		}
		out = append(out, iv)
	}
	return out
}

// ids lists the networks (IDs cut to 12) that have objects in the table.
func (s *nftState) ids() map[string]bool {
	out := map[string]bool{}
	add := func(ch string) {
		for _, p := range []string{NetPrefix, NATPrefix} {
			if id, ok := strings.CutPrefix(ch, p); ok {
				out[id] = true
			}
		}
	}
	for ch := range s.chains {
		add(ch)
	}
	for _, ch := range s.into {
		add(ch)
	}
	for _, iv := range s.masq {
		add(iv.target())
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

// jumpTarget is the chain a map element's verdict jumps to ("?" if it is
// another verdict). The library hands a dumped element's verdict over
// undecoded, as the netlink attributes of NFTA_DATA_VERDICT.
func jumpTarget(e nftables.SetElement) string {
	if e.VerdictData != nil {
		if e.VerdictData.Kind == expr.VerdictJump {
			return e.VerdictData.Chain
		}
		return "?"
	}
	attrs, err := netlink.UnmarshalAttributes(e.Val)
	if err != nil {
		return "?"
	}
	var code int32
	chain := ""
	for _, a := range attrs {
		switch a.Type {
		case unix.NFTA_VERDICT_CODE:
			if len(a.Data) == 4 {
				code = int32(binary.BigEndian.Uint32(a.Data))
			}
		case unix.NFTA_VERDICT_CHAIN:
			chain = strings.TrimRight(string(a.Data), "\x00")
		}
	}
	if code != unix.NFT_JUMP || chain == "" {
		return "?"
	}
	return chain
}

func isNoEnt(err error) bool { return err != nil && strings.Contains(err.Error(), "no such file") }

func sameComments(have []*nftables.Rule, want []nftRule) bool {
	return slices.Equal(commentsOf(have), comments(want))
}

func commentsOf(rs []*nftables.Rule) []string {
	out := []string{}
	for _, r := range rs {
		out = append(out, commentOf(r))
	}
	return out
}

func comments(rs []nftRule) []string {
	out := []string{}
	for _, r := range rs {
		out = append(out, r.comment)
	}
	return out
}

// matches reports whether n's objects in the table are exactly what
// fillNFT writes.
func (s *nftState) matches(n Network) bool {
	if !s.baseIntact {
		return false
	}
	ch := netChain(n.ID).Name
	if have, ok := s.chains[ch]; !ok || !slices.Equal(have, comments(netRules(n))) {
		return false
	}
	if s.into[n.Bridge] != ch || s.outof[n.Bridge] != n.Internal {
		return false
	}
	nat := natChain(n.ID).Name
	want := masqIntervals(n)
	have, ok := s.chains[nat]
	switch {
	case len(want) == 0:
		return !ok && len(s.masqOf(nat)) == 0
	case !ok || !slices.Equal(have, comments(natRules(n))):
		return false
	}
	got := s.masqOf(nat)
	if len(got) != len(want) {
		return false
	}
	for i := range got {
		if got[i].v6 != want[i].v6 || !bytes.Equal(got[i].start.Key, want[i].start.Key) ||
			got[i].hasEnd != want[i].hasEnd || (got[i].hasEnd && !bytes.Equal(got[i].end.Key, want[i].end.Key)) {
			return false
		}
	}
	return true
}

// masqOf lists the masquerade intervals that jump to chain, IPv4 first,
// each family in address order (as masqIntervals lists them for subnets
// in that order).
func (s *nftState) masqOf(chain string) []interval {
	var out []interval
	for _, iv := range s.masq {
		if iv.target() == chain {
			out = append(out, iv)
		}
	}
	return out
}

// createNFT queues network n's objects, none of which exists yet.
func createNFT(c nft.Conn, n Network) error {
	return fillNFT(c, c.AddChain(netChain(n.ID)), n)
}

// fillNFT queues n's rules into its (empty) chain, its elements, and its
// nat chain with its masquerade elements, if it masquerades.
func fillNFT(c nft.Conn, ch *nftables.Chain, n Network) error {
	for _, r := range netRules(n) {
		c.AddRule(r.in(ch))
	}
	if err := c.SetAddElements(intoMap(), []nftables.SetElement{{Key: nft.IfName(n.Bridge),
		VerdictData: &expr.Verdict{Kind: expr.VerdictJump, Chain: ch.Name}}}); err != nil {
		return err
	}
	if n.Internal {
		if err := c.SetAddElements(outofMap(), []nftables.SetElement{{Key: nft.IfName(n.Bridge),
			VerdictData: &expr.Verdict{Kind: expr.VerdictDrop}}}); err != nil {
			return err
		}
	}
	ivs := masqIntervals(n)
	if len(ivs) == 0 {
		return nil
	}
	nat := c.AddChain(natChain(n.ID))
	for _, r := range natRules(n) {
		c.AddRule(r.in(nat))
	}
	for _, iv := range ivs {
		elems := []nftables.SetElement{iv.start}
		if iv.hasEnd {
			elems = append(elems, iv.end)
		}
		if err := c.SetAddElements(masqMap(iv.v6), elems); err != nil {
			return err
		}
	}
	return nil
}

// rewriteNFT queues n's objects rewritten whole, whatever the table holds
// of them now (s: as read in this round). Its chain is flushed, not
// deleted, so that it never goes missing.
func rewriteNFT(c nft.Conn, s *nftState, n Network) error {
	ch, nat, err := clearNFT(c, s, iptables.Short(n.ID), n.Bridge, n.Subnets)
	if err != nil {
		return err
	}
	if len(masqIntervals(n)) == 0 {
		c.DelChain(nat)
	}
	return fillNFT(c, ch, n)
}

// delNFT queues the removal of network id's objects.
func delNFT(c nft.Conn, s *nftState, id string) error {
	ch, nat, err := clearNFT(c, s, id, "", nil)
	if err != nil {
		return err
	}
	c.DelChain(ch)
	c.DelChain(nat)
	return nil
}

// clearNFT queues the removal of what network id has in the table: its
// chains' rules, the elements of bridge and of any other bridge whose
// element jumps to its chain, its masquerade elements and any that covers
// one of subnets (a stale one would refuse the network's own). It returns
// its two chains, which it creates if missing. An element not known to be
// there is created first, in the same transaction, so that deleting it
// cannot fail: an absent object fails the whole batch.
func clearNFT(c nft.Conn, s *nftState, id, bridge string, subnets []netip.Prefix) (ch, nat *nftables.Chain, err error) {
	ch, nat = c.AddChain(netChain(id)), c.AddChain(natChain(id))
	bridges := map[string]bool{}
	if bridge != "" {
		bridges[bridge] = true
	}
	for br, target := range s.into {
		if target == ch.Name {
			bridges[br] = true
		}
	}
	for br := range bridges {
		key := []nftables.SetElement{{Key: nft.IfName(br)}}
		if s.into[br] == "" {
			if err := c.SetAddElements(intoMap(), []nftables.SetElement{{Key: nft.IfName(br),
				VerdictData: &expr.Verdict{Kind: expr.VerdictJump, Chain: ch.Name}}}); err != nil {
				return nil, nil, err
			}
		}
		if err := c.SetDeleteElements(intoMap(), key); err != nil {
			return nil, nil, err
		}
		if !s.outof[br] {
			if err := c.SetAddElements(outofMap(), []nftables.SetElement{{Key: nft.IfName(br),
				VerdictData: &expr.Verdict{Kind: expr.VerdictDrop}}}); err != nil {
				return nil, nil, err
			}
		}
		if err := c.SetDeleteElements(outofMap(), key); err != nil {
			return nil, nil, err
		}
	}
	for _, iv := range s.masq {
		stale := iv.target() == nat.Name
		for _, p := range subnets {
			stale = stale || iv.overlaps(p)
		}
		if stale {
			if err := c.SetDeleteElements(masqMap(iv.v6), iv.elements()); err != nil {
				return nil, nil, err
			}
		}
	}
	c.FlushChain(ch)
	c.FlushChain(nat)
	return ch, nat, nil
}
