package ipam

import (
	"encoding/json"
	"errors"
	"net/netip"
	"slices"
	"testing"
)

// fuzzPools are small enough to fill, so that exhaustion and reuse happen.
var fuzzPools = []struct{ pool, sub string }{
	{"10.9.0.0/28", "10.9.0.8/29"}, // range ends at the broadcast address
	{"10.9.0.0/29", ""},
	{"fd00::/125", ""}, // anycast address reserved
	{"10.9.0.0/31", ""},
	{"fd00::/124", "fd00::8/125"},
	{"10.9.0.0/28", "10.9.0.0/30"}, // range starts at the network address
}

// model is a brute-force restatement of the rules over offsets into the
// pool, to check the allocator against something that shares none of its
// code.
type model struct {
	size, lo, hi int // pool size; dynamic range [lo, hi]
	reserved     map[int]bool
	live         map[int]bool
	next         int // serial cursor; -1 none
	// pending: no address request has succeeded yet, so a restart drops
	// the pool (see pool.Pending).
	pending bool
}

func newModel(pool, sub netip.Prefix) *model {
	m := &model{size: 1 << hostBits(pool), reserved: map[int]bool{}, live: map[int]bool{}, next: -1, pending: true}
	m.hi = m.size - 1
	if sub.IsValid() {
		m.lo = off(pool, sub.Addr())
		m.hi = m.lo + 1<<hostBits(sub) - 1
	}
	if pool.Addr().Is6() {
		m.reserved[0] = true
	} else if m.size > 2 {
		m.reserved[0], m.reserved[m.size-1] = true, true
	}
	return m
}

func off(pool netip.Prefix, a netip.Addr) int {
	return int(fromAddr(a).lo - fromAddr(pool.Addr()).lo)
}

func at(pool netip.Prefix, o int) netip.Addr {
	u, _ := fromAddr(pool.Addr()).add(u128{lo: uint64(o)}, pool.Addr().Is4())
	return u.toAddr(pool.Addr().Is4())
}

func (m *model) free(o int) bool { return !m.live[o] && !m.reserved[o] }

// want is the address a dynamic request must get, -1 when the range is full.
func (m *model) want(serial bool) int {
	order := []int{}
	start := m.lo
	if serial && m.next > m.lo && m.next <= m.hi {
		start = m.next
	}
	for i := 0; i <= m.hi-m.lo; i++ {
		order = append(order, m.lo+(start-m.lo+i)%(m.hi-m.lo+1))
	}
	for _, o := range order {
		if m.free(o) {
			return o
		}
	}
	return -1
}

func FuzzAllocator(f *testing.F) {
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{1, 0, 0, 0, 2, 0, 0, 2, 6, 0, 0, 0})
	f.Add([]byte{2, 0, 6, 0, 1, 0, 3, 9, 3, 15, 4, 0, 2, 2, 5, 0, 0})
	f.Add([]byte{3, 0, 0, 0, 2, 0, 0, 3, 0, 5})
	f.Add([]byte{4, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 2, 12, 0, 0, 5, 0})
	f.Add([]byte{5, 3, 9, 15, 21, 0, 0, 0, 0, 2, 0, 0, 4, 4, 5, 0})
	f.Add([]byte{0x10, 0, 0, 0, 2, 0, 0, 2, 6, 0, 5, 0, 0, 0, 0})
	f.Add([]byte{0x12, 0, 0, 0, 0, 0, 0, 0, 2, 8, 0, 0, 0, 0, 0})
	f.Fuzz(fuzzOnce)
}

