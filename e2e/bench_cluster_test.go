//go:build bench

package e2e

// Issue #13's rows of `make bench`, on the e2e cluster rig (three hosts in
// namespaces on an underlay bridge, a three-member etcd): TCP between
// containers on two hosts against TCP between the two hosts themselves over
// the same underlay, the time from `docker run` returning on one host until
// the container answers from another, and 18 parallel runs over the
// cluster against the same runs on each host's own (single-host) network.
// In the throughput row's loop, swarm's overlay between the same two hosts
// (the engines in swarm mode for that loop only) and ournet with
// br_netfilter off in both hosts (which its fast path makes no matter);
// after it, the same two measures on a bare rig: the kernel's own VXLAN
// between two namespaces through a bridge on each, with no Docker and no
// netfilter (what an overlay that bridges its frames gets on this
// machine), and the rig's two hosts over a VXLAN device of their own, with
// no bridge and no container (what encapsulation alone leaves of the
// underlay).
//
// Addresses: 198.18.232.0/20 and 203.0.113.0/24, inside the rigs'
// namespaces only.

import (
	"bufio"
	"fmt"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"time"
)

const (
	benchReach    = 10 // reachability samples
	benchParRuns  = 18 // parallel runs, spread over the hosts
	benchClusterN = 3
)

