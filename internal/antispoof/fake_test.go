package antispoof

import (
	"errors"
	"net"
	"net/netip"
	"slices"
	"sync/atomic"
	"testing"

	"github.com/google/nftables"

	"github.com/ournet/ournet/internal/nft"
)

// These run without root, over nft.Fake; the kernel tests show the frames.

func fakeEP(port string, last byte) Endpoint {
	return Endpoint{Port: port, MAC: net.HardwareAddr{2, 0x42, 198, 18, 9, last},
		IPv4: netip.AddrFrom4([4]byte{198, 18, 9, last}), IPv6: netip.MustParseAddr("fd00:9::" + string('0'+last%10))}
}

func havePorts(t *testing.T, f *Filter, want ...string) {
	t.Helper()
	got, altered, err := f.Ports()
	if err != nil || altered || !slices.Equal(got, want) {
		t.Fatalf("Ports = %v, altered %v, %v; want %v", got, altered, err, want)
	}
}

// haveAltered checks that Ports reports the table altered, with no port's
// checks in force.
func haveAltered(t *testing.T, f *Filter) {
	t.Helper()
	if got, altered, err := f.Ports(); err != nil || !altered || len(got) != 0 {
		t.Fatalf("Ports = %v, altered %v, %v; want none, altered", got, altered, err)
	}
}

// Add, a repeated Add (free), a changed Add, Del, a Del of an unknown
// port: the table holds exactly the checks asked for, each port's chain
// its endpoint's rules.
func TestFilterWithoutRoot(t *testing.T) {
	k := nft.NewFake()
	f := NewWith(k.Dial)
	// As the plugin starts: a Sync (of nothing here) first.
	if err := f.Sync(nil); err != nil {
		t.Fatal(err)
	}
	a, b := fakeEP("ova", 2), fakeEP("ovb", 3)
	for _, ep := range []Endpoint{a, b} {
		if err := f.Add(ep); err != nil {
			t.Fatal(err)
		}
	}
	havePorts(t, f, "ova", "ovb")
	if r, ok := k.Rules(table, ChainPrefix+"ova"); !ok || len(r) != len(endpointRules(a)) {
		t.Fatalf("ova's chain holds %d rules, want %d", len(r), len(endpointRules(a)))
	}
	before := k.Transactions
	if err := f.Add(a); err != nil || k.Transactions != before {
		t.Fatalf("a repeated Add: %v, %d transactions", err, k.Transactions-before)
	}
	moved := a
	moved.IPv6 = netip.Addr{}
	if err := f.Add(moved); err != nil || k.Transactions != before+1 {
		t.Fatalf("Add with another address: %v, %d transactions", err, k.Transactions-before)
	}
	if r, _ := k.Rules(table, ChainPrefix+"ova"); len(r) != len(endpointRules(moved)) {
		t.Fatalf("ova's chain after the change holds %d rules, want %d", len(r), len(endpointRules(moved)))
	}
	if err := f.Del("ova"); err != nil {
		t.Fatal(err)
	}
	if err := f.Del("ovnever"); err != nil {
		t.Fatalf("Del of a port without checks: %v", err)
	}
	havePorts(t, f, "ovb")
	if _, ok := k.Rules(table, ChainPrefix+"ova"); ok {
		t.Fatal("ova's chain is still there")
	}
	if err := f.Teardown(); err != nil {
		t.Fatal(err)
	}
	havePorts(t, f)
	if c, _ := k.Dial(); true {
		if ts, _ := c.ListTablesOfFamily(nftables.TableFamilyBridge); len(ts) != 0 {
			t.Fatalf("tables after Teardown: %v", ts)
		}
	}
}

// Drift: the base rule flushed by someone else makes Ports report nothing,
// and the table altered (so the repair loop acts), and Sync brings back exactly the endpoints
// asked for, dropping stale ones; a failed transaction changes nothing and
// makes the next Add rewrite whole.
func TestFilterDriftAndFailureWithoutRoot(t *testing.T) {
	k := nft.NewFake()
	f := NewWith(k.Dial)
	a, b, c := fakeEP("ova", 2), fakeEP("ovb", 3), fakeEP("ovc", 4)
	if err := f.Sync([]Endpoint{a, b}); err != nil {
		t.Fatal(err)
	}
	havePorts(t, f, "ova", "ovb")
	conn, _ := k.Dial()
	conn.FlushChain(&nftables.Chain{Name: BaseChain, Table: table})
	if err := conn.Flush(); err != nil {
		t.Fatal(err)
	}
	haveAltered(t, f) // nothing is in force, and the table is not as made
	if err := f.Sync([]Endpoint{a, c}); err != nil {
		t.Fatal(err)
	}
	havePorts(t, f, "ova", "ovc")
	if _, ok := k.Rules(table, ChainPrefix+"ovb"); ok {
		t.Fatal("a stale port's chain survived Sync")
	}
	boom := errors.New("netlink: boom")
	k.Fail = func() error { return boom }
	if err := f.Add(b); !errors.Is(err, boom) {
		t.Fatalf("Add with the kernel failing = %v", err)
	}
	k.Fail = nil
	havePorts(t, f, "ova", "ovc")
	before := k.Transactions
	if err := f.Add(b); err != nil {
		t.Fatal(err)
	}
	if k.Transactions != before+1 {
		t.Fatalf("Add after a failure took %d transactions, want 1 (rewritten whole)", k.Transactions-before)
	}
	havePorts(t, f, "ova", "ovb", "ovc")
	// A table of another shape (a base chain on another hook) is rebuilt.
	conn, _ = k.Dial()
	conn.DelTable(table)
	conn.AddTable(table)
	conn.AddChain(&nftables.Chain{Name: BaseChain, Table: table, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookInput})
	if err := conn.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync([]Endpoint{c}); err != nil {
		t.Fatal(err)
	}
	havePorts(t, f, "ovc")
}