// fuzzOnce reads data as a pool choice followed by one operation per byte.
func fuzzOnce(t *testing.T, data []byte) {
	{
		// Pools of at most 16 addresses fill up in a few dozen steps; longer
		// inputs only slow the fuzzer down (and its minimizing).
		if len(data) == 0 || len(data) > 300 {
			return
		}
		cfgByte := data[0]
		fp := fuzzPools[int(cfgByte&0x0f)%len(fuzzPools)]
		serial := cfgByte&0x10 != 0
		pool := netip.MustParsePrefix(fp.pool)
		var sub netip.Prefix
		opts := map[string]string(nil)
		if fp.sub != "" {
			sub = netip.MustParsePrefix(fp.sub)
		}
		if serial {
			opts = map[string]string{OptSerial: "true"}
		}
		a := newMem(t, Config{})
		id := mustPool(t, a, fp.pool, fp.sub, opts)
		m := newModel(pool, sub)

		for i := 1; i < len(data); i++ {
			op, arg := data[i]%6, int(data[i]/6)
			switch op {
			case 0, 1: // dynamic request
				want := m.want(serial)
				got, err := reqAddr(a, id, "", nil)
				if want < 0 {
					if !errors.Is(err, ErrPoolFull) {
						t.Fatalf("op %d: full range gave %q, %v; want a pool-full error", i, got, err)
					}
					continue
				}
				if err != nil {
					t.Fatalf("op %d: %v, want %s", i, err, at(pool, want))
				}
				p := netip.MustParsePrefix(got)
				o := off(pool, p.Addr())
				switch {
				case p.Bits() != pool.Bits() || !pool.Contains(p.Addr()):
					t.Fatalf("op %d: %s is not in %s", i, got, pool)
				case o < m.lo || o > m.hi:
					t.Fatalf("op %d: %s is outside the ip-range %s", i, got, sub)
				case m.live[o]:
					t.Fatalf("op %d: %s handed out while held", i, got)
				case m.reserved[o]:
					t.Fatalf("op %d: %s is a network/broadcast/anycast address", i, got)
				case o != want:
					t.Fatalf("op %d: got %s, want %s", i, got, at(pool, want))
				}
				m.live[o], m.next, m.pending = true, o+1, false
			case 2: // release: a held address if arg is even, any address else
				o := arg % m.size
				if held := heldOffsets(m); arg%2 == 0 && len(held) > 0 {
					o = held[arg/2%len(held)]
				}
				mustRelease(t, a, id, at(pool, o).String())
				delete(m.live, o)
			case 3: // static request, maybe as gateway
				o := arg % m.size
				o2 := opts
				if arg/m.size%2 == 1 {
					o2 = gwOpts
				}
				got, err := reqAddr(a, id, at(pool, o).String(), o2)
				switch {
				case m.reserved[o]:
					if !errors.Is(err, ErrReserved) {
						t.Fatalf("op %d: reserved %s gave %q, %v", i, at(pool, o), got, err)
					}
				case m.live[o]:
					if !errors.Is(err, ErrAddressInUse) {
						t.Fatalf("op %d: held %s given again: %q, %v", i, at(pool, o), got, err)
					}
				case err != nil || got != netip.PrefixFrom(at(pool, o), pool.Bits()).String():
					t.Fatalf("op %d: free %s: got %q, %v", i, at(pool, o), got, err)
				default:
					m.live[o], m.pending = true, false
				}
			case 4: // gateway without address: lowest free, never serial
				want := m.want(false)
				got, err := reqAddr(a, id, "", gwOpts)
				if want < 0 {
					if !errors.Is(err, ErrPoolFull) {
						t.Fatalf("op %d: full range gave gateway %q, %v", i, got, err)
					}
					continue
				}
				if err != nil || got != netip.PrefixFrom(at(pool, want), pool.Bits()).String() {
					t.Fatalf("op %d: gateway %q, %v; want %s", i, got, err, at(pool, want))
				}
				m.live[want], m.next, m.pending = true, want+1, false
			case 5: // the saved form must bring back the same state
				roundTrip(t, a)
				if m.pending { // dropped, as a restart does: nothing more to check
					a.mu.Lock()
					_, kept := a.pools[id]
					a.mu.Unlock()
					if kept {
						t.Fatalf("op %d: a pool no address was asked of survived a restart", i)
					}
					return
				}
			}
			checkState(t, a, id, pool, m)
		}
	}
}

func heldOffsets(m *model) []int {
	var out []int
	for o := range m.live {
		out = append(out, o)
	}
	slices.Sort(out)
	return out
}

func checkState(t *testing.T, a *Allocator, id string, pool netip.Prefix, m *model) {
	t.Helper()
	p := poolInfo(t, a, id)
	var want []netip.Addr
	for _, o := range heldOffsets(m) {
		want = append(want, at(pool, o))
	}
	var got []netip.Addr
	for _, al := range p.Allocated {
		got = append(got, al.Addr)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("allocator holds %v, model holds %v", got, want)
	}
}

// roundTrip replaces the allocator's pools by their JSON records decoded
// again, as New does with the store.
func roundTrip(t *testing.T, a *Allocator) {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	recs := map[string]*pool{}
	for id, p := range a.pools {
		raw, err := json.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		q := new(pool)
		if err := json.Unmarshal(raw, q); err != nil {
			t.Fatal(err)
		}
		recs[id] = q
	}
	a.pools = map[string]*pool{}
	if err := a.install(recs); err != nil {
		t.Fatal(err)
	}
}

// The saved record is a format on disk: changing it breaks reading old state files.
func TestRecordFormat(t *testing.T) {
	a := newMem(t, Config{})
	id := mustPool(t, a, "10.1.0.0/24", "", nil)
	mustAddr(t, a, id, "", gwOpts)
	raw, err := json.Marshal(a.pools[id])
	if err != nil {
		t.Fatal(err)
	}
	want := `{"id":"ournet-local/10.1.0.0/24","addressSpace":"ournet-local","pool":"10.1.0.0/24","subPool":"","next":"10.1.0.2",` +
		`"addresses":[{"addr":"10.1.0.1","kind":"gateway"}]}`
	if string(raw) != want {
		t.Errorf("record\n%s\nwant\n%s", raw, want)
	}
}