func (b *bench) cluster() error {
	c := NewCluster(b.t, benchClusterN)
	for _, h := range c.Hosts {
		if err := importBenchImageOn(h.Engine); err != nil {
			return err
		}
	}
	for _, h := range c.Hosts {
		if _, err := h.Docker(time.Minute, "network", "create", "-d", "ournet", "--ipam-driver", "ournet",
			"--subnet", "198.18.232.0/22", "-o", "ournet.cluster=bc", "bc"); err != nil {
			return err
		}
	}
	h1, h2 := c.H(1), c.H(2)

	// 1. Throughput: container on host 1 -> container on host 2, against
	// host 1's namespace -> host 2's over the underlay.
	if _, err := h2.Docker(time.Minute, "run", "-d", "--name", "bcs", "--network", "bc", BenchImage, "iperf3", "-s"); err != nil {
		return err
	}
	if _, err := h1.Docker(time.Minute, "run", "-d", "--name", "bcc", "--network", "bc", BenchImage, "sleep", "600"); err != nil {
		return err
	}
	srvIP, err := h2.Docker(time.Minute, "inspect", "-f", "{{.NetworkSettings.Networks.bc.IPAddress}}", "bcs")
	if err != nil {
		return err
	}
	floor := exec.Command("nsenter", "--net=/run/netns/"+h2.NetNS, "iperf3", "-s", "-B", h2.Addr)
	if err := floor.Start(); err != nil {
		return err
	}
	defer func() { _ = floor.Process.Kill(); _ = floor.Wait() }()
	// Docker's own answer on the same two hosts, measured in the same loop.
	swarmSrv, stopSwarm, err := startSwarm(h1, h2)
	defer stopSwarm()
	if err != nil {
		return err
	}
	time.Sleep(500 * time.Millisecond)
	fpBefore, _, _, err := h2.FastPathPackets()
	if err != nil {
		return err
	}
	clients := map[string][2]string{"overlay": {"bcc", srvIP}, "overlay-nobrnf": {"bcc", srvIP}, "swarm": {"swc", swarmSrv}} // container, server
	gbits, err := iperfRounds([]string{"overlay", "overlay-nobrnf", "swarm", "hosts"}, func(target string, args ...string) ([]byte, error) {
		if target == "hosts" {
			return exec.Command("nsenter", append([]string{"--net=/run/netns/" + h1.NetNS, "iperf3", "-c", h2.Addr}, args...)...).CombinedOutput()
		}
		if target == "overlay-nobrnf" {
			restore, err := bridgeNetfilterOff(h1, h2)
			defer restore()
			if err != nil {
				return nil, err
			}
		}
		c := clients[target]
		s, err := h1.Docker(time.Minute, append([]string{"exec", c[0], "iperf3", "-c", c[1]}, args...)...)
		return []byte(s), err
	})
	if err != nil {
		return err
	}
	b.t.Logf("cluster throughput Gbit/s: %v", gbits)
	fpAfter, _, out, err := h2.FastPathPackets()
	if err != nil {
		return err
	}
	if fpAfter-fpBefore < 1000 {
		return fmt.Errorf("the fast path on host 2 handed %d packets to its containers during the throughput loop: ournet's runs took the bridge\n%s", fpAfter-fpBefore, out)
	}
	stopSwarm()
	bare, err := bareVXLAN(h1.NetNS[len(h1.NetNS)-6:])
	if err != nil {
		return err
	}
	b.t.Logf("bare VXLAN rig throughput Gbit/s: %v", bare)
	bo, bv, bh := median(bare["overlay"]), median(bare["vxlan"]), median(bare["hosts"])
	so, sh := median(gbits["swarm"]), median(gbits["hosts"])
	nb := median(gbits["overlay-nobrnf"])
	b.add(&result{
		Key: "cluster/tput", Name: fmt.Sprintf("TCP container → container on two hosts (VXLAN), iperf3 (median of %d × %d s)", benchTputReps, benchTputSecs),
		BaseName: "host → host", Ournet: median(gbits["overlay"]), Base: median(gbits["hosts"]), Unit: "Gbit/s", Goal: 0.95,
		Note: fmt.Sprintf("the two host namespaces over the same underlay (MTU 1500; the overlay's 1450). "+
			"The fast path handed %d packets from the tunnel to the server container on host 2 in the loop. "+
			"Swarm's overlay between the same two hosts, in the same loop: %.2f Gbit/s, %.2f of host to host (ournet/swarm %.2f). "+
			"ournet with bridge-nf-call-iptables=0 on both hosts for its runs (the same loop; dockerd turns it on, the fast path skips it): %.2f Gbit/s, %.2f of host to host (ournet/swarm %.2f). "+
			"The kernel's bare VXLAN (bridge, VXLAN and veths, as ournet's without its fast path; no Docker, no netfilter): %.2f vs %.2f Gbit/s host to host, %.2f. "+
			"On that rig, the two host namespaces over a VXLAN device of their own, with no bridge, no container and no veth (encapsulation alone: the share of host to host any VXLAN overlay keeps here at best): %.2f Gbit/s, %.2f of host to host; ournet's share is %.2f times that",
			fpAfter-fpBefore, so, so/sh, median(gbits["overlay"])/so, nb, nb/sh, nb/so, bo, bh, bo/bh, bv, bv/bh, (median(gbits["overlay"])/sh)/(bv/bh)),
	})

	// 2. Reachability: `docker run` returns on host 1; a container on host
	// 2 pings the new address every 20 ms from that moment.
	if _, err := h2.Docker(time.Minute, "run", "-d", "--name", "bcp", "--network", "bc", Image, "sleep", "600"); err != nil {
		return err
	}
	var reach []float64
	for i := 0; i < benchReach; i++ {
		ip := fmt.Sprintf("198.18.235.%d", 10+i) // a block of host 1's, claimed by --ip
		name := fmt.Sprintf("bcr%d", i)
		if _, err := h1.Docker(time.Minute, "run", "-d", "--name", name, "--network", "bc", "--ip", ip, Image, "sleep", "600"); err != nil {
			return err
		}
		d, err := firstReply(h2.Engine, "bcp", ip, 10*time.Second)
		if err != nil {
			return fmt.Errorf("reachability of %s: %w", ip, err)
		}
		reach = append(reach, d.Seconds())
	}
	sorted := append([]float64(nil), reach...)
	sort.Float64s(sorted)
	b.t.Logf("cluster reachability (s): %v", reach)
	b.add(&result{
		Key: "cluster/reach", Name: fmt.Sprintf("`docker run` returns on host 1 → the container answers a ping from host 2 (p50 of %d)", benchReach),
		Ournet: median(reach), Unit: "s", Self: true, NoBase: true, Goal: 1.0, Upper: true, NoChart: true,
		Note: fmt.Sprintf("p90 %.3f s, max %.3f s; the prober's ping runs every 20 ms from the moment `docker run` returns", sorted[len(sorted)*9/10], sorted[len(sorted)-1]),
	})

	// 3. Parallel runs: 18 at once, 6 on each host, on the cluster network;
	// against the same on each host's own ournet network.
	for _, h := range c.Hosts {
		if _, err := h.Docker(time.Minute, "network", "create", "-d", "ournet", "--ipam-driver", "ournet",
			"--subnet", fmt.Sprintf("198.18.%d.0/24", 236+h.I), "bl"); err != nil {
			return err
		}
	}
	wall := map[string][]float64{}
	for rep := 0; rep < 3; rep++ {
		for _, net := range []string{"bc", "bl"} {
			start := time.Now()
			err := parallel(benchParRuns, benchParRuns, func(i int) error {
				h := c.Hosts[i%benchClusterN]
				_, err := h.Docker(2*time.Minute, "run", "-d", "--name", fmt.Sprintf("bpar-%s-%d", net, i), "--network", net, Image, "sleep", "600")
				return err
			})
			took := time.Since(start)
			if err != nil {
				return err
			}
			wall[net] = append(wall[net], took.Seconds())
			_ = parallel(benchParRuns, benchParallel, func(i int) error {
				_, err := c.Hosts[i%benchClusterN].Docker(2*time.Minute, "rm", "-f", fmt.Sprintf("bpar-%s-%d", net, i))
				return err
			})
		}
	}
	b.t.Logf("parallel runs (s): %v", wall)
	b.add(&result{
		Key: "cluster/parallel", Name: fmt.Sprintf("%d parallel `docker run -d`, %d on each of %d hosts (median of 3)", benchParRuns, benchParRuns/benchClusterN, benchClusterN),
		BaseName: "own networks", Ournet: median(wall["bc"]), Base: median(wall["bl"]), Unit: "s", Goal: 1.2, Upper: true,
		Note: "baseline: the same runs on a single-host ournet network on each host",
	})
	return nil
}

