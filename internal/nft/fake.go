package nft

import (
	"fmt"
	"os"
	"slices"
	"sync"
	"syscall"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
)

// Fake is an in-memory nftables for tests without root: Dial hands out
// connections that queue changes and apply them on Flush, all or nothing,
// refusing what the kernel refuses (a missing table, chain, set, element
// or rule; a chain deleted while it has rules or a map element jumps to
// it; a base chain's hook changed). Rules are kept as given, each with a
// handle of its own.
type Fake struct {
	mu     sync.Mutex
	tables map[string]*fakeTable // by family and name
	// Transactions counts the successful Flushes that had changes.
	Transactions int
	// Fail, if set, is asked at each Flush: an error fails it.
	Fail func() error
}

type fakeTable struct {
	t      nftables.Table
	handle uint64 // the last rule handle handed out
	chains map[string]*fakeChain
	sets   map[string]map[string]nftables.SetElement // set -> key -> element
	defs   map[string]nftables.Set                   // set -> as created
}

type fakeChain struct {
	c     nftables.Chain
	rules []*nftables.Rule
}

// NewFake returns an empty ruleset.
func NewFake() *Fake { return &Fake{tables: map[string]*fakeTable{}} }

// Dial opens a connection to the fake (a dial function for New's users).
func (k *Fake) Dial() (Conn, error) { return &fakeConn{k: k}, nil }

func tableKey(t *nftables.Table) string { return fmt.Sprintf("%d/%s", t.Family, t.Name) }

func (t *fakeTable) clone() *fakeTable {
	c := &fakeTable{t: t.t, handle: t.handle, chains: map[string]*fakeChain{}, sets: map[string]map[string]nftables.SetElement{}, defs: map[string]nftables.Set{}}
	for n, d := range t.defs {
		c.defs[n] = d
	}
	for n, ch := range t.chains {
		c.chains[n] = &fakeChain{c: ch.c, rules: slices.Clone(ch.rules)}
	}
	for n, s := range t.sets {
		m := map[string]nftables.SetElement{}
		for k, e := range s {
			m[k] = e
		}
		c.sets[n] = m
	}
	return c
}

type fakeConn struct {
	k   *Fake
	ops []func(map[string]*fakeTable) error
}

func (c *fakeConn) queue(op func(map[string]*fakeTable) error) { c.ops = append(c.ops, op) }

func enoent(what string) error { return fmt.Errorf("%s: %w", what, syscall.ENOENT) }

func lookup(ts map[string]*fakeTable, t *nftables.Table) (*fakeTable, error) {
	ft := ts[tableKey(t)]
	if ft == nil {
		return nil, enoent("table " + t.Name)
	}
	return ft, nil
}

func (c *fakeConn) AddTable(t *nftables.Table) *nftables.Table {
	c.queue(func(ts map[string]*fakeTable) error {
		if ts[tableKey(t)] == nil {
			ts[tableKey(t)] = &fakeTable{t: *t, chains: map[string]*fakeChain{}, sets: map[string]map[string]nftables.SetElement{}, defs: map[string]nftables.Set{}}
		}
		return nil
	})
	return t
}

func (c *fakeConn) DelTable(t *nftables.Table) {
	c.queue(func(ts map[string]*fakeTable) error {
		if _, err := lookup(ts, t); err != nil {
			return err
		}
		delete(ts, tableKey(t))
		return nil
	})
}

func (c *fakeConn) AddSet(s *nftables.Set, vals []nftables.SetElement) error {
	c.queue(func(ts map[string]*fakeTable) error {
		ft, err := lookup(ts, s.Table)
		if err != nil {
			return err
		}
		if ft.sets[s.Name] == nil {
			ft.sets[s.Name] = map[string]nftables.SetElement{}
			d := *s
			d.Table = nil
			ft.defs[s.Name] = d
		} else if d := ft.defs[s.Name]; d.IsMap != s.IsMap || d.Interval != s.Interval || d.Concatenation != s.Concatenation || d.KeyType.Name != s.KeyType.Name {
			return fmt.Errorf("set %s exists with another type: %w", s.Name, syscall.EEXIST)
		}
		return addElems(ft, s.Name, vals)
	})
	return nil
}

