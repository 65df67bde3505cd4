package antispoof

// What the checks cost: traffic between two namespaces on one bridge while
// the sender's port has its checks added and removed every window, so that
// both states share whatever else loads the machine. Run as root:
//
//	go test -run '^$' -bench Toggle -benchtime 30x ./internal/antispoof
//
// Each op is one pair of windows (off, on); the reported metrics are the
// medians of what the receiver got per second in each state, and on/off.
// TCP writes 1 MiB at a time (big GSO segments: few frames); UDP sends
// 64-byte datagrams, the worst case, since every frame is checked. The
// "1000ports" variants keep 1000 other ports in the map: the lookup must
// cost the same. "off" is what a network with ournet.anti_spoofing=false
// gets: the base chain's lookup misses.

import (
	"errors"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/ournet/ournet/internal/testns"
)

const window = 100 * time.Millisecond

func BenchmarkToggleTCP(b *testing.B) {
	for _, others := range []int{0, 1000} {
		b.Run("ports="+strconv.Itoa(others+1), func(b *testing.B) { toggle(b, others, startTCP) })
	}
}

func BenchmarkToggleUDP64(b *testing.B) {
	for _, others := range []int{0, 1000} {
		b.Run("ports="+strconv.Itoa(others+1), func(b *testing.B) { toggle(b, others, startUDP) })
	}
}

// flow starts traffic from src to dst, counting what dst receives in
// *got, and returns a function that stops it.
type flow func(b *testing.B, l *lab, src, dst *peer, got *atomic.Int64) (stop func())

func toggle(b *testing.B, others int, start flow) {
	testns.Do(b, func() {
		l := newLab(b, 2)
		src, dst := l.peers[0], l.peers[1]
		f := New()
		var eps []Endpoint
		for i := range others {
			eps = append(eps, Endpoint{Port: "ovbench" + strconv.Itoa(i), MAC: src.mac, IPv4: src.v4})
		}
		if err := f.Sync(eps); err != nil {
			b.Fatal(err)
		}
		var got atomic.Int64
		stop := start(b, l, src, dst, &got)
		defer stop()
		rate := map[bool][]float64{}
		measure := func(on bool) {
			var err error
			if on {
				err = f.Add(src.endpoint())
			} else if err = f.Del(src.port); err == nil {
				err = f.Settle()
			}
			if err != nil {
				b.Fatal(err)
			}
			from, t0 := got.Load(), time.Now()
			time.Sleep(window)
			rate[on] = append(rate[on], float64(got.Load()-from)/time.Since(t0).Seconds())
		}
		for b.Loop() {
			measure(false)
			measure(true)
		}
		off, on := median(rate[false]), median(rate[true])
		b.ReportMetric(off/1e6, "MB/s-off")
		b.ReportMetric(on/1e6, "MB/s-on")
		b.ReportMetric(on/off, "on/off")
	})
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

// in runs fn with this (locked) thread in ns: sockets fn makes belong there.
func in(l *lab, ns netns.NsHandle, fn func()) {
	if err := netns.Set(ns); err != nil {
		panic(err)
	}
	defer func() {
		if err := netns.Set(l.home); err != nil {
			panic(err)
		}
	}()
	fn()
}

func startTCP(b *testing.B, l *lab, src, dst *peer, got *atomic.Int64) func() {
	var ln net.Listener
	var conn net.Conn
	var err error
	in(l, dst.ns, func() { ln, err = net.Listen("tcp", netip.AddrPortFrom(dst.v4, 5201).String()) })
	if err != nil {
		b.Fatal(err)
	}
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 1<<20)
		for {
			n, err := c.Read(buf)
			got.Add(int64(n))
			if err != nil {
				return
			}
		}
	}()
	in(l, src.ns, func() { conn, err = net.Dial("tcp", ln.Addr().String()) })
	if err != nil {
		b.Fatal(err)
	}
	go func() {
		buf := make([]byte, 1<<20)
		for {
			if _, err := conn.Write(buf); err != nil {
				return
			}
		}
	}()
	return func() { conn.Close(); ln.Close() }
}

func startUDP(b *testing.B, l *lab, src, dst *peer, got *atomic.Int64) func() {
	var rx, tx *net.UDPConn
	var err error
	to := net.UDPAddrFromAddrPort(netip.AddrPortFrom(dst.v4, 5201))
	in(l, dst.ns, func() { rx, err = net.ListenUDP("udp", to) })
	if err != nil {
		b.Fatal(err)
	}
	go func() {
		buf := make([]byte, 2048)
		for {
			n, err := rx.Read(buf)
			if err != nil {
				return
			}
			got.Add(int64(n))
		}
	}()
	in(l, src.ns, func() { tx, err = net.DialUDP("udp", nil, to) })
	if err != nil {
		b.Fatal(err)
	}
	go func() {
		msg := make([]byte, 64)
		for {
			// A full queue drops or refuses: what arrives is what counts.
			if _, err := tx.Write(msg); err != nil && errors.Is(err, net.ErrClosed) {
				return
			}
		}
	}()
	return func() { tx.Close(); rx.Close() }
}
