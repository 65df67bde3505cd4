//go:build bench

package e2e

// The bench's report: a markdown table (stdout, docs/bench.md, README.md's
// Benchmark section between its bench markers) and a chart, docs/bench.png,
// drawn by gnuplot.

import (
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"
)

// result is one row of the table.
type result struct {
	Key      string // the chart's label
	Name     string // the table's label
	Ournet   float64
	Base     float64 // the baseline's value: the bridge driver's, or BaseName's
	BaseName string  // default "bridge"
	Unit     string
	Goal     float64 // 0: no goal
	Upper    bool    // the ratio must be ≤ Goal (else ≥ Goal)
	Self     bool    // Ournet is itself the ratio (and Base the bridge's)
	NoBase   bool    // no baseline, no ratio
	NoChart  bool    // left out of the chart
	Note     string
	Err      string
}

func (r *result) ratio() float64 {
	if r.Self {
		return r.Ournet
	}
	if r.NoBase || r.Base == 0 {
		return math.NaN()
	}
	return r.Ournet / r.Base
}

// verdict is "met", "missed by N %" or "".
func (r *result) verdict() string {
	q := r.ratio()
	if r.Goal == 0 || math.IsNaN(q) || r.Err != "" {
		return ""
	}
	if r.Upper && q <= r.Goal || !r.Upper && q >= r.Goal {
		return "met"
	}
	if r.Upper {
		return fmt.Sprintf("missed by %.0f %%", (q/r.Goal-1)*100)
	}
	return fmt.Sprintf("missed by %.0f %%", (1-q/r.Goal)*100)
}

func (r *result) goalText() string {
	if r.Goal == 0 {
		return ""
	}
	if r.Upper {
		return fmt.Sprintf("≤ %.2f", r.Goal)
	}
	return fmt.Sprintf("≥ %.2f", r.Goal)
}

func fmtValue(v float64, unit string) string {
	if math.IsNaN(v) || v == 0 && unit != "rules" {
		return "–"
	}
	switch unit {
	case "ms":
		if v >= 10000 {
			return fmt.Sprintf("%.1f s", v/1000)
		}
		return fmt.Sprintf("%.0f ms", v)
	case "Gbit/s":
		return fmt.Sprintf("%.2f Gbit/s", v)
	case "rules":
		return fmt.Sprintf("%.0f", v)
	case "×":
		return fmt.Sprintf("%.2f×", v)
	}
	return fmt.Sprintf("%.2f %s", v, unit)
}

// machine describes where the bench ran.
type machine struct {
	CPUs      int
	CPU       string
	Kernel    string
	Engine    string
	Iptables  string
	Date      time.Time
	LoadStart string
	LoadEnd   string
	Took      time.Duration
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func (b *bench) machine() machine {
	m := machine{CPUs: runtime.NumCPU(), Date: time.Now().UTC(), LoadStart: loadavg(), CPU: "?"}
	if raw, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(raw), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if out, err := exec.Command("uname", "-r").Output(); err == nil {
		m.Kernel = strings.TrimSpace(string(out))
	}
	m.Engine, _ = b.docker("version", "--format", "{{.Server.Version}}")
	if p, err := exec.LookPath("iptables"); err == nil {
		if r, err := filepath.EvalSymlinks(p); err == nil {
			m.Iptables = filepath.Base(r)
		}
	}
	return m
}

func (m machine) String() string {
	return fmt.Sprintf("%d CPUs (%s), kernel %s, Docker engine %s, %s; %s; load average %s at the start, %s at the end; the bench took %s",
		m.CPUs, m.CPU, m.Kernel, m.Engine, m.Iptables, m.Date.Format("2006-01-02 15:04 UTC"),
		m.LoadStart, m.LoadEnd, m.Took.Round(time.Second))
}

// table renders the results as markdown.
func (b *bench) table() string {
	var s strings.Builder
	s.WriteString("| measure | ournet | baseline | ratio | goal | result |\n|---|---|---|---|---|---|\n")
	for _, r := range b.results {
		if r.Err != "" && r.Ournet == 0 {
			fmt.Fprintf(&s, "| %s | failed: %s | | | %s | not measured |\n", r.Name, oneLine(r.Err), r.goalText())
			continue
		}
		base := r.BaseName
		if base == "" {
			base = "bridge"
		}
		baseCell := base + " " + fmtValue(r.Base, r.Unit)
		if r.NoBase {
			baseCell = "–"
		}
		ratio := "–"
		if q := r.ratio(); !math.IsNaN(q) {
			ratio = fmt.Sprintf("%.2f", q)
		}
		verdict := r.verdict()
		if r.Err != "" {
			verdict = "failed: " + oneLine(r.Err)
		}
		name := r.Name
		if r.Note != "" {
			name += "<br>" + r.Note
		}
		fmt.Fprintf(&s, "| %s | %s | %s | %s | %s | %s |\n", name, fmtValue(r.Ournet, r.Unit), baseCell, ratio, r.goalText(), verdict)
	}
	return s.String()
}

func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	s = strings.ReplaceAll(s, "|", "/")
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return s
}

