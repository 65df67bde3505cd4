//go:build bench

package e2e

// Issue #7: `make bench` measures ournet against Docker's built-in bridge
// driver on the same private engine in one run. Every measurement alternates
// the drivers (ournet first on even repetitions, bridge first on odd ones),
// so that drift in the machine's load hits both alike, and reports medians.
// The results go to stdout, docs/bench.md, docs/bench.png and README.md's
// Benchmark section (bench_report_test.go).
//
//	go test -tags bench -run TestBench -v -timeout 25m ./e2e/
//
// BENCH_ONLY=phase,... runs only some phases (createrm, run, rules,
// throughput, ports, growth, restore, idle, cluster, repair); BENCH_OUT=dir writes the report there
// instead of docs/ (and leaves README.md alone).
//
// Addresses: 198.18.128.0/17 only.

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Repetitions, chosen so that the whole bench stays well under 10 minutes on
// 2 cores.
const (
	benchReps       = 15 // create+rm and run, per driver
	benchPortReps   = 5  // starts with published ports, per driver and size
	benchTputReps   = 7  // iperf3 runs per target
	benchTputSecs   = 3  // seconds per iperf3 run
	benchGrowth     = 500
	growthWindow    = 25 // creates around each one the growth rows report
	benchRestoreNet = 100
	benchRestoreEps = 200
	benchKills      = 3 // plugin kills in the restore measurement
	benchParallel   = 4 // bounded parallelism of untimed setup and cleanup
)

// BenchImage is the offline image with iperf3 (and busybox).
const BenchImage = "ournet-bench:iperf3"

type driverKind string

const (
	drvOurnet driverKind = "ournet"
	drvBridge driverKind = "bridge"
	// drvNoSpoof is ournet with ournet.anti_spoofing=false (throughput only).
	drvNoSpoof driverKind = "ournet-nospoof"
)

// order alternates which driver goes first.
func order(i int) []driverKind {
	if i%2 == 0 {
		return []driverKind{drvOurnet, drvBridge}
	}
	return []driverKind{drvBridge, drvOurnet}
}

// netArgs are `docker network create` arguments for a driver and subnet: the
// bridge driver as dockerd ships it, ournet as README.md tells users to run
// it (its own IPAM too).
func netArgs(d driverKind, subnet string) []string {
	if d == drvOurnet {
		return []string{"-d", "ournet", "--ipam-driver", "ournet", "--subnet", subnet}
	}
	return []string{"-d", "bridge", "--subnet", subnet}
}

type bench struct {
	t       *testing.T
	e       *Engine
	only    map[string]bool
	results []*result
	info    machine
	// growth networks still present (name -> driver), reused by restore.
	growth map[string]driverKind
	start  time.Time
}

func TestBench(t *testing.T) {
	b := &bench{t: t, e: eng, growth: map[string]driverKind{}, start: time.Now()}
	if s := os.Getenv("BENCH_ONLY"); s != "" {
		b.only = map[string]bool{}
		for _, p := range strings.Split(s, ",") {
			b.only[strings.TrimSpace(p)] = true
		}
	}
	b.info = b.machine()
	if err := b.importBenchImage(); err != nil {
		t.Fatal(err)
	}
	defer b.cleanupGrowth()
	for _, p := range []struct {
		name string
		fn   func() error
	}{
		{"rules", b.rules},
		{"createrm", b.createRm},
		{"run", b.run},
		{"throughput", b.throughput},
		{"ports", b.ports},
		{"growth", b.growthPhase},
		{"restore", b.restore},
		{"idle", b.idle},
		{"cluster", b.cluster},
		{"repair", b.repair}, // last: it flushes dockerd's chains too
	} {
		if b.only != nil && !b.only[p.name] {
			continue
		}
		start := time.Now()
		if err := p.fn(); err != nil {
			b.fail(p.name, err)
		}
		t.Logf("phase %s: %s", p.name, time.Since(start).Round(time.Second))
	}
	if p := os.Getenv("BENCH_LOG"); p != "" { // keep the engine's log, for profiling
		if raw, err := os.ReadFile(filepath.Join(b.e.Dir, "dockerd.log")); err == nil {
			_ = os.WriteFile(p, raw, 0o644)
		}
	}
	b.info.Took = time.Since(b.start)
	b.info.LoadEnd = loadavg()
	b.report()
}