// bareVXLAN measures the kernel's own VXLAN path as ournet's cluster
// network lays it out without its fast path, with nothing else: two "hosts"
// (namespaces on an underlay bridge in a namespace of its own), each with a
// bridge, a VXLAN device (no learning, the peer in the all-zeros FDB entry)
// and a "container" namespace on a veth, and no netfilter rule anywhere. It
// returns iperf3's Gbit/s container to container ("overlay"), host to host
// over a second VXLAN device with the address on it, no bridge and no
// container ("vxlan": what encapsulation alone leaves of the underlay, the
// ceiling of any VXLAN overlay on this machine) and host to host over the
// underlay ("hosts"), interleaved as the cluster row's.
func bareVXLAN(sfx string) (map[string][]float64, error) {
	ns := func(n string) string { return "obv-" + n + "-" + sfx }
	var servers []*exec.Cmd
	defer func() {
		for _, s := range servers {
			_ = s.Process.Kill()
			_ = s.Wait()
		}
		for _, n := range []string{"c1", "c2", "h1", "h2", "u"} {
			_ = exec.Command("ip", "netns", "del", ns(n)).Run()
		}
	}()
	cmds := [][]string{
		{"ip", "netns", "add", ns("u")}, {"ip", "-n", ns("u"), "link", "add", "br0", "type", "bridge"}, {"ip", "-n", ns("u"), "link", "set", "br0", "up"},
	}
	for i := 1; i <= 2; i++ {
		h, c, p := ns(fmt.Sprint("h", i)), ns(fmt.Sprint("c", i)), fmt.Sprint("p", i)
		cmds = append(cmds,
			[]string{"ip", "netns", "add", h}, []string{"ip", "netns", "add", c},
			[]string{"ip", "-n", h, "link", "set", "lo", "up"}, []string{"ip", "-n", c, "link", "set", "lo", "up"},
			[]string{"ip", "-n", ns("u"), "link", "add", p, "type", "veth", "peer", "name", "under0", "netns", h},
			[]string{"ip", "-n", ns("u"), "link", "set", p, "master", "br0", "up"},
			[]string{"ip", "-n", h, "addr", "add", fmt.Sprintf("203.0.113.%d/24", 100+i), "dev", "under0"},
			[]string{"ip", "-n", h, "link", "set", "under0", "up"},
			[]string{"ip", "-n", h, "link", "add", "brx", "mtu", "1450", "type", "bridge"},
			[]string{"ip", "-n", h, "link", "set", "brx", "up"},
			[]string{"ip", "-n", h, "link", "add", "vx", "mtu", "1450", "type", "vxlan", "id", "42", "local", fmt.Sprintf("203.0.113.%d", 100+i), "dstport", "4789", "nolearning"},
			[]string{"ip", "-n", h, "link", "set", "vx", "master", "brx", "up"},
			[]string{"nsenter", "--net=/run/netns/" + h, "bridge", "fdb", "append", "00:00:00:00:00:00", "dev", "vx", "dst", fmt.Sprintf("203.0.113.%d", 103-i)},
			[]string{"ip", "-n", h, "link", "add", "vth", "mtu", "1450", "type", "veth", "peer", "name", "eth0", "netns", c},
			[]string{"ip", "-n", h, "link", "set", "vth", "master", "brx", "up"},
			// Encapsulation alone: a second VXLAN device, the address on it.
			[]string{"ip", "-n", h, "link", "add", "vxh", "mtu", "1450", "type", "vxlan", "id", "43", "local", fmt.Sprintf("203.0.113.%d", 100+i), "dstport", "4789", "nolearning"},
			[]string{"nsenter", "--net=/run/netns/" + h, "bridge", "fdb", "append", "00:00:00:00:00:00", "dev", "vxh", "dst", fmt.Sprintf("203.0.113.%d", 103-i)},
			[]string{"ip", "-n", h, "addr", "add", fmt.Sprintf("198.18.238.%d/24", i), "dev", "vxh"},
			[]string{"ip", "-n", h, "link", "set", "vxh", "up"},
			[]string{"ip", "-n", c, "addr", "add", fmt.Sprintf("198.18.239.%d/24", i), "dev", "eth0"},
			[]string{"ip", "-n", c, "link", "set", "eth0", "mtu", "1450", "up"},
		)
	}
	for _, c := range cmds {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("bare VXLAN rig: %s: %w: %s", strings.Join(c, " "), err, out)
		}
	}
	for _, n := range []string{ns("c2"), ns("h2")} {
		s := exec.Command("nsenter", "--net=/run/netns/"+n, "iperf3", "-s")
		if err := s.Start(); err != nil {
			return nil, err
		}
		servers = append(servers, s)
	}
	time.Sleep(500 * time.Millisecond)
	from := map[string][2]string{"overlay": {ns("c1"), "198.18.239.2"}, "vxlan": {ns("h1"), "198.18.238.2"}, "hosts": {ns("h1"), "203.0.113.102"}}
	gbits, err := iperfRounds([]string{"overlay", "vxlan", "hosts"}, func(target string, args ...string) ([]byte, error) {
		return exec.Command("nsenter", append([]string{"--net=/run/netns/" + from[target][0], "iperf3", "-c", from[target][1]}, args...)...).CombinedOutput()
	})
	if err != nil {
		return nil, fmt.Errorf("bare VXLAN rig: %w", err)
	}
	return gbits, nil
}