const (
	benchBegin = "<!-- bench:begin (written by make bench) -->"
	benchEnd   = "<!-- bench:end -->"
)

// report prints the table and writes docs/bench.md, docs/bench.png and
// README.md's Benchmark section.
func (b *bench) report() {
	out := os.Getenv("BENCH_OUT")
	readme := out == ""
	if out == "" {
		out = filepath.Join(repoRoot(), "docs")
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		b.t.Error(err)
		return
	}
	body := fmt.Sprintf("Measured by `make bench` on %s.\n\n%s\nRatios are ournet / baseline; medians of repeated runs, drivers alternating.\n\n![ournet / bridge ratios and network create latency](docs/bench.png)\n",
		b.info, b.table())
	fmt.Println("\n== make bench\n" + body)
	md := "# ournet benchmark\n\n" + strings.ReplaceAll(body, "docs/bench.png", "bench.png")
	if err := os.WriteFile(filepath.Join(out, "bench.md"), []byte(md), 0o644); err != nil {
		b.t.Error(err)
	}
	if err := b.chart(filepath.Join(out, "bench.png")); err != nil {
		b.t.Errorf("drawing the chart: %v", err)
	}
	if readme {
		if err := replaceBetween(filepath.Join(repoRoot(), "README.md"), benchBegin, benchEnd, body); err != nil {
			b.t.Logf("README.md not updated: %v", err)
		}
	}
}

// replaceBetween rewrites what lies between the begin and end markers.
func replaceBetween(path, begin, end, body string) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	s := string(raw)
	i, j := strings.Index(s, begin), strings.Index(s, end)
	if i < 0 || j < i {
		return fmt.Errorf("no %q ... %q markers", begin, end)
	}
	s = s[:i+len(begin)] + "\n" + body + s[j:]
	return os.WriteFile(path, []byte(s), 0o644)
}

// growthTimes keeps the growth phase's create times for the chart.
var growthTimes map[driverKind][]float64

func (b *bench) writeGrowthData(times map[driverKind][]float64) { growthTimes = times }

// runningMedian smooths v with a window of w around each point.
func runningMedian(v []float64, w int) []float64 {
	out := make([]float64, len(v))
	for i := range v {
		lo, hi := max(0, i-w/2), min(len(v), i+w/2+1)
		out[i] = median(v[lo:hi])
	}
	return out
}

