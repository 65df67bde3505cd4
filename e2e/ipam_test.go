package e2e

// Issue #3: ournet's IPAM on the real engine.

import (
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

func subnetOf(t *testing.T, network string) string {
	t.Helper()
	return eng.Run(t, "network", "inspect", "-f", "{{range .IPAM.Config}}{{.Subnet}} {{end}}", network)
}

// Two networks created without --subnet get different pools (from the
// DEFAULT_POOLS setting the suite installs: 198.19.0.0/16 in /24s), and
// their containers work.
func TestDefaultPools(t *testing.T) {
	Net(t, eng, "pool-a", "-d", "ournet", "--ipam-driver", "ournet")
	Net(t, eng, "pool-b", "-d", "ournet", "--ipam-driver", "ournet")
	a, b := strings.TrimSpace(subnetOf(t, "pool-a")), strings.TrimSpace(subnetOf(t, "pool-b"))
	pa, errA := netip.ParsePrefix(a)
	pb, errB := netip.ParsePrefix(b)
	if errA != nil || errB != nil || pa.Overlaps(pb) {
		t.Fatalf("default pools %q and %q: want two distinct subnets", a, b)
	}
	base := netip.MustParsePrefix("198.19.0.0/16")
	if !base.Contains(pa.Addr()) || !base.Contains(pb.Addr()) || pa.Bits() != 24 {
		t.Fatalf("default pools %s, %s are not /24s from DEFAULT_POOLS %s", pa, pb, base)
	}
	Container(t, eng, "pool-a1", "--network", "pool-a")
	Container(t, eng, "pool-a2", "--network", "pool-a")
	if err := eng.Ping("pool-a1", "pool-a2"); err != nil {
		t.Fatal(err)
	}
	Container(t, eng, "pool-b1", "--network", "pool-b")
	if ip := eng.IP(t, "pool-b1", "pool-b"); !pb.Contains(netip.MustParseAddr(ip)) {
		t.Fatalf("pool-b1 got %s outside %s", ip, pb)
	}
}

// --ip-range, --gateway, --aux-address and --ip give exactly what was asked.
func TestIPAMExactRequests(t *testing.T) {
	Net(t, eng, "exact", "-d", "ournet", "--ipam-driver", "ournet",
		"--subnet", "198.18.30.0/24", "--ip-range", "198.18.30.128/28", "--gateway", "198.18.30.254",
		"--aux-address", "reserved=198.18.30.129")
	gw := eng.Run(t, "network", "inspect", "-f", "{{range .IPAM.Config}}{{.Gateway}}{{end}}", "exact")
	if gw != "198.18.30.254" {
		t.Fatalf("gateway = %q", gw)
	}
	Container(t, eng, "exact-static", "--network", "exact", "--ip", "198.18.30.10")
	if ip := eng.IP(t, "exact-static", "exact"); ip != "198.18.30.10" {
		t.Fatalf("--ip 198.18.30.10 gave %s", ip)
	}
	Container(t, eng, "exact-dyn", "--network", "exact")
	ip := netip.MustParseAddr(eng.IP(t, "exact-dyn", "exact"))
	// Like Docker, only the subnet's own network and broadcast addresses are
	// reserved, so the range's first address (.128) is a valid answer.
	if !netip.MustParsePrefix("198.18.30.128/28").Contains(ip) || ip.String() == "198.18.30.129" {
		t.Fatalf("dynamic address %s: want one from the ip-range, not the aux address", ip)
	}
	if route, _ := eng.Exec("exact-dyn", "ip", "route", "show", "default"); !strings.Contains(route, "via 198.18.30.254") {
		t.Fatalf("default route = %q, want via the given gateway", route)
	}
	if err := eng.Ping("exact-dyn", "198.18.30.10"); err != nil {
		t.Fatal(err)
	}
	// A static address that is taken is refused, naming it.
	msg := eng.Fails(t, "run", "--rm", "--network", "exact", "--ip", "198.18.30.10", Image, "true")
	if !strings.Contains(msg, "198.18.30.10") {
		t.Fatalf("taken --ip: error %q does not name the address", msg)
	}
}

// 20 containers started at once all run, with 20 distinct addresses, and
// reach each other.
func TestParallelRuns(t *testing.T) {
	Net(t, eng, "par", "-d", "ournet", "--ipam-driver", "ournet", "--subnet", "198.18.31.0/24")
	const n = 20
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("par-%02d", i)
		t.Cleanup(func() { _, _ = eng.Docker(time.Minute, "rm", "-f", name) })
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := eng.Docker(3*time.Minute, "run", "-d", "--name", name, "--network", "par", Image, "sleep", "600"); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		return
	}
	seen := map[string]string{}
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("par-%02d", i)
		ip := eng.IP(t, name, "par")
		if other, dup := seen[ip]; dup {
			t.Fatalf("%s and %s both got %s", name, other, ip)
		}
		seen[ip] = name
	}
	// Everyone reaches its neighbour (a ring: n pings, bounded).
	for i := 0; i < n; i++ {
		if err := eng.Ping(fmt.Sprintf("par-%02d", i), eng.IP(t, fmt.Sprintf("par-%02d", (i+1)%n), "par")); err != nil {
			t.Error(err)
		}
	}
}

