//go:build chaos

package e2e

// Issue #16's chaos test: the plugin killed with SIGKILL at random moments
// (seeded, reproducible: E2E_CHAOS_SEED) during a parallel load of network
// create/rm, run/rm with published ports and connect/disconnect; then
// dockerd killed too. After each: no duplicate address, no leaked link,
// rule or pool, every live container reachable, ournet-status clean.
// Bounded: 30 s of load, 3 workers, at most 10 kills. Built with -tags
// chaos: make runs it on the oldest and the newest engine.

import (
	"encoding/json"
	"fmt"
	"math/rand"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

type chaosStats struct {
	mu       sync.Mutex
	ops, bad int
	msgs     map[string]int
}

func (s *chaosStats) note(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ops++
	if err == nil {
		return
	}
	s.bad++
	msg := err.Error()
	if i := strings.Index(msg, "Error response from daemon: "); i >= 0 {
		msg = msg[i+len("Error response from daemon: "):]
	}
	// Names and IDs differ per command: keep what the error says.
	if i := strings.Index(msg, "): "); i >= 0 && strings.Contains(msg[:i], " (") {
		msg = msg[:strings.LastIndex(msg[:i], " (")] + msg[i+1:]
	}
	if len(msg) > 200 {
		msg = msg[:200]
	}
	s.msgs[msg]++
}

func TestChaos(t *testing.T) {
	seed := time.Now().UnixNano() % 100000
	if v := os.Getenv("E2E_CHAOS_SEED"); v != "" {
		seed, _ = strconv.ParseInt(v, 10, 64)
	}
	t.Logf("seed %d (E2E_CHAOS_SEED=%d reproduces the schedule)", seed, seed)
	e := NewEngine(t)
	// Networks that stay, so that connect/disconnect and runs have targets.
	for i := 0; i < 2; i++ {
		Net(t, e, fmt.Sprintf("chaos%d", i), "-d", "ournet", "--ipam-driver", "ournet", "--subnet", fmt.Sprintf("198.18.%d.0/24", 110+i))
	}
	stats := &chaosStats{msgs: map[string]int{}}
	deadline := time.Now().Add(30 * time.Second)
	var wg sync.WaitGroup
	for w := 0; w < 3; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			r := rand.New(rand.NewSource(seed + int64(w)))
			for i := 0; time.Now().Before(deadline) && i < 200; i++ {
				name := fmt.Sprintf("cw%d-%d", w, i)
				net := fmt.Sprintf("chaos%d", r.Intn(2))
				switch r.Intn(4) {
				case 0: // a network of its own, used once, removed
					sub := fmt.Sprintf("198.18.%d.0/24", 113+w)
					_, err := e.Docker(time.Minute, "network", "create", "-d", "ournet", "--ipam-driver", "ournet", "--subnet", sub, name)
					stats.note(err)
					if err == nil {
						_, err = e.Docker(time.Minute, "run", "--rm", "--network", name, Image, "true")
						stats.note(err)
					}
					_, err = e.Docker(time.Minute, "network", "rm", name)
					if err != nil && strings.Contains(err.Error(), "not found") {
						err = nil
					}
					stats.note(err)
				case 1, 2: // a container with a published port, maybe connected elsewhere
					port := 18200 + 20*w + r.Intn(20)
					_, err := e.Docker(time.Minute, "run", "-d", "--name", name, "--network", net, "-p", fmt.Sprintf("%d:80", port), Image, "sleep", "600")
					stats.note(err)
					if err == nil && r.Intn(2) == 0 {
						other := fmt.Sprintf("chaos%d", 1-(net[len(net)-1]-'0'))
						_, err = e.Docker(time.Minute, "network", "connect", other, name)
						stats.note(err)
						if err == nil && r.Intn(2) == 0 {
							_, err = e.Docker(time.Minute, "network", "disconnect", other, name)
							stats.note(err)
						}
					}
					if r.Intn(3) > 0 {
						_, err = e.Docker(time.Minute, "rm", "-f", name)
						stats.note(err)
					}
				case 3: // a short-lived container
					_, err := e.Docker(time.Minute, "run", "--rm", "--network", net, Image, "true")
					stats.note(err)
				}
			}
		}(w)
	}
	kills := 0
	r := rand.New(rand.NewSource(seed))
	var pid0 int
	var since time.Time
	for time.Now().Before(deadline) && kills < 10 {
		time.Sleep(time.Duration(1500+r.Intn(3000)) * time.Millisecond)
		pid, err := e.PluginPID()
		if err != nil {
			continue
		}
		if pid != pid0 {
			pid0, since = pid, time.Now()
		}
		// dockerd stops restarting a plugin for good when it dies before
		// dockerd's post-start check has dialled its socket (at 0.5 s,
		// then every 3 s: seen here once, seed 92312, the plugin killed
		// 0.7 s after its restart). That is the engine's, and no user's
		// kill comes so soon after a restart: only one up 4 s is killed.
		if time.Since(since) < 4*time.Second {
			continue
		}
		if syscall.Kill(pid, syscall.SIGKILL) == nil {
			kills++
		}
	}
	wg.Wait()
	t.Logf("plugin kills %d; docker commands %d, failed %d", kills, stats.ops, stats.bad)
	msgs := make([]string, 0, len(stats.msgs))
	for m, n := range stats.msgs {
		msgs = append(msgs, fmt.Sprintf("%3d× %s", n, m))
	}
	sort.Strings(msgs)
	for _, m := range msgs {
		t.Log(m)
	}
	if kills == 0 || stats.ops < 20 {
		t.Fatalf("the load did not run: %d kills, %d commands", kills, stats.ops)
	}
	waitFor(t, 30*time.Second, "plugin back", func() error { _, err := e.PluginPID(); return err })
	checkConsistent(t, e, fmt.Sprintf("after the plugin kills (seed %d)", seed))

	// And dockerd killed: after its restart (containers restart with it
	// only if asked; these were not), the same must hold.
	e.Kill()
	if err := e.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "plugin back after dockerd's restart", func() error { _, err := e.PluginPID(); return err })
	for _, id := range strings.Fields(e.Run(t, "ps", "-aq")) {
		_, _ = e.Docker(time.Minute, "start", id)
	}
	checkConsistent(t, e, fmt.Sprintf("after dockerd was killed (seed %d)", seed))
}