// chart draws the ratios against their goals and, if the growth phase ran,
// the create latency against the number of networks.
func (b *bench) chart(path string) error {
	if _, err := exec.LookPath("gnuplot"); err != nil {
		return fmt.Errorf("gnuplot not found: run scripts/deps.sh gnuplot=gnuplot-nox")
	}
	dir, err := os.MkdirTemp("", "ournet-bench-chart")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	var bars strings.Builder
	ymax := 1.3
	n := 0
	for _, r := range b.results {
		q := r.ratio()
		if r.NoChart || math.IsNaN(q) || math.IsInf(q, 0) || r.Err != "" && r.Ournet == 0 {
			continue
		}
		color, goal := "0x999999", "NaN"
		switch v := r.verdict(); {
		case v == "met":
			color = "0x2e8b57"
		case v != "":
			color = "0xcc3333"
		}
		label := r.Key
		if r.Goal != 0 {
			goal = fmt.Sprintf("%g", r.Goal)
			label += " " + r.goalText()
		}
		ymax = math.Max(ymax, q*1.15)
		fmt.Fprintf(&bars, "%d \"%s\" %g %s %s %g\n", n, label, q, goal, color, math.Max(q, r.Goal))
		n++
	}
	if err := os.WriteFile(filepath.Join(dir, "bars.dat"), []byte(bars.String()), 0o644); err != nil {
		return err
	}
	title := fmt.Sprintf("ournet vs Docker bridge: %d CPUs, kernel %s, engine %s, %s",
		b.info.CPUs, b.info.Kernel, b.info.Engine, b.info.Date.Format("2006-01-02"))
	script := fmt.Sprintf(`set terminal pngcairo size 1500,650 font "sans,11"
set output %q
set encoding utf8
set multiplot layout 1,%d title %q font "sans,13"
set style fill solid 0.85 border -1
set boxwidth 0.6
set grid ytics
set yrange [0:%g]
set xrange [-0.6:%g]
set ylabel "ournet / baseline (bars); goal (black tick)"
set xtics rotate by -35 nomirror font "sans,10"
set title "Ratios: green met, red missed, grey no goal"
plot "bars.dat" using 1:3:5:xtic(2) with boxes lc rgb variable notitle, \
     "" using ($1-0.4):4:(0.8):(0) with vectors nohead lw 3 lc rgb "black" title "goal", \
     "" using 1:6:(sprintf("%%.2f", $3)) with labels offset 0,0.9 notitle
`, filepath.Base(path), map[bool]int{false: 1, true: 2}[growthTimes != nil], title, ymax, float64(n)-0.4)
	if growthTimes != nil {
		o, br, pl := growthTimes[drvOurnet], growthTimes[drvBridge], growthTimes["plugin"]
		om, bm, pm := runningMedian(o, 9), runningMedian(br, 9), runningMedian(pl, 9)
		var g strings.Builder
		top := 0.0
		for i := 0; i < len(o) && i < len(br) && i < len(pl); i++ {
			fmt.Fprintf(&g, "%d %g %g %g %g %g\n", i+1, o[i], br[i], om[i], bm[i], pm[i])
			top = math.Max(top, math.Max(om[i], bm[i]))
		}
		if err := os.WriteFile(filepath.Join(dir, "growth.dat"), []byte(g.String()), 0o644); err != nil {
			return err
		}
		script += fmt.Sprintf(`set title "docker network create latency while networks accumulate (both drivers alternate)"
unset xrange
set autoscale
set yrange [0:%g]`, math.Ceil(top*1.6/50)*50) + `
set xtics norotate font "sans,10"
set xlabel "networks of each driver"
set ylabel "ms"
set key top left
plot "growth.dat" using 1:2 with points pt 7 ps 0.4 lc rgb "0x99c2a2" title "ournet, each create", \
     "" using 1:3 with points pt 7 ps 0.4 lc rgb "0xa0b4d8" title "bridge, each create", \
     "" using 1:4 with lines lw 3 lc rgb "0x2e8b57" title "ournet, running median of 9", \
     "" using 1:5 with lines lw 3 lc rgb "0x3060b0" title "bridge, running median of 9", \
     "" using 1:6 with lines lw 2 dt 2 lc rgb "0x2e8b57" title "ournet, of which inside the plugin"
`
	}
	script += "unset multiplot\n"
	if err := os.WriteFile(filepath.Join(dir, "chart.gp"), []byte(script), 0o644); err != nil {
		return err
	}
	cmd := exec.Command("gnuplot", "chart.gp")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("gnuplot: %w: %s", err, out)
	}
	raw, err := os.ReadFile(filepath.Join(dir, filepath.Base(path)))
	if err != nil {
		return err
	}
	return os.WriteFile(path, raw, 0o644)
}