// Several networks created at once without --subnet all get distinct pools.
func TestParallelNetworkCreates(t *testing.T) {
	const n = 8
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("pnet-%d", i)
		t.Cleanup(func() { _, _ = eng.Docker(time.Minute, "network", "rm", name) })
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := eng.Docker(time.Minute, "network", "create", "-d", "ournet", "--ipam-driver", "ournet", name); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	var pools []netip.Prefix
	for i := 0; i < n; i++ {
		p := netip.MustParsePrefix(strings.TrimSpace(subnetOf(t, fmt.Sprintf("pnet-%d", i))))
		for _, q := range pools {
			if p.Overlaps(q) {
				t.Fatalf("two networks got overlapping pools %s and %s", p, q)
			}
		}
		pools = append(pools, p)
	}
}

func TestIPAMErrorsReachTheUser(t *testing.T) {
	Net(t, eng, "ov-a", "-d", "ournet", "--ipam-driver", "ournet", "--subnet", "198.18.32.0/23")
	msg := eng.Fails(t, "network", "create", "-d", "ournet", "--ipam-driver", "ournet", "--subnet", "198.18.33.0/24", "ov-b")
	if !strings.Contains(msg, "overlaps") || !strings.Contains(msg, "198.18.32.0/23") {
		t.Fatalf("overlapping subnet: error %q should say it overlaps 198.18.32.0/23", msg)
	}
	msg = eng.Fails(t, "network", "create", "-d", "ournet", "--ipam-driver", "ournet", "--subnet", "198.18.34.0/24", "--gateway", "198.18.35.1", "ov-c")
	if !strings.Contains(msg, "198.18.35.1") {
		t.Fatalf("gateway outside the subnet: error %q does not name it", msg)
	}
	// An exhausted pool: a /30 holds the gateway and one container.
	Net(t, eng, "tiny", "-d", "ournet", "--ipam-driver", "ournet", "--subnet", "198.18.36.0/30")
	Container(t, eng, "tiny-1", "--network", "tiny")
	msg = eng.Fails(t, "run", "--rm", "--network", "tiny", Image, "true")
	if !strings.Contains(strings.ToLower(msg), "no free address") && !strings.Contains(strings.ToLower(msg), "full") {
		t.Fatalf("exhausted pool: error %q should say the pool is full", msg)
	}
	// Released addresses come back: after tiny-1 goes, a new container fits.
	eng.Run(t, "rm", "-f", "tiny-1")
	Container(t, eng, "tiny-2", "--network", "tiny")
}