// bridgeNetfilterOff turns br_netfilter's IPv4 and IPv6 calls off in the
// hosts' namespaces (the sysctls are per namespace), to show what they cost
// ournet's cross-host path: its bridge is in the host's namespace, where
// dockerd turns them on, so every bridged inner packet crosses the IP hooks
// (before the fast path, that was the whole gap to swarm's overlay; with
// it, IPv4 between hosts skips the bridge). restore (never nil) puts back
// what each host had.
func bridgeNetfilterOff(hosts ...*CHost) (restore func(), err error) {
	var undo []func()
	restore = func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}
	for _, h := range hosts {
		for _, k := range []string{"net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables"} {
			was, err := h.ShFor(10*time.Second, "sysctl", "-n", k)
			if err != nil {
				return restore, err
			}
			if _, err := h.ShFor(10*time.Second, "sysctl", "-qw", k+"=0"); err != nil {
				return restore, err
			}
			put := k + "=" + was
			undo = append(undo, func() { _, _ = h.ShFor(10*time.Second, "sysctl", "-qw", put) })
		}
	}
	return restore, nil
}

// startSwarm sets up Docker's own answer on the same two hosts: swarm
// (init on h1, h2 joins, over the underlay), an attachable overlay network,
// an iperf3 server on h2 ("sws") and a client container on h1 ("swc"). It
// returns the server's address and stop, which removes both and leaves the
// swarm (once; stop is never nil). Swarm's VXLAN goes to port 4790, its
// address pool (the ingress network's) is 198.18.240.0/22 and the measured
// network 198.18.244.0/24, so that nothing of it meets ournet's.
func startSwarm(h1, h2 *CHost) (srv string, stop func(), err error) {
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		for _, h := range []*CHost{h2, h1} {
			_, _ = h.Docker(time.Minute, "rm", "-f", "sws", "swc")
			_, _ = h.Docker(time.Minute, "swarm", "leave", "--force")
		}
	}
	if _, err := h1.Docker(time.Minute, "swarm", "init", "--advertise-addr", h1.Addr, "--listen-addr", h1.Addr+":2377",
		"--default-addr-pool", "198.18.240.0/22", "--data-path-port", "4790"); err != nil {
		return "", stop, fmt.Errorf("swarm init: %w", err)
	}
	token, err := h1.Docker(time.Minute, "swarm", "join-token", "-q", "worker")
	if err != nil {
		return "", stop, err
	}
	if _, err := h2.Docker(time.Minute, "swarm", "join", "--token", strings.TrimSpace(token), "--advertise-addr", h2.Addr,
		"--listen-addr", h2.Addr+":2377", h1.Addr+":2377"); err != nil {
		return "", stop, fmt.Errorf("swarm join: %w", err)
	}
	if _, err := h1.Docker(time.Minute, "network", "create", "-d", "overlay", "--attachable", "--subnet", "198.18.244.0/24", "sw"); err != nil {
		return "", stop, err
	}
	if _, err := h2.Docker(time.Minute, "run", "-d", "--name", "sws", "--network", "sw", BenchImage, "iperf3", "-s"); err != nil {
		return "", stop, err
	}
	if _, err := h1.Docker(time.Minute, "run", "-d", "--name", "swc", "--network", "sw", BenchImage, "sleep", "600"); err != nil {
		return "", stop, err
	}
	srv, err = h2.Docker(time.Minute, "inspect", "-f", "{{.NetworkSettings.Networks.sw.IPAddress}}", "sws")
	return strings.TrimSpace(srv), stop, err
}

// firstReply pings addr from container every 20 ms until a reply, and
// returns how long that took from the call.
func firstReply(e *Engine, container, addr string, limit time.Duration) (time.Duration, error) {
	start := time.Now()
	n := strconv.Itoa(int(limit / (20 * time.Millisecond)))
	cmd := exec.Command("docker", "-H", e.Host, "exec", container, "ping", "-i", "0.02", "-c", n, "-W", "1", addr)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return 0, err
	}
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if strings.Contains(sc.Text(), "bytes from") {
			return time.Since(start), nil
		}
	}
	return 0, fmt.Errorf("no reply within %s", limit)
}
