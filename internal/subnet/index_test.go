package subnet

import (
	"math/rand/v2"
	"net/netip"
	"testing"
)

// The Index answers as a scan of everything it holds would, through adds
// and removes (prefixes held twice included), in both families.
func TestIndexAgainstScan(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	random := func() netip.Prefix {
		if r.IntN(3) == 0 {
			var b [16]byte
			b[0], b[1], b[2] = 0xfd, byte(r.IntN(2)), byte(r.IntN(4))
			return netip.PrefixFrom(netip.AddrFrom16(b), 8+r.IntN(57)).Masked()
		}
		return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(r.IntN(4)), byte(r.IntN(8)), byte(r.IntN(256))}), 6+r.IntN(27)).Masked()
	}
	idx := NewIndex()
	held := map[netip.Prefix]int{}
	for step := 0; step < 20000; step++ {
		p := random()
		if r.IntN(3) == 0 && held[p] > 0 {
			idx.Remove(p)
			if held[p]--; held[p] == 0 {
				delete(held, p)
			}
		} else {
			idx.Add(p)
			held[p]++
		}
		if idx.Len() != len(held) {
			t.Fatalf("step %d: Len %d, want %d", step, idx.Len(), len(held))
		}
		q := random()
		wantOverlap, wantInside := false, false
		for h := range held {
			wantOverlap = wantOverlap || h.Overlaps(q)
			wantInside = wantInside || inside(h, q)
		}
		if got, ok := idx.Overlap(q); ok != wantOverlap || ok && (held[got] == 0 || !got.Overlaps(q)) {
			t.Fatalf("step %d: Overlap(%s) = %s, %v; want %v", step, q, got, ok, wantOverlap)
		}
		if got, ok := idx.Inside(q); ok != wantInside || ok && (held[got] == 0 || !inside(got, q)) {
			t.Fatalf("step %d: Inside(%s) = %s, %v; want %v", step, q, got, ok, wantInside)
		}
		if _, ok := List(idx.All()).Inside(q); ok != wantInside {
			t.Fatalf("step %d: List.Inside(%s) = %v; want %v", step, q, ok, wantInside)
		}
	}
	idx.Remove(netip.MustParsePrefix("192.0.2.0/24")) // not held: nothing happens
}

// With a thousand routes held, a check costs what it costs with one.
func BenchmarkIndexInside(b *testing.B) {
	idx := NewIndex()
	for i := range 1000 {
		idx.Add(netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(i / 16), byte(i%16) * 16}), 28))
	}
	p := netip.MustParsePrefix("10.1.0.0/24")
	for b.Loop() {
		idx.Inside(p)
		idx.Overlap(p)
	}
}
