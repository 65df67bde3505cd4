package firewall

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
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
	NetPrefix   = "net-"        // net-<id>: what may enter the network's bridge
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

func netChain(id string) *nftables.Chain {
	return &nftables.Chain{Name: NetPrefix + iptables.Short(id), Table: table}
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

// owner is the network a rule's comment names ("" for a base rule).
func owner(r *nftables.Rule) string {
	rest, ok := strings.CutPrefix(commentOf(r), "ournet:")
	if !ok {
		return ""
	}
	id, _, _ := strings.Cut(rest, " ")
	return id
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
	for _, m := range []*nftables.Set{intoMap(), outofMap()} {
		if err := c.AddSet(m, nil); err != nil {
			return err
		}
	}
	accept := nftables.ChainPolicyAccept
	fwd := c.AddChain(&nftables.Chain{Name: ForwardBase, Table: table, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityRef(forwardPriority), Policy: &accept})
	nat := c.AddChain(&nftables.Chain{Name: NATBase, Table: table, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityRef(natPriority), Policy: &accept})
	_ = nat // its rules are the networks' masquerades: left as they are
	c.FlushChain(fwd)
	for _, r := range forwardBaseRules() {
		c.AddRule(r.in(fwd))
	}
	return nil
}

// nftState is what table inet ournet holds, as far as drift and the fast
// path need to know.
type nftState struct {
	exists     bool
	baseIntact bool                        // the forward chain holds its rules, the nat chain exists
	chains     map[string][]string         // net-<id> -> its rules' comments
	into       map[string]string           // bridge -> the chain its element jumps to
	outof      map[string]bool             // bridges with a drop element
	nat        map[string][]string         // network -> its masquerade rules' comments
	natRules   map[string][]*nftables.Rule // network -> its masquerade rules (handles)
}

// readNFT reads the table; an absent table is an empty state.
func readNFT(c nft.Conn, withRules bool) (*nftState, error) {
	s := &nftState{chains: map[string][]string{}, into: map[string]string{}, outof: map[string]bool{},
		nat: map[string][]string{}, natRules: map[string][]*nftables.Rule{}}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("listing nftables chains: %w", err)
	}
	var fwdOK, natOK bool
	for _, ch := range chains {
		if ch.Table.Name != TableName {
			continue
		}
		s.exists = true
		switch {
		case ch.Name == ForwardBase:
			fwdOK = ch.Hooknum != nil && *ch.Hooknum == *nftables.ChainHookForward
		case ch.Name == NATBase:
			natOK = ch.Hooknum != nil && *ch.Hooknum == *nftables.ChainHookPostrouting
		case strings.HasPrefix(ch.Name, NetPrefix):
			s.chains[ch.Name] = nil
		}
	}
	if !s.exists {
		return s, nil
	}
	for _, m := range []*nftables.Set{intoMap(), outofMap()} {
		elems, err := c.GetSetElements(m)
		if err != nil && !errors.Is(err, os.ErrNotExist) && !isNoEnt(err) {
			return nil, fmt.Errorf("listing map %s: %w", m.Name, err)
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
	if fwdOK {
		rules, err := c.GetRules(table, nftChain(ForwardBase))
		if err != nil {
			return nil, fmt.Errorf("listing chain %s: %w", ForwardBase, err)
		}
		s.baseIntact = sameComments(rules, forwardBaseRules())
	}
	if natOK {
		rules, err := c.GetRules(table, nftChain(NATBase))
		if err != nil {
			return nil, fmt.Errorf("listing chain %s: %w", NATBase, err)
		}
		for _, r := range rules {
			id := owner(r)
			s.nat[id] = append(s.nat[id], commentOf(r))
			s.natRules[id] = append(s.natRules[id], r)
		}
	}
	s.baseIntact = s.baseIntact && natOK
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

// ids lists the networks (IDs cut to 12) that have objects in the table.
func (s *nftState) ids() map[string]bool {
	out := map[string]bool{}
	for ch := range s.chains {
		out[strings.TrimPrefix(ch, NetPrefix)] = true
	}
	for _, ch := range s.into {
		out[strings.TrimPrefix(ch, NetPrefix)] = true
	}
	for id := range s.nat {
		if id != "" {
			out[id] = true
		}
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

// matchesNFT reports whether n's objects in the table are exactly what
// addNFT writes.
func (s *nftState) matches(n Network) bool {
	if !s.baseIntact {
		return false
	}
	ch := netChain(n.ID).Name
	have, ok := s.chains[ch]
	if !ok || !equalStrings(have, comments(netRules(n))) {
		return false
	}
	if s.into[n.Bridge] != ch || s.outof[n.Bridge] != n.Internal {
		return false
	}
	return equalStrings(s.nat[iptables.Short(n.ID)], comments(natRules(n)))
}

func comments(rs []nftRule) []string {
	out := []string{}
	for _, r := range rs {
		out = append(out, r.comment)
	}
	return out
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// createNFT queues network n's objects, none of which exists yet.
func createNFT(c nft.Conn, n Network) error {
	ch := c.AddChain(netChain(n.ID))
	return fillNFT(c, ch, n)
}

func fillNFT(c nft.Conn, ch *nftables.Chain, n Network) error {
	for _, r := range netRules(n) {
		c.AddRule(r.in(ch))
	}
	for _, r := range natRules(n) {
		c.AddRule(r.in(nftChain(NATBase)))
	}
	if err := c.SetAddElements(intoMap(), []nftables.SetElement{{Key: nft.IfName(n.Bridge),
		VerdictData: &expr.Verdict{Kind: expr.VerdictJump, Chain: ch.Name}}}); err != nil {
		return err
	}
	if n.Internal {
		return c.SetAddElements(outofMap(), []nftables.SetElement{{Key: nft.IfName(n.Bridge),
			VerdictData: &expr.Verdict{Kind: expr.VerdictDrop}}})
	}
	return nil
}

// rewriteNFT queues n's objects rewritten whole, whatever the table holds
// of them now (s: as read in this round). Its chain is flushed, not
// deleted, so that it never goes missing.
func rewriteNFT(c nft.Conn, s *nftState, n Network) error {
	ch, err := clearNFT(c, s, iptables.Short(n.ID), n.Bridge)
	if err != nil {
		return err
	}
	return fillNFT(c, ch, n)
}

// delNFT queues the removal of network id's objects.
func delNFT(c nft.Conn, s *nftState, id string) error {
	ch, err := clearNFT(c, s, id, "")
	if err != nil {
		return err
	}
	c.DelChain(ch)
	return nil
}

// clearNFT queues the removal of what network id has in the table (its
// chain's rules, its masquerade rules, the elements of bridge and of any
// other bridge whose element jumps to its chain) and returns its chain,
// which it creates if missing. An element not known to be there is created
// first, in the same transaction, so that deleting it cannot fail: an
// absent object fails the whole batch.
func clearNFT(c nft.Conn, s *nftState, id, bridge string) (*nftables.Chain, error) {
	ch := c.AddChain(netChain(id))
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
		for _, m := range []*nftables.Set{intoMap(), outofMap()} {
			v := &expr.Verdict{Kind: expr.VerdictJump, Chain: ch.Name}
			if m.Name == OutofMap {
				v = &expr.Verdict{Kind: expr.VerdictDrop}
			}
			if m.Name == IntoMap && s.into[br] != "" {
				// Present, maybe jumping elsewhere: delete what is there.
				if err := c.SetDeleteElements(m, []nftables.SetElement{{Key: nft.IfName(br)}}); err != nil {
					return nil, err
				}
				continue
			}
			if m.Name == OutofMap && s.outof[br] {
				if err := c.SetDeleteElements(m, []nftables.SetElement{{Key: nft.IfName(br)}}); err != nil {
					return nil, err
				}
				continue
			}
			if err := c.SetAddElements(m, []nftables.SetElement{{Key: nft.IfName(br), VerdictData: v}}); err != nil {
				return nil, err
			}
			if err := c.SetDeleteElements(m, []nftables.SetElement{{Key: nft.IfName(br)}}); err != nil {
				return nil, err
			}
		}
	}
	for _, r := range s.natRules[id] {
		if err := c.DelRule(&nftables.Rule{Table: table, Chain: nftChain(NATBase), Handle: r.Handle}); err != nil {
			return nil, err
		}
	}
	c.FlushChain(ch)
	return ch, nil
}