func addElems(ft *fakeTable, set string, vals []nftables.SetElement) error {
	m := ft.sets[set]
	if m == nil {
		return enoent("set " + set)
	}
	for _, v := range vals {
		if v.VerdictData != nil && v.VerdictData.Kind == expr.VerdictJump && ft.chains[v.VerdictData.Chain] == nil {
			return enoent("chain " + v.VerdictData.Chain)
		}
		m[elemKey(v)] = v
	}
	return nil
}

// elemKey tells elements apart as the kernel does: an interval's end is
// another element than a start with the same key.
func elemKey(v nftables.SetElement) string {
	if v.IntervalEnd {
		return string(v.Key) + "/end"
	}
	return string(v.Key)
}

func (c *fakeConn) AddChain(ch *nftables.Chain) *nftables.Chain {
	c.queue(func(ts map[string]*fakeTable) error {
		ft, err := lookup(ts, ch.Table)
		if err != nil {
			return err
		}
		if have := ft.chains[ch.Name]; have != nil {
			if ch.Hooknum != nil && (have.c.Hooknum == nil || *have.c.Hooknum != *ch.Hooknum) {
				return fmt.Errorf("chain %s: %w", ch.Name, syscall.EOPNOTSUPP)
			}
			return nil
		}
		ft.chains[ch.Name] = &fakeChain{c: *ch}
		return nil
	})
	return ch
}

func (c *fakeConn) chainOp(ch *nftables.Chain, op func(*fakeTable, *fakeChain) error) {
	c.queue(func(ts map[string]*fakeTable) error {
		ft, err := lookup(ts, ch.Table)
		if err != nil {
			return err
		}
		fc := ft.chains[ch.Name]
		if fc == nil {
			return enoent("chain " + ch.Name)
		}
		return op(ft, fc)
	})
}

func (c *fakeConn) FlushChain(ch *nftables.Chain) {
	c.chainOp(ch, func(_ *fakeTable, fc *fakeChain) error { fc.rules = nil; return nil })
}

func (c *fakeConn) DelChain(ch *nftables.Chain) {
	c.chainOp(ch, func(ft *fakeTable, fc *fakeChain) error {
		if len(fc.rules) > 0 {
			return fmt.Errorf("chain %s has rules: %w", ch.Name, syscall.EBUSY)
		}
		for _, s := range ft.sets {
			for _, e := range s {
				if e.VerdictData != nil && e.VerdictData.Chain == ch.Name {
					return fmt.Errorf("chain %s is jumped to: %w", ch.Name, syscall.EBUSY)
				}
			}
		}
		delete(ft.chains, ch.Name)
		return nil
	})
}

func (c *fakeConn) AddRule(r *nftables.Rule) *nftables.Rule {
	c.chainOp(r.Chain, func(ft *fakeTable, fc *fakeChain) error {
		ft.handle++
		kept := *r
		kept.Handle = ft.handle
		fc.rules = append(fc.rules, &kept)
		return nil
	})
	return r
}

func (c *fakeConn) DelRule(r *nftables.Rule) error {
	c.chainOp(r.Chain, func(_ *fakeTable, fc *fakeChain) error {
		for i, have := range fc.rules {
			if have.Handle == r.Handle {
				fc.rules = slices.Delete(fc.rules, i, i+1)
				return nil
			}
		}
		return enoent(fmt.Sprintf("rule %d", r.Handle))
	})
	return nil
}

func (c *fakeConn) SetAddElements(s *nftables.Set, vals []nftables.SetElement) error {
	c.queue(func(ts map[string]*fakeTable) error {
		ft, err := lookup(ts, s.Table)
		if err != nil {
			return err
		}
		return addElems(ft, s.Name, vals)
	})
	return nil
}