// fail records that a phase could not measure; the report shows it and the
// test fails after the report is written.
func (b *bench) fail(phase string, err error) {
	b.t.Errorf("phase %s: %v", phase, err)
	b.add(&result{Key: phase, Name: phase, Err: err.Error()})
}

func (b *bench) add(r *result) { b.results = append(b.results, r) }

// docker runs one docker command with a 2 minute bound.
func (b *bench) docker(args ...string) (string, error) {
	return b.e.Docker(2*time.Minute, args...)
}

// timed runs a docker command and returns how long it took.
func (b *bench) timed(args ...string) (time.Duration, error) {
	start := time.Now()
	_, err := b.docker(args...)
	return time.Since(start), err
}

// logSize is the length of the engine's log now: an offset for pluginTime.
func (b *bench) logSize() int64 {
	st, err := os.Stat(filepath.Join(b.e.Dir, "dockerd.log"))
	if err != nil {
		return 0
	}
	return st.Size()
}

// took= values with a "µ" are quoted, and the quotes escaped in dockerd's log.
var callRe = regexp.MustCompile(`call=(/[A-Za-z]+\.[A-Za-z]+) took=(?:\\")?([0-9.]+(?:ns|µs|us|ms|s))`)

// pluginTime adds up the took= of the plugin's calls logged between two
// offsets of the engine's log (the plugin logs every call at debug level):
// the time spent inside ournet, per call and in all.
func (b *bench) pluginTime(from, to int64) (float64, map[string]float64) {
	per := map[string]float64{}
	f, err := os.Open(filepath.Join(b.e.Dir, "dockerd.log"))
	if err != nil || to <= from {
		return 0, per
	}
	defer f.Close()
	buf := make([]byte, to-from)
	if _, err := f.ReadAt(buf, from); err != nil {
		return 0, per
	}
	total := 0.0
	for _, m := range callRe.FindAllStringSubmatch(string(buf), -1) {
		d, err := time.ParseDuration(m[2])
		if err != nil {
			continue
		}
		call := m[1][strings.LastIndex(m[1], ".")+1:]
		per[call] += ms(d)
		total += ms(d)
	}
	return total, per
}

// fmtCalls lists per-call times divided by n, largest first.
func fmtCalls(per map[string]float64, n int) string {
	type kv struct {
		k string
		v float64
	}
	var l []kv
	for k, v := range per {
		l = append(l, kv{k, v / float64(n)})
	}
	sort.Slice(l, func(i, j int) bool { return l[i].v > l[j].v })
	var parts []string
	for _, e := range l {
		parts = append(parts, fmt.Sprintf("%s %.1f", e.k, e.v))
	}
	return strings.Join(parts, ", ")
}

// parallel runs fn(0..n-1), at most k at a time, and returns the first error.
func parallel(n, k int, fn func(i int) error) error {
	sem := make(chan struct{}, k)
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	for i := 0; i < n; i++ {
		sem <- struct{}{}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			if err := fn(i); err != nil {
				mu.Lock()
				if first == nil {
					first = err
				}
				mu.Unlock()
			}
		}(i)
	}
	wg.Wait()
	return first
}