// Del only queues: the kernel is untouched until the reaper runs, which
// removes every port queued meanwhile in one transaction; an Add of a
// queued port cancels its removal and, its checks being the same, costs
// nothing; a removal that fails stays queued and the next call reports it.
func TestDelQueues(t *testing.T) {
	k := nft.NewFake()
	var refuse atomic.Bool // set while reapers may run: k.Fail is read under k's lock
	k.Fail = func() error {
		if refuse.Load() {
			return errors.New("injected")
		}
		return nil
	}
	f := NewWith(k.Dial)
	if err := f.Sync(nil); err != nil {
		t.Fatal(err)
	}
	a, b, c := fakeEP("ova", 2), fakeEP("ovb", 3), fakeEP("ovc", 4)
	for _, ep := range []Endpoint{a, b, c} {
		if err := f.Add(ep); err != nil {
			t.Fatal(err)
		}
	}
	hold := make(chan struct{})
	f.hold = hold
	before := k.Transactions
	for _, p := range []string{"ova", "ovb", "ovc"} {
		if err := f.Del(p); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Add(c); err != nil { // the same endpoint, back before the reaper
		t.Fatal(err)
	}
	if k.Transactions != before {
		t.Fatalf("Del and a repeated Add made %d transactions before the reaper ran, want 0", k.Transactions-before)
	}
	if _, ok := k.Rules(table, ChainPrefix+"ova"); !ok {
		t.Fatal("Del removed ova's chain itself")
	}
	close(hold)
	havePorts(t, f, "ovc") // settles, or finds the reaper done
	if k.Transactions != before+1 {
		t.Fatalf("removing two ports took %d transactions, want 1", k.Transactions-before)
	}
	if r, ok := k.Rules(table, ChainPrefix+"ovc"); !ok || len(r) != len(endpointRules(c)) {
		t.Fatalf("ovc's chain after its removal was cancelled: %d rules (%v), want %d", len(r), ok, len(endpointRules(c)))
	}

	f.hold = make(chan struct{}) // this reaper never runs: Settle does its work
	refuse.Store(true)
	if err := f.Del("ovc"); err != nil {
		t.Fatal(err)
	}
	if err := f.Settle(); err == nil {
		t.Fatal("Settle with the kernel refusing: no error")
	}
	refuse.Store(false)
	havePorts(t, f) // the failed removal was retried
}

// The table replaced by one of another shape (its base chain on another
// hook), where every Add fails: Ports says so, with no port in force,
// whether or not a removal is queued and failing (a failing removal once
// made Ports fail, and the repair loop never rebuilt the table), and
// whether or not any port wants checks. The repair's Sync rebuilds it, and
// the next Add works.
func TestAlteredTableIsRebuiltWithoutRoot(t *testing.T) {
	for _, tc := range []struct {
		name   string
		keep   []string // the ports with checks before; the last is removed when queued
		queued bool
	}{
		{"no ports", nil, false},
		{"two ports", []string{"ova", "ovb"}, false},
		{"a removal queued", []string{"ova", "ovb"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := nft.NewFake()
			f := NewWith(k.Dial)
			var eps []Endpoint
			for i, p := range tc.keep {
				eps = append(eps, fakeEP(p, byte(2+i)))
			}
			if err := f.Sync(eps); err != nil {
				t.Fatal(err)
			}
			conn, _ := k.Dial()
			conn.DelTable(table)
			conn.AddTable(table)
			conn.AddChain(&nftables.Chain{Name: BaseChain, Table: table, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookInput})
			if err := conn.Flush(); err != nil {
				t.Fatal(err)
			}
			if err := f.Add(fakeEP("ovx", 9)); err == nil {
				t.Fatal("Add into the altered table succeeded: the test's table is not altered enough")
			}
			if tc.queued {
				f.hold = make(chan struct{}) // Ports does the removal, and it fails
				if err := f.Del(eps[len(eps)-1].Port); err != nil {
					t.Fatal(err)
				}
				eps = eps[:len(eps)-1]
			}
			haveAltered(t, f)
			if err := f.Sync(eps); err != nil { // what the repair loop does
				t.Fatal(err)
			}
			want := []string{}
			for _, ep := range eps {
				want = append(want, ep.Port)
			}
			havePorts(t, f, want...)
			if err := f.Add(fakeEP("ovc", 7)); err != nil {
				t.Fatalf("Add after the repair: %v", err)
			}
			havePorts(t, f, append(want, "ovc")...)
		})
	}
}