func (c *fakeConn) SetDeleteElements(s *nftables.Set, vals []nftables.SetElement) error {
	c.queue(func(ts map[string]*fakeTable) error {
		ft, err := lookup(ts, s.Table)
		if err != nil {
			return err
		}
		m := ft.sets[s.Name]
		if m == nil {
			return enoent("set " + s.Name)
		}
		for _, v := range vals {
			if _, ok := m[elemKey(v)]; !ok {
				return enoent("element")
			}
			delete(m, elemKey(v))
		}
		return nil
	})
	return nil
}

// Flush applies the queued changes to a copy and keeps it only if all
// succeeded.
func (c *fakeConn) Flush() error {
	k := c.k
	k.mu.Lock()
	defer k.mu.Unlock()
	ops := c.ops
	c.ops = nil
	if len(ops) == 0 {
		return nil
	}
	if k.Fail != nil {
		if err := k.Fail(); err != nil {
			return err
		}
	}
	work := map[string]*fakeTable{}
	for n, t := range k.tables {
		work[n] = t.clone()
	}
	for _, op := range ops {
		if err := op(work); err != nil {
			return err
		}
	}
	k.tables = work
	k.Transactions++
	return nil
}

func (c *fakeConn) ListTablesOfFamily(f nftables.TableFamily) ([]*nftables.Table, error) {
	c.k.mu.Lock()
	defer c.k.mu.Unlock()
	var out []*nftables.Table
	for _, t := range c.k.tables {
		if t.t.Family == f {
			tt := t.t
			out = append(out, &tt)
		}
	}
	return out, nil
}

func (c *fakeConn) ListChainsOfTableFamily(f nftables.TableFamily) ([]*nftables.Chain, error) {
	c.k.mu.Lock()
	defer c.k.mu.Unlock()
	var out []*nftables.Chain
	for _, t := range c.k.tables {
		if t.t.Family != f {
			continue
		}
		for _, ch := range t.chains {
			cc, tt := ch.c, t.t
			cc.Table = &tt
			out = append(out, &cc)
		}
	}
	return out, nil
}

func (c *fakeConn) GetSets(t *nftables.Table) ([]*nftables.Set, error) {
	c.k.mu.Lock()
	defer c.k.mu.Unlock()
	ft := c.k.tables[tableKey(t)]
	if ft == nil {
		return nil, enoent("table " + t.Name)
	}
	var out []*nftables.Set
	for _, d := range ft.defs {
		s, tt := d, ft.t
		s.Table = &tt
		out = append(out, &s)
	}
	return out, nil
}

func (c *fakeConn) GetSetElements(s *nftables.Set) ([]nftables.SetElement, error) {
	c.k.mu.Lock()
	defer c.k.mu.Unlock()
	ft := c.k.tables[tableKey(s.Table)]
	if ft == nil || ft.sets[s.Name] == nil {
		return nil, fmt.Errorf("set %s: %w", s.Name, os.ErrNotExist)
	}
	var out []nftables.SetElement
	for _, e := range ft.sets[s.Name] {
		out = append(out, e)
	}
	return out, nil
}

func (c *fakeConn) GetRules(t *nftables.Table, ch *nftables.Chain) ([]*nftables.Rule, error) {
	c.k.mu.Lock()
	defer c.k.mu.Unlock()
	ft := c.k.tables[tableKey(t)]
	if ft == nil || ft.chains[ch.Name] == nil {
		return nil, enoent("chain " + ch.Name)
	}
	return slices.Clone(ft.chains[ch.Name].rules), nil
}

// Rules returns the rules of one chain (nil, false: there is no such
// chain), for tests.
func (k *Fake) Rules(t *nftables.Table, chain string) ([]*nftables.Rule, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	ft := k.tables[tableKey(t)]
	if ft == nil || ft.chains[chain] == nil {
		return nil, false
	}
	return slices.Clone(ft.chains[chain].rules), true
}