// checkConsistent asserts what must hold whatever was killed: the kernel,
// ournet's state and dockerd agree.
func checkConsistent(t *testing.T, e *Engine, stage string) {
	t.Helper()
	// The repair loop and a restore may still be running: let one round pass.
	time.Sleep(6 * time.Second)
	type netInfo struct {
		ID         string
		Name       string
		Driver     string
		Containers map[string]struct{ Name, EndpointID, IPv4Address string }
	}
	var nets []netInfo
	ids := strings.Fields(e.Run(t, "network", "ls", "-q", "--filter", "driver=ournet"))
	if len(ids) > 0 {
		raw := e.Run(t, append([]string{"network", "inspect"}, ids...)...)
		if err := json.Unmarshal([]byte(raw), &nets); err != nil {
			t.Fatalf("%s: network inspect: %v", stage, err)
		}
	}
	knownNet, knownEp := map[string]bool{}, map[string]bool{}
	seen := map[string]string{}
	running := map[string]bool{}
	for _, id := range strings.Fields(e.Run(t, "ps", "-q", "--no-trunc")) {
		running[id] = true
	}
	for _, n := range nets {
		knownNet[n.ID[:12]] = true
		var members []string
		for cid, c := range n.Containers {
			knownEp[c.EndpointID[:12]] = true
			if c.IPv4Address == "" {
				continue
			}
			ip := strings.SplitN(c.IPv4Address, "/", 2)[0]
			if other, dup := seen[ip]; dup {
				e.Errorf(t, "%s: %s and %s both have %s", stage, c.Name, other, ip)
			}
			seen[ip] = c.Name
			if running[cid] {
				members = append(members, c.Name+"="+ip)
			}
		}
		// Every live container reachable from a neighbour on its network.
		sort.Strings(members)
		for i := 1; i < len(members); i++ {
			from := strings.SplitN(members[0], "=", 2)[0]
			to := strings.SplitN(members[i], "=", 2)[1]
			if err := e.Ping(from, to); err != nil {
				e.Errorf(t, "%s: on %s: %v", stage, n.Name, err)
			}
		}
	}
	for _, name := range e.Links(t) {
		switch {
		case strings.HasPrefix(name, "ournet-"):
			found := false
			for id := range knownNet {
				found = found || strings.HasPrefix(id, name[len("ournet-"):])
			}
			if !found {
				e.Errorf(t, "%s: bridge %s belongs to no network dockerd has", stage, name)
			}
		case strings.HasPrefix(name, "ov"):
			if !knownEp[name[2:]] {
				e.Errorf(t, "%s: veth %s belongs to no endpoint dockerd has", stage, name)
			}
		}
	}
	// Every element of table inet ournet names its network: comment
	// "ournet:<id>".
	for _, l := range strings.Split(e.Rules(), `comment "ournet:`)[1:] {
		if id, _, _ := strings.Cut(l, `"`); !knownNet[id] {
			e.Errorf(t, "%s: table inet ournet keeps elements of network %s, which dockerd does not have", stage, id)
		}
	}
	out, err := e.ournetStatus("--json")
	if err != nil {
		e.Errorf(t, "%s: ournet-status is not clean: %v\n%s", stage, err, out)
		return
	}
	var rep struct {
		Networks []struct{ ID string }
		Pools    []struct{ ID string }
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("%s: ournet-status --json: %v", stage, err)
	}
	if len(rep.Networks) != len(nets) {
		e.Errorf(t, "%s: ournet has %d networks, dockerd %d", stage, len(rep.Networks), len(nets))
	}
	// Each network has one IPv4 pool (ournet IPAM for all of them here).
	if len(rep.Pools) != len(nets) {
		e.Errorf(t, "%s: ournet holds %d address pools for %d networks: %v", stage, len(rep.Pools), len(nets), rep.Pools)
	}
}
