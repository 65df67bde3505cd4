//go:build bench

package e2e

// Issue #15's repair row: every table flushed at once, as a firewalld
// reload does (iptables-restore without --noflush: every chain emptied,
// every user chain deleted, the built-in chains' policies kept), until a
// container reaches its neighbour and the outside again. Measured with the
// kernel's announcements (the default) and, for comparison, with
// REPAIR_ON_EVENTS=false (polling every RECONCILE_INTERVAL, 5 s).
//
// The probes run in the container: a new ping every 20 ms to the
// neighbour and to the uplink host, each its own ICMP flow (its own ID),
// so each needs the rules afresh: the filter rules for both, the
// masquerade for the outside (the uplink has no route back to container
// addresses). Addresses: 198.18.250.0/24.

import (
	"bufio"
	"fmt"
	"os/exec"
	"sort"
	"strings"
	"time"
)

const (
	benchRepairs     = 5 // with the announcements
	benchRepairsPoll = 3 // polling
)

func (b *bench) repair() error {
	NewUplink(b.t, b.e)
	if _, err := b.docker(append(append([]string{"network", "create"}, netArgs(drvOurnet, "198.18.250.0/24")...), "brep")...); err != nil {
		return err
	}
	defer func() {
		_, _ = b.docker("rm", "-f", "brep-a", "brep-b")
		_, _ = b.docker("network", "rm", "brep")
	}()
	for _, c := range []string{"brep-a", "brep-b"} {
		if _, err := b.docker("run", "-d", "--label", "ournet-bench", "--name", c, "--network", "brep", Image, "sleep", "3600"); err != nil {
			return err
		}
	}
	peer, err := b.docker("inspect", "-f", "{{(index .NetworkSettings.Networks \"brep\").IPAddress}}", "brep-b")
	if err != nil {
		return err
	}
	measure := func(n, probes int) ([]float64, error) {
		var out []float64
		for i := 0; i < n; i++ {
			d, err := b.repairOnce(strings.TrimSpace(peer), probes)
			if err != nil {
				return nil, err
			}
			out = append(out, d.Seconds())
		}
		return out, nil
	}
	events, err := measure(benchRepairs, 400)
	if err != nil {
		return err
	}
	// The same with polling.
	for _, step := range [][]string{{"plugin", "disable", "-f", PluginName}, {"plugin", "set", PluginName, "REPAIR_ON_EVENTS=false"}, {"plugin", "enable", PluginName}} {
		if _, err := b.docker(step...); err != nil {
			return err
		}
	}
	poll, perr := measure(benchRepairsPoll, 1000)
	for _, step := range [][]string{{"plugin", "disable", "-f", PluginName}, {"plugin", "set", PluginName, "REPAIR_ON_EVENTS=true"}, {"plugin", "enable", PluginName}} {
		if _, err := b.docker(step...); err != nil {
			return err
		}
	}
	if perr != nil {
		return perr
	}
	b.t.Logf("repair after a flush of every table (s): announced %v, polling %v", events, poll)
	sort.Float64s(events)
	sort.Float64s(poll)
	b.add(&result{
		Key: "repair", Name: fmt.Sprintf("repair: every table flushed (a firewalld reload) → a container reaches its neighbour and the outside again (median of %d)", benchRepairs),
		Ournet: median(events), Unit: "s", Self: true, NoBase: true, NoChart: true, Goal: 1.0, Upper: true,
		Note: fmt.Sprintf("max %.2f s; with REPAIR_ON_EVENTS=false (polling every 5 s): median %.2f s, max %.2f s; a new ping every 20 ms to each, each its own flow", events[len(events)-1], median(poll), poll[len(poll)-1]),
	})
	return nil
}

// repairOnce flushes every table while brep-a pings brep-b (peer) and the
// uplink, and returns the time from the end of the flush until both answer
// a new ping again. probes bounds the probes of each (20 ms apart, so at
// least probes × 20 ms).
func (b *bench) repairOnce(peer string, probes int) (time.Duration, error) {
	loop := fmt.Sprintf(`i=0; while [ $i -lt %d ]; do
		(ping -c 1 -W 1 %s >/dev/null 2>&1 && echo ok-peer) &
		(ping -c 1 -W 1 %s >/dev/null 2>&1 && echo ok-out) &
		usleep 20000; i=$((i+1)); done; wait`, probes, peer, UplinkPeerIP)
	cmd := exec.Command("docker", "-H", b.e.Host, "exec", "brep-a", "sh", "-c", loop)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return 0, err
	}
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	type line struct {
		text string
		at   time.Time
	}
	lines := make(chan line, 1024)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- line{sc.Text(), time.Now()}
		}
		close(lines)
	}()
	// Both answering before the flush.
	seen := map[string]bool{}
	for deadline := time.After(5 * time.Second); !seen["ok-peer"] || !seen["ok-out"]; {
		select {
		case l, ok := <-lines:
			if !ok {
				return 0, fmt.Errorf("the probes stopped before the flush")
			}
			seen[l.text] = true
		case <-deadline:
			return 0, fmt.Errorf("the probes never answered before the flush: %v", seen)
		}
	}
	if err := b.flushEverything(); err != nil {
		return 0, err
	}
	flushed := time.Now()
	back := map[string]time.Duration{}
	for len(back) < 2 {
		l, ok := <-lines
		if !ok {
			return 0, fmt.Errorf("traffic not back within the %d probes (%s at least): %v", probes, time.Duration(probes)*20*time.Millisecond, back)
		}
		// A reply that arrives at once was sent before the flush.
		if d := l.at.Sub(flushed); d > 10*time.Millisecond {
			if _, done := back[l.text]; !done {
				back[l.text] = d
			}
		}
	}
	return max(back["ok-peer"], back["ok-out"]), nil
}

// flushEverything empties every table of both families in the engine's
// namespace and deletes every user chain, keeping the built-in chains'
// policies (dockerd's FORWARD DROP among them).
func (b *bench) flushEverything() error {
	for _, tool := range []string{"iptables", "ip6tables"} {
		var script strings.Builder
		for _, table := range []string{"filter", "nat", "mangle", "raw"} {
			dump, err := b.e.Sh(tool+"-save", "-t", table)
			if err != nil {
				return fmt.Errorf("%s-save -t %s: %v: %s", tool, table, err, dump)
			}
			fmt.Fprintf(&script, "*%s\n", table)
			for _, l := range strings.Split(dump, "\n") {
				if f := strings.Fields(l); len(f) >= 2 && strings.HasPrefix(l, ":") && f[1] != "-" {
					fmt.Fprintf(&script, "%s %s [0:0]\n", f[0], f[1]) // a built-in chain, its policy
				}
			}
			script.WriteString("COMMIT\n")
		}
		cmd := exec.Command("nsenter", "--net=/run/netns/"+b.e.NetNS, tool+"-restore")
		cmd.Stdin = strings.NewReader(script.String())
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("%s-restore (the flush): %v: %s", tool, err, out)
		}
	}
	return nil
}