func median(ds []float64) float64 {
	if len(ds) == 0 {
		return 0
	}
	s := append([]float64(nil), ds...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// rules counts the firewall rules that creating one network adds, for
// each driver: iptables and ip6tables rules (all tables), and in ournet's
// nftables table its set elements (each names its network).
func (b *bench) rules() error {
	count := func() (n [3]int, err error) {
		for i, tool := range []string{"iptables-save", "ip6tables-save"} {
			out, err := b.e.Sh(tool)
			if err != nil {
				return n, fmt.Errorf("%s: %w: %s", tool, err, out)
			}
			for _, l := range strings.Split(out, "\n") {
				if strings.HasPrefix(l, "-A ") {
					n[i]++
				}
			}
		}
		out, _ := b.e.Sh("nft", "list", "table", "inet", "ournet") // absent before ournet's first network
		n[2] = strings.Count(out, ` comment "ournet:`)
		return n, nil
	}
	added := map[driverKind][3]int{}
	for i, d := range []driverKind{drvOurnet, drvBridge} {
		name := "br-rules-" + string(d)
		before, err := count()
		if err != nil {
			return err
		}
		if _, err := b.docker(append(append([]string{"network", "create"}, netArgs(d, fmt.Sprintf("198.18.24%d.0/24", i))...), name)...); err != nil {
			return err
		}
		after, err := count()
		_, _ = b.docker("network", "rm", name)
		if err != nil {
			return err
		}
		added[d] = [3]int{after[0] - before[0], after[1] - before[1], after[2] - before[2]}
	}
	o, br := added[drvOurnet], added[drvBridge]
	b.add(&result{
		Key: "rules/network", Name: "firewall rules added per network (IPv4 + IPv6 + nftables)",
		Ournet: float64(o[0] + o[1] + o[2]), Base: float64(br[0] + br[1] + br[2]), Unit: "rules",
		Goal: 1.0, Upper: true,
		Note: fmt.Sprintf("ournet %d + %d + %d, bridge %d + %d + %d (iptables + ip6tables + set elements in ournet's nftables table); an IPv4-only network",
			o[0], o[1], o[2], br[0], br[1], br[2]),
	})
	return nil
}

// createRm times `docker network create` + `docker network rm`.
func (b *bench) createRm() error {
	total := map[driverKind][]float64{}
	create := map[driverKind][]float64{}
	rm := map[driverKind][]float64{}
	from := b.logSize()
	for i := 0; i < benchReps; i++ {
		for j, d := range order(i) {
			name := "bc-" + string(d)
			c, err := b.timed(append(append([]string{"network", "create"}, netArgs(d, fmt.Sprintf("198.18.25%d.0/24", j))...), name)...)
			if err != nil {
				return err
			}
			r, err := b.timed("network", "rm", name)
			if err != nil {
				return err
			}
			create[d] = append(create[d], ms(c))
			rm[d] = append(rm[d], ms(r))
			total[d] = append(total[d], ms(c+r))
		}
	}
	time.Sleep(200 * time.Millisecond) // the plugin's last lines reach the log
	inPlugin, per := b.pluginTime(from, b.logSize())
	b.add(&result{
		Key: "create+rm", Name: fmt.Sprintf("`docker network create` + `rm` (median of %d)", benchReps),
		Ournet: median(total[drvOurnet]), Base: median(total[drvBridge]), Unit: "ms", Goal: 1.0, Upper: true,
		Note: fmt.Sprintf("create %.0f / %.0f ms, rm %.0f / %.0f ms (ournet / bridge); inside the plugin %.1f ms per create+rm (%s)",
			median(create[drvOurnet]), median(create[drvBridge]), median(rm[drvOurnet]), median(rm[drvBridge]),
			inPlugin/benchReps, fmtCalls(per, benchReps)),
	})
	return nil
}

// benchNets creates one network per driver for run, throughput and ports.
func (b *bench) benchNets() (map[driverKind]string, func(), error) {
	nets := map[driverKind]string{}
	subnets := map[driverKind]string{drvOurnet: "198.18.252.0/24", drvBridge: "198.18.253.0/24"}
	for _, d := range []driverKind{drvOurnet, drvBridge} {
		name := "bn-" + string(d)
		if _, err := b.docker(append(append([]string{"network", "create"}, netArgs(d, subnets[d])...), name)...); err != nil {
			return nil, func() {}, err
		}
		nets[d] = name
	}
	return nets, func() {
		for _, n := range nets {
			_, _ = b.docker("network", "rm", n)
		}
	}, nil
}

// run times `docker run --rm --network N image true`.
func (b *bench) run() error {
	nets, done, err := b.benchNets()
	defer done()
	if err != nil {
		return err
	}
	times := map[driverKind][]float64{}
	from := b.logSize()
	for i := 0; i < benchReps; i++ {
		for _, d := range order(i) {
			dt, err := b.timed("run", "--rm", "--network", nets[d], Image, "true")
			if err != nil {
				return err
			}
			times[d] = append(times[d], ms(dt))
		}
	}
	time.Sleep(200 * time.Millisecond)
	inPlugin, per := b.pluginTime(from, b.logSize())
	b.add(&result{
		Key: "run", Name: fmt.Sprintf("`docker run --rm --network N busybox true` (median of %d)", benchReps),
		Ournet: median(times[drvOurnet]), Base: median(times[drvBridge]), Unit: "ms", Goal: 1.05, Upper: true,
		Note: fmt.Sprintf("inside the plugin %.1f ms per run (%s)", inPlugin/benchReps, fmtCalls(per, benchReps)),
	})
	return nil
}

// ports times `docker run -d -p ...` with 5 and with 100 published ports
// (until the container runs); removing the container is not timed.
func (b *bench) ports() error {
	nets, done, err := b.benchNets()
	defer done()
	if err != nil {
		return err
	}
	hostBase := map[driverKind]int{drvOurnet: 20000, drvBridge: 21000}
	var errs []string
	dnat := func() int { // DNAT rules (both families) in the engine's nat table
		n := 0
		for _, tool := range []string{"iptables-save", "ip6tables-save"} {
			out, _ := b.e.Sh(tool, "-t", "nat")
			n += strings.Count(out, "-j DNAT")
		}
		return n
	}
	for _, size := range []int{5, 100} {
		times := map[driverKind][]float64{}
		failed := map[driverKind]string{}
		rules := map[driverKind]int{}
		from := b.logSize()
		for i := 0; i < benchPortReps; i++ {
			for _, d := range order(i) {
				if failed[d] != "" {
					continue
				}
				name := "bp-" + string(d)
				spec := fmt.Sprintf("%d-%d:%d-%d", hostBase[d], hostBase[d]+size-1, 8000, 8000+size-1)
				before := dnat()
				dt, err := b.timed("run", "-d", "--name", name, "--network", nets[d], "-p", spec, Image, "sleep", "600")
				if err == nil && i < 2 {
					// Check that the ports were published at all.
					if rules[d] = dnat() - before; rules[d] < size {
						err = fmt.Errorf("%d DNAT rules for %d published ports", rules[d], size)
					}
				}
				if _, rmErr := b.docker("rm", "-f", name); rmErr != nil && err == nil {
					err = rmErr
				}
				if err != nil {
					failed[d] = err.Error()
					errs = append(errs, fmt.Sprintf("%s with %d ports: %v", d, size, err))
					continue
				}
				times[d] = append(times[d], ms(dt))
			}
		}
		time.Sleep(200 * time.Millisecond)
		inPlugin, per := b.pluginTime(from, b.logSize())
		r := &result{
			Key: fmt.Sprintf("%d ports", size), Name: fmt.Sprintf("`docker run -d` with %d published ports (median of %d)", size, benchPortReps),
			Ournet: median(times[drvOurnet]), Base: median(times[drvBridge]), Unit: "ms",
			Note: fmt.Sprintf("DNAT rules: ournet %d, bridge %d; inside the plugin %.1f ms per run and rm (%s)",
				rules[drvOurnet], rules[drvBridge], inPlugin/benchPortReps, fmtCalls(per, benchPortReps)),
		}
		if size == 100 {
			r.Goal, r.Upper = 1.0, true
		}
		if failed[drvOurnet] != "" || failed[drvBridge] != "" {
			r.Err = strings.TrimSpace(failed[drvOurnet] + " " + failed[drvBridge])
		}
		b.add(r)
	}
	if len(errs) > 0 {
		b.t.Errorf("published ports: %s", strings.Join(errs, "; "))
	}
	return nil
}

// growthPhase creates benchGrowth networks per driver, alternating, and
// times each create; the 1st, 50th, 200th and 500th are medians of the
// growthWindow creates around them (at the ends, the first or last ones):
// one create's time swings by a millisecond either way with whatever else
// the machine does, five of them still by half of that.
func (b *bench) growthPhase() error {
	times := map[driverKind][]float64{}
	var offsets []int64 // the log before each ournet create
	for i := 0; i < benchGrowth; i++ {
		for _, d := range order(i) {
			if d == drvOurnet {
				offsets = append(offsets, b.logSize())
			}
			name, subnet := growthNet(d, i)
			dt, err := b.timed(append(append([]string{"network", "create"}, netArgs(d, subnet)...), name)...)
			if err != nil {
				return fmt.Errorf("network %d of %s: %w", i+1, d, err)
			}
			b.growth[name] = d
			times[d] = append(times[d], ms(dt))
		}
	}
	time.Sleep(200 * time.Millisecond)
	offsets = append(offsets, b.logSize())
	var plugin []float64 // time inside the plugin per ournet create
	for i := 0; i+1 < len(offsets); i++ {
		t, _ := b.pluginTime(offsets[i], offsets[i+1])
		plugin = append(plugin, t)
	}
	times["plugin"] = plugin
	window := func(d driverKind, nth int) float64 { // median of the growthWindow around nth (1-based), inside the list
		lo := max(nth-1-growthWindow/2, 0)
		hi := lo + growthWindow
		if hi > len(times[d]) {
			lo, hi = len(times[d])-growthWindow, len(times[d])
		}
		return median(times[d][lo:hi])
	}
	for _, nth := range []int{1, 50, 200, 500} {
		r := &result{
			Key: fmt.Sprintf("create #%d", nth), Name: fmt.Sprintf("create of the %s network (median of the %d around it)", ordinal(nth), growthWindow),
			Ournet: window(drvOurnet, nth), Base: window(drvBridge, nth), Unit: "ms", NoChart: true,
			Note: fmt.Sprintf("inside the plugin %.1f ms", window("plugin", nth)),
		}
		if nth == 500 {
			r.Goal, r.Upper = 1.0, true // still ahead of the bridge driver
		}
		b.add(r)
	}
	o1, o200, b1, b200 := window(drvOurnet, 1), window(drvOurnet, 200), window(drvBridge, 1), window(drvBridge, 200)
	p1, p200 := window("plugin", 1), window("plugin", 200)
	b.add(&result{
		Key: "growth", Name: "growth: 200th create / 1st create", Self: true,
		Ournet: o200 / o1, Base: b200 / b1, Unit: "×", Goal: 1.1, Upper: true,
		Note: fmt.Sprintf("the ratio is ournet's own 200th / 1st (bridge's beside it); 200 networks of each driver exist when the 200th is made; "+
			"outside the plugin (dockerd, CLI) ournet's create took %.0f ms at the 1st, %.0f ms at the 200th", o1-p1, o200-p200),
	})
	p500 := window("plugin", 500)
	b.add(&result{
		Key: "growth in plugin", Name: "growth inside the plugin: 500th / 1st (its CreateNetwork, RequestPool, RequestAddress)", Self: true, NoChart: true,
		Ournet: p500 / p1, NoBase: true, Unit: "×", Goal: 1.2, Upper: true,
		Note: fmt.Sprintf("%.1f ms at the 1st, %.1f ms at the 200th, %.1f ms at the 500th (each the median of the %d creates around it); %d networks of each driver exist when the 500th is made",
			p1, p200, p500, growthWindow, benchGrowth),
	})
	b.writeGrowthData(times)
	return nil
}

// growthNet names growth network i of driver d and gives it a /28 (ournet in
// 198.18.128.0/19, bridge in 198.18.160.0/19: 512 each).
func growthNet(d driverKind, i int) (string, string) {
	base := 128
	if d == drvBridge {
		base = 160
	}
	off := i * 16
	return fmt.Sprintf("bg-%s-%03d", d, i+1), fmt.Sprintf("198.18.%d.%d/28", base+off/256, off%256)
}

func ordinal(n int) string {
	switch n {
	case 1:
		return "1st"
	case 2:
		return "2nd"
	}
	return strconv.Itoa(n) + "th"
}

// cleanupGrowth removes what growth and restore left.
func (b *bench) cleanupGrowth() {
	if out, _ := b.docker("ps", "-aq", "--filter", "label=ournet-bench"); out != "" {
		ids := strings.Fields(out)
		_ = parallel(len(ids), benchParallel, func(i int) error { _, err := b.docker("rm", "-f", ids[i]); return err })
	}
	b.dropGrowth(func(string, driverKind) bool { return true })
}

// dropGrowth removes the growth networks for which keep... returns true.
func (b *bench) dropGrowth(drop func(name string, d driverKind) bool) {
	var names []string
	for n, d := range b.growth {
		if drop(n, d) {
			names = append(names, n)
		}
	}
	_ = parallel(len(names), benchParallel, func(i int) error {
		_, err := b.docker("network", "rm", names[i])
		return err
	})
	for _, n := range names {
		delete(b.growth, n)
	}
}

// restore measures the plugin's restart with benchRestoreNet networks and
// benchRestoreEps endpoints: kill -9, then until the plugin logs "ready",
// and until a new `docker run` on one of those networks succeeds.
func (b *bench) restore() error {
	// Keep growth networks 1..100 of ournet, drop the rest.
	b.dropGrowth(func(n string, d driverKind) bool {
		num, _ := strconv.Atoi(n[len(n)-3:])
		return d != drvOurnet || num > benchRestoreNet
	})
	var names []string
	for i := 0; i < benchRestoreNet; i++ {
		name, subnet := growthNet(drvOurnet, i)
		if _, ok := b.growth[name]; !ok {
			if _, err := b.docker(append(append([]string{"network", "create"}, netArgs(drvOurnet, subnet)...), name)...); err != nil {
				return err
			}
			b.growth[name] = drvOurnet
		}
		names = append(names, name)
	}
	start := time.Now()
	if err := parallel(benchRestoreEps, benchParallel, func(i int) error {
		_, err := b.docker("run", "-d", "--label", "ournet-bench", "--name", fmt.Sprintf("bs-%03d", i),
			"--network", names[i%len(names)], Image, "sleep", "3600")
		return err
	}); err != nil {
		return err
	}
	b.t.Logf("restore: %d containers on %d networks started in %s", benchRestoreEps, len(names), time.Since(start).Round(time.Second))

	var took, ready, runOK []float64
	var restored string
	for k := 0; k < benchKills; k++ {
		r, err := b.killOnce(names[k%len(names)])
		if err != nil {
			return err
		}
		took, ready, runOK = append(took, r.took), append(ready, r.ready), append(runOK, r.run)
		restored = r.restored
	}
	b.add(&result{
		Key: "restore", Name: fmt.Sprintf("plugin restore after kill -9, %d networks / %d endpoints (median of %d)", benchRestoreNet, benchRestoreEps, benchKills),
		Ournet: median(took), Unit: "ms", NoBase: true,
		Note: fmt.Sprintf("the plugin's own took=; from the kill: %.0f ms until its \"ready\" line, %.0f ms until a new `docker run` on one of the networks succeeds (%s)",
			median(ready), median(runOK), restored),
	})
	return nil
}

type killResult struct {
	took, ready, run float64 // ms
	restored         string
}

var (
	readyRe    = regexp.MustCompile(`msg=ready took=(?:\\")?([0-9.]+[a-zµ]+)`)
	restoredRe = regexp.MustCompile(`state restored[^\n]*?endpoints=(\d+)[^\n]*?networks=(\d+)|state restored[^\n]*?networks=(\d+)[^\n]*?endpoints=(\d+)`)
)

// killOnce kills the plugin and times its return.
func (b *bench) killOnce(network string) (killResult, error) {
	var res killResult
	logPath := filepath.Join(b.e.Dir, "dockerd.log")
	st, err := os.Stat(logPath)
	if err != nil {
		return res, err
	}
	offset := st.Size()
	pid, err := b.e.PluginPID()
	if err != nil {
		return res, err
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return res, err
	}
	kill := time.Now()

	type seen struct {
		at   time.Time
		took time.Duration
		line string
	}
	readyCh := make(chan seen, 1)
	stop := make(chan struct{})
	defer close(stop)
	go func() { // poll the log for the new "ready" line
		for time.Since(kill) < 2*time.Minute {
			select {
			case <-stop:
				return
			default:
			}
			f, err := os.Open(logPath)
			if err == nil {
				_, _ = f.Seek(offset, 0)
				var all strings.Builder
				sc := bufio.NewScanner(f)
				sc.Buffer(make([]byte, 1<<20), 1<<20)
				for sc.Scan() {
					all.WriteString(sc.Text() + "\n")
				}
				f.Close()
				if m := readyRe.FindStringSubmatch(all.String()); m != nil {
					d, _ := time.ParseDuration(m[1])
					readyCh <- seen{at: time.Now(), took: d, line: all.String()}
					return
				}
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()

	var runErr error
	for time.Since(kill) < 2*time.Minute {
		if _, runErr = b.e.Docker(time.Minute, "run", "--rm", "--network", network, Image, "true"); runErr == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if runErr != nil {
		return res, fmt.Errorf("no docker run succeeded within 2 minutes of the kill: %w", runErr)
	}
	res.run = ms(time.Since(kill))
	select {
	case s := <-readyCh:
		res.ready = ms(s.at.Sub(kill))
		res.took = ms(s.took)
		if m := restoredRe.FindStringSubmatch(s.line); m != nil {
			if m[1] != "" {
				res.restored = fmt.Sprintf("restored networks=%s endpoints=%s", m[2], m[1])
			} else {
				res.restored = fmt.Sprintf("restored networks=%s endpoints=%s", m[3], m[4])
			}
		}
	case <-time.After(2 * time.Minute):
		return res, fmt.Errorf("the plugin logged no \"ready\" line within 2 minutes of the kill")
	}
	b.t.Logf("kill -9: ready line after %.0f ms (took=%.0f ms), docker run ok after %.0f ms; %s", res.ready, res.took, res.run, res.restored)
	// The next kill must find the new process.
	waitFor(b.t, 30*time.Second, "the new plugin process", func() error {
		p, err := b.e.PluginPID()
		if err == nil && p == pid {
			return fmt.Errorf("still the old pid")
		}
		return err
	})
	return res, nil
}

// throughput measures TCP throughput container -> container on one network
// of each driver with iperf3, and the floor: two bare network namespaces on
// a plain Linux bridge, no Docker and no iptables rules.
func (b *bench) throughput() error {
	nets, done, err := b.benchNets()
	defer done()
	if err != nil {
		return err
	}
	// What the anti-spoofing checks cost: ournet with them off too.
	nets[drvNoSpoof] = "bn-nospoof"
	if _, err := b.docker(append(append([]string{"network", "create"}, netArgs(drvOurnet, "198.18.249.0/24")...),
		"-o", "ournet.anti_spoofing=false", nets[drvNoSpoof])...); err != nil {
		return err
	}
	defer b.docker("network", "rm", nets[drvNoSpoof])
	servers := map[driverKind]string{}
	for _, d := range []driverKind{drvOurnet, drvBridge, drvNoSpoof} {
		s, c := "bt-"+string(d)+"-s", "bt-"+string(d)+"-c"
		if _, err := b.docker("run", "-d", "--label", "ournet-bench", "--name", s, "--network", nets[d], BenchImage, "iperf3", "-s"); err != nil {
			return err
		}
		defer b.docker("rm", "-f", s)
		if _, err := b.docker("run", "-d", "--label", "ournet-bench", "--name", c, "--network", nets[d], BenchImage, "sleep", "600"); err != nil {
			return err
		}
		defer b.docker("rm", "-f", c)
		servers[d] = b.e.IP(b.t, s, nets[d])
	}
	floor, stopFloor, err := b.floorNetns()
	defer stopFloor()
	if err != nil {
		return err
	}
	time.Sleep(500 * time.Millisecond) // the servers listen
	gbits, err := iperfRounds([]string{string(drvOurnet), string(drvBridge), "floor", string(drvNoSpoof)}, func(target string, args ...string) ([]byte, error) {
		if target == "floor" {
			return exec.Command("nsenter", append([]string{"--net=/run/netns/" + floor.client, "iperf3", "-c", floor.serverIP}, args...)...).CombinedOutput()
		}
		s, err := b.e.Docker(time.Minute, append([]string{"exec", "bt-" + target + "-c", "iperf3", "-c", servers[driverKind(target)]}, args...)...)
		return []byte(s), err
	})
	if err != nil {
		return err
	}
	b.t.Logf("throughput Gbit/s: %v", gbits)
	o, br, fl, ns := median(gbits["ournet"]), median(gbits["bridge"]), median(gbits["floor"]), median(gbits[string(drvNoSpoof)])
	b.add(&result{
		Key: "tput/bridge", Name: fmt.Sprintf("TCP throughput container → container, iperf3 (median of %d × %d s)", benchTputReps, benchTputSecs),
		Ournet: o, Base: br, Unit: "Gbit/s", Goal: 0.97,
		Note: fmt.Sprintf("ournet with ournet.anti_spoofing=false: %.2f Gbit/s (%.2f of bridge)", ns, ns/br),
	})
	b.add(&result{
		Key: "tput/floor", Name: "TCP throughput vs the floor: two bare netns on a plain bridge, no Docker", BaseName: "floor",
		Ournet: o, Base: fl, Unit: "Gbit/s", Goal: 0.9,
		Note: fmt.Sprintf("bridge driver / floor = %.2f", br/fl),
	})
	return nil
}

type floorNS struct {
	host, server, client string
	serverIP             string
}

// floorNetns makes the floor: a throwaway "host" netns with a plain bridge
// (bridge-nf-call-* off, no iptables rules) and two netns on veths, with an
// iperf3 server in one.
func (b *bench) floorNetns() (floorNS, func(), error) {
	sfx := b.e.NetNS[len(b.e.NetNS)-6:]
	f := floorNS{host: "obf-h-" + sfx, server: "obf-s-" + sfx, client: "obf-c-" + sfx, serverIP: "198.18.254.1"}
	var srv *exec.Cmd
	stop := func() {
		if srv != nil && srv.Process != nil {
			_ = srv.Process.Kill()
			_ = srv.Wait()
		}
		for _, ns := range []string{f.client, f.server, f.host} {
			_ = exec.Command("ip", "netns", "del", ns).Run()
		}
	}
	cmds := [][]string{
		{"ip", "netns", "add", f.host}, {"ip", "netns", "add", f.server}, {"ip", "netns", "add", f.client},
		{"ip", "-n", f.host, "link", "set", "lo", "up"},
		{"ip", "-n", f.host, "link", "add", "br0", "type", "bridge"},
		{"ip", "-n", f.host, "link", "set", "br0", "up"},
	}
	for i, ns := range []string{f.server, f.client} {
		cmds = append(cmds,
			[]string{"ip", "-n", f.host, "link", "add", "v" + ns[4:5], "type", "veth", "peer", "name", "eth0", "netns", ns},
			[]string{"ip", "-n", f.host, "link", "set", "v" + ns[4:5], "master", "br0", "up"},
			[]string{"ip", "-n", ns, "addr", "add", fmt.Sprintf("198.18.254.%d/24", i+1), "dev", "eth0"},
			[]string{"ip", "-n", ns, "link", "set", "eth0", "up"},
			[]string{"ip", "-n", ns, "link", "set", "lo", "up"},
		)
	}
	for _, c := range cmds {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			return f, stop, fmt.Errorf("%s: %w: %s", strings.Join(c, " "), err, out)
		}
	}
	// A plain bridge: frames are not passed to iptables (br_netfilter's
	// switches are per namespace).
	for _, k := range []string{"bridge-nf-call-iptables", "bridge-nf-call-ip6tables"} {
		_ = exec.Command("nsenter", "--net=/run/netns/"+f.host, "sh", "-c", "echo 0 > /proc/sys/net/bridge/"+k).Run()
	}
	srv = exec.Command("nsenter", "--net=/run/netns/"+f.server, "iperf3", "-s")
	if err := srv.Start(); err != nil {
		return f, stop, err
	}
	return f, stop, nil
}

// iperfRounds runs benchTputReps rounds of iperf3 clients, one run of
// benchTputSecs per target in each round, each target first in turn so that
// the machine's drift hits all alike, and returns each target's Gbit/s.
// run starts a target's client with args (-t, -J) and returns its output.
func iperfRounds(targets []string, run func(target string, args ...string) ([]byte, error)) (map[string][]float64, error) {
	gbits := map[string][]float64{}
	for i := 0; i < benchTputReps; i++ {
		for j := range targets {
			target := targets[(i+j)%len(targets)]
			out, err := run(target, "-t", strconv.Itoa(benchTputSecs), "-J")
			if err != nil {
				return nil, fmt.Errorf("iperf3 to %s: %w: %s", target, err, out)
			}
			g, err := iperfGbits(out)
			if err != nil {
				return nil, fmt.Errorf("iperf3 to %s: %w", target, err)
			}
			gbits[target] = append(gbits[target], g)
		}
	}
	return gbits, nil
}

// iperfGbits reads the receiver's throughput from iperf3 -J.
func iperfGbits(out []byte) (float64, error) {
	var r struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		return 0, fmt.Errorf("reading iperf3 output: %w: %.200s", err, out)
	}
	if r.Error != "" {
		return 0, fmt.Errorf("iperf3: %s", r.Error)
	}
	return r.End.SumReceived.BitsPerSecond / 1e9, nil
}

// importBenchImage imports BenchImage: busybox plus this host's iperf3 and
// the shared libraries it loads, at their own paths.
func (b *bench) importBenchImage() error { return importBenchImageOn(b.e) }

// importBenchImageOn imports BenchImage on engine e.
func importBenchImageOn(e *Engine) error {
	ip3, err := exec.LookPath("iperf3")
	if err != nil {
		return fmt.Errorf("iperf3 not found: run scripts/deps.sh iperf3=iperf3")
	}
	ldd, err := exec.Command("ldd", ip3).Output()
	if err != nil {
		return fmt.Errorf("ldd %s: %w", ip3, err)
	}
	copies := map[string]string{ip3: "bin/iperf3"} // host file -> path in the image
	for _, l := range strings.Split(string(ldd), "\n") {
		f := strings.Fields(l)
		switch {
		case len(f) >= 3 && f[1] == "=>" && strings.HasPrefix(f[2], "/"):
			copies[f[2]] = f[2]
		case len(f) >= 1 && strings.HasPrefix(f[0], "/"):
			copies[f[0]] = f[0]
		}
	}
	return e.importImage(BenchImage, []string{"sh", "sleep", "true"}, func(root string) error {
		for src, dst := range copies {
			raw, err := os.ReadFile(src)
			if err != nil {
				return err
			}
			dst = filepath.Join(root, dst)
			if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
				return err
			}
			if err := os.WriteFile(dst, raw, 0o755); err != nil {
				return err
			}
		}
		return nil
	})
}
