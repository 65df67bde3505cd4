//go:build bench

package e2e

// Issue #15's idle row, measured before its redesign: 50 ournet networks
// and 100 containers, then 60 s in which nothing happens. How much CPU the
// plugin uses then (its own and its children's) and how many processes it
// starts (fork events of the kernel's process connector whose parent is
// the plugin), beside dockerd's own CPU over the same minute.
//
// Addresses: 198.18.200.0/22 (50 /27s).

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
)

const (
	benchIdleNets = 50
	benchIdleCtrs = 2 // per network
	benchIdleSecs = 60
)

// cpuTicks reads utime+stime (and, with children, cutime+cstime) of pid.
func cpuTicks(pid int, children bool) (int64, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(raw)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:]) // fields from 3 (state) on
	var sum int64
	n := 2
	if children {
		n = 4
	}
	for i := 0; i < n; i++ {
		v, err := strconv.ParseInt(f[11+i], 10, 64) // utime is field 14
		if err != nil {
			return 0, err
		}
		sum += v
	}
	return sum, nil
}

func (b *bench) idle() error {
	var nets []string
	defer func() {
		_ = parallel(benchIdleNets*benchIdleCtrs, benchParallel, func(i int) error {
			_, err := b.docker("rm", "-f", fmt.Sprintf("bi-%d", i))
			return err
		})
		for _, n := range nets {
			_, _ = b.docker("network", "rm", n)
		}
	}()
	for i := 0; i < benchIdleNets; i++ {
		name := fmt.Sprintf("bi-%02d", i)
		off := i * 32
		if _, err := b.docker(append(append([]string{"network", "create"}, netArgs(drvOurnet, fmt.Sprintf("198.18.%d.%d/27", 200+off/256, off%256))...), name)...); err != nil {
			return err
		}
		nets = append(nets, name)
	}
	if err := parallel(benchIdleNets*benchIdleCtrs, benchParallel, func(i int) error {
		_, err := b.docker("run", "-d", "--label", "ournet-bench", "--name", fmt.Sprintf("bi-%d", i), "--network", nets[i%benchIdleNets], Image, "sleep", "3600")
		return err
	}); err != nil {
		return err
	}
	pid, err := b.e.PluginPID()
	if err != nil {
		return err
	}
	dockerd := b.e.cmd.Process.Pid
	time.Sleep(5 * time.Second) // the runs' own work is over
	events := make(chan netlink.ProcEvent, 4096)
	done := make(chan struct{})
	errs := make(chan error, 1)
	if err := netlink.ProcEventMonitor(events, done, errs); err != nil {
		return fmt.Errorf("process connector: %w", err)
	}
	p0, err := cpuTicks(pid, true)
	if err != nil {
		return err
	}
	d0, _ := cpuTicks(dockerd, false)
	forks := 0
	end := time.After(benchIdleSecs * time.Second)
count:
	for {
		select {
		case ev := <-events:
			if f, ok := ev.Msg.(*netlink.ForkProcEvent); ok && int(f.ParentTgid) == pid && f.ChildTgid != f.ParentTgid {
				forks++
			}
		case err := <-errs:
			close(done)
			return fmt.Errorf("process connector: %w", err)
		case <-end:
			break count
		}
	}
	close(done)
	p1, err := cpuTicks(pid, true)
	if err != nil {
		return err
	}
	d1, _ := cpuTicks(dockerd, false)
	per := float64(time.Minute) / float64(benchIdleSecs*time.Second)
	cpu := float64(p1-p0) / 100 * per
	b.t.Logf("idle: plugin %.2f s CPU/min with its children, %d processes started in %d s; dockerd %.2f s CPU/min", cpu, forks, benchIdleSecs, float64(d1-d0)/100*per)
	var failed string
	if forks > 0 {
		failed = fmt.Sprintf("the plugin started %d processes while nothing happened", forks)
	}
	b.add(&result{
		Err: failed, Key: "idle", Name: fmt.Sprintf("idle: %d networks, %d containers, %d s with nothing happening: the plugin's CPU per minute, its children included", benchIdleNets, benchIdleNets*benchIdleCtrs, benchIdleSecs),
		Ournet: cpu, Unit: "s", Self: true, NoBase: true, NoChart: true, Goal: 0.05, Upper: true,
		Note: fmt.Sprintf("processes started by the plugin: %d (%.0f a minute; the goal: none); dockerd itself: %.2f s of CPU a minute; before drift repair was driven by the kernel's announcements: 0.92 s and 408 processes a minute", forks, float64(forks)*per, float64(d1-d0)/100*per),
	})
	return nil
}
