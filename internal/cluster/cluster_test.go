package cluster

// These tests run against a real three-member etcd cluster (Debian's
// etcd-server), each member a process of its own on a loopback address of
// this machine. They never skip: without etcd they fail, naming the
// package to install.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

type member struct {
	name, client, peer string
	dir                string
	cmd                *exec.Cmd
}

type etcdCluster struct {
	t       *testing.T
	members []*member
	initial string
}

func freePort(t *testing.T, ip string) string {
	t.Helper()
	l, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// newCluster starts three etcd members on 127.0.1.1-3 and waits for a leader.
func newCluster(t *testing.T) *etcdCluster {
	t.Helper()
	bin, err := exec.LookPath("etcd")
	if err != nil {
		t.Fatal("etcd not found: apt-get install etcd-server (make deps does)")
	}
	c := &etcdCluster{t: t}
	var initial []string
	for i := 1; i <= 3; i++ {
		ip := fmt.Sprintf("127.0.1.%d", i)
		m := &member{name: fmt.Sprintf("m%d", i), client: "http://" + freePort(t, ip), peer: "http://" + freePort(t, ip), dir: filepath.Join(t.TempDir(), "data")}
		c.members = append(c.members, m)
		initial = append(initial, m.name+"="+m.peer)
	}
	c.initial = strings.Join(initial, ",")
	for _, m := range c.members {
		c.start(bin, m, "new")
	}
	t.Cleanup(func() {
		for _, m := range c.members {
			c.stop(m)
		}
	})
	cli := c.client()
	defer cli.Close()
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := cli.Put(clientv3.WithRequireLeader(ctx), "/probe", "x")
		cancel()
		if err == nil {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("etcd cluster did not elect a leader: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (c *etcdCluster) start(bin string, m *member, state string) {
	c.t.Helper()
	m.cmd = exec.Command(bin, "--name", m.name, "--data-dir", m.dir,
		"--listen-client-urls", m.client, "--advertise-client-urls", m.client,
		"--listen-peer-urls", m.peer, "--initial-advertise-peer-urls", m.peer,
		"--initial-cluster", c.initial, "--initial-cluster-state", state, "--initial-cluster-token", "ournet-test",
		"--heartbeat-interval", "100", "--election-timeout", "1000", "--log-level", "error")
	m.cmd.Env = append(os.Environ(), "ETCD_UNSUPPORTED_ARCH="+os.Getenv("ETCD_UNSUPPORTED_ARCH"))
	logf, _ := os.Create(filepath.Join(filepath.Dir(m.dir), "etcd.log"))
	m.cmd.Stdout, m.cmd.Stderr = logf, logf
	if err := m.cmd.Start(); err != nil {
		c.t.Fatalf("starting etcd %s: %v", m.name, err)
	}
}

func (c *etcdCluster) stop(m *member) {
	if m.cmd == nil || m.cmd.Process == nil {
		return
	}
	_ = m.cmd.Process.Signal(syscall.SIGKILL)
	_ = m.cmd.Wait()
	m.cmd = nil
}

func (c *etcdCluster) restart(m *member) {
	c.t.Helper()
	bin, _ := exec.LookPath("etcd")
	c.start(bin, m, "existing")
}

func (c *etcdCluster) endpoints() []string {
	var out []string
	for _, m := range c.members {
		out = append(out, m.client)
	}
	return out
}

// leader is the member leading the cluster now.
func (c *etcdCluster) leader() *member {
	c.t.Helper()
	cli := c.client()
	defer cli.Close()
	for _, m := range c.members {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		st, err := cli.Status(ctx, m.client)
		cancel()
		if err == nil && st.Header.MemberId == st.Leader {
			return m
		}
	}
	c.t.Fatal("no member is the leader")
	return nil
}

func (c *etcdCluster) client() *clientv3.Client {
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.endpoints(), DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		c.t.Fatal(err)
	}
	return cli
}

// host connects as one Docker host, to one member first (as a host near
// it would), with the others to fail over to, with the plugin's own call
// timeout: a shorter one fails calls while a lost leader is replaced.
func (c *etcdCluster) host(t *testing.T, id string, first int, ttl time.Duration) *Store {
	t.Helper()
	eps := c.endpoints()
	eps[0], eps[first] = eps[first], eps[0]
	s, err := Connect(Config{Endpoints: eps, Host: id, Hostname: "same-name", Advertise: netip.MustParseAddr("198.51.100.1" + id[len(id)-1:]),
		LeaseTTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if err := s.Register(context.Background()); err != nil {
		t.Fatal(err)
	}
	return s
}

func keysUnder(t *testing.T, c *etcdCluster, p string) []string {
	t.Helper()
	cli := c.client()
	defer cli.Close()
	r, err := cli.Get(context.Background(), p, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, kv := range r.Kvs {
		out = append(out, string(kv.Key))
	}
	return out
}

func TestClusterStore(t *testing.T) {
	c := newCluster(t)
	ctx := context.Background()
	a, b, h3 := c.host(t, "host-1", 0, 10*time.Second), c.host(t, "host-2", 1, 10*time.Second), c.host(t, "host-3", 2, 10*time.Second)

	t.Run("hosts with the same hostname are distinct", func(t *testing.T) {
		hs, err := a.Hosts(ctx)
		if err != nil || len(hs) != 3 {
			t.Fatalf("hosts = %+v, %v", hs, err)
		}
	})

	t.Run("define once, join with the same spec, refuse another", func(t *testing.T) {
		spec := Spec{Subnets: []string{"10.50.0.0/16"}, Options: map[string]string{"com.docker.network.bridge.enable_icc": "false"}}
		na, err := a.Define(ctx, "app", spec)
		if err != nil {
			t.Fatal(err)
		}
		nb, err := b.Define(ctx, "app", spec)
		if err != nil || nb.VNI != na.VNI || na.VNI < firstVNI {
			t.Fatalf("second host: %+v %v, first %+v", nb, err, na)
		}
		other := Spec{Subnets: []string{"10.60.0.0/16"}, Options: map[string]string{}}
		_, err = h3.Define(ctx, "app", other)
		var ue *UserError
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), "subnet 10.60.0.0/16 here, 10.50.0.0/16 in the cluster") ||
			!strings.Contains(err.Error(), "com.docker.network.bridge.enable_icc=false in the cluster, not given here") {
			t.Fatalf("a different spec: %v", err)
		}
		nw, err := h3.Define(ctx, "web", other)
		if err != nil || nw.VNI == na.VNI {
			t.Fatalf("second network: %+v %v", nw, err)
		}
		for _, s := range []*Store{a, b} {
			if err := s.Leave(ctx, "app"); err != nil {
				t.Fatal(err)
			}
		}
		if err := h3.Leave(ctx, "web"); err != nil {
			t.Fatal(err)
		}
		if k := keysUnder(t, c, prefix+"networks/"); len(k) != 0 {
			t.Fatalf("keys left after every host left: %v", k)
		}
		if k := keysUnder(t, c, prefix+"vni/"); len(k) != 0 {
			t.Fatalf("VNIs left: %v", k)
		}
	})

	t.Run("blocks are claimed once, under parallel claims from every host", func(t *testing.T) {
		subnet := netip.MustParsePrefix("10.50.0.0/20")
		for _, s := range []*Store{a, b, h3} {
			if _, err := s.Define(ctx, "par", Spec{Subnets: []string{subnet.String()}}); err != nil {
				t.Fatal(err)
			}
		}
		var mu sync.Mutex
		got := map[netip.Prefix]string{}
		var wg sync.WaitGroup
		errs := make(chan error, 18)
		// Three hosts at once, six claims each (a host's claims come one
		// after the other, as its IPAM makes them, each listing what it has).
		for _, s := range []*Store{a, b, h3} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var have []netip.Prefix
				for i := 0; i < 6; i++ {
					blk, err := s.ClaimBlock(ctx, "par", subnet, have...)
					if err != nil {
						errs <- err
						return
					}
					have = append(have, blk)
					mu.Lock()
					if prev, dup := got[blk]; dup {
						errs <- fmt.Errorf("block %s given to %s and %s", blk, prev, s.cfg.Host)
					}
					got[blk] = s.cfg.Host
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		if len(got) != 18 {
			t.Fatalf("%d distinct blocks for 18 claims", len(got))
		}
		held, err := a.Blocks(ctx, "par")
		if err != nil || len(held) != 18 {
			t.Fatalf("blocks in the store: %d %v", len(held), err)
		}
		// A small subnet runs out, with a message that says what to do.
		small := netip.MustParsePrefix("10.51.0.0/24")
		if _, err := a.Define(ctx, "small", Spec{Subnets: []string{small.String()}}); err != nil {
			t.Fatal(err)
		}
		var have []netip.Prefix
		for i := 0; i < 4; i++ {
			blk, err := a.ClaimBlock(ctx, "small", small, have...)
			if err != nil {
				t.Fatal(err)
			}
			have = append(have, blk)
		}
		// A claim whose answer was lost: the block comes back, not a new one.
		if blk, err := a.ClaimBlock(ctx, "small", small, have[:3]...); err != nil || blk != have[3] {
			t.Fatalf("claim again without the last block: %s %v, want %s", blk, err, have[3])
		}
		if _, err := b.ClaimBlock(ctx, "small", small); err == nil || !strings.Contains(err.Error(), "is not a member of cluster network small") {
			t.Fatalf("claim by a host that is not a member: %v", err)
		}
		if _, err := b.Define(ctx, "small", Spec{Subnets: []string{small.String()}}); err != nil {
			t.Fatal(err)
		}
		if _, err := b.ClaimBlock(ctx, "small", small); err == nil || !strings.Contains(err.Error(), "every address block of cluster network small") {
			t.Fatalf("claim on a full subnet: %v", err)
		}
		// A live host is not retired, and keeps its blocks.
		var ue *UserError
		if err := b.RetireHost(ctx, "host-1"); !errors.As(err, &ue) || !strings.Contains(err.Error(), "host host-1 is alive") {
			t.Fatalf("retiring a live host: %v", err)
		}
		if _, err := b.ClaimBlock(ctx, "small", small); err == nil || !strings.Contains(err.Error(), "every address block of cluster network small") {
			t.Fatalf("claim after a refused retirement: %v", err)
		}
		// host-1 dies (no renewal; its lease ends).
		lease := a.Lease()
		a.Close()
		cli := c.client()
		_, err = cli.Revoke(ctx, clientv3.LeaseID(lease))
		cli.Close()
		if err != nil {
			t.Fatal(err)
		}
		// Retired for good, it gives its blocks back.
		if err := b.RetireHost(ctx, "host-1"); err != nil {
			t.Fatal(err)
		}
		if blk, err := b.ClaimBlock(ctx, "small", small); err != nil || blk.String() != "10.51.0.0/26" {
			t.Fatalf("claim after retiring host-1: %s %v", blk, err)
		}
	})

	t.Run("an endpoint leaves the others when its host's lease expires", func(t *testing.T) {
		short := c.host(t, "host-4", 0, 2*time.Second)
		if _, err := short.Define(ctx, "par", Spec{Subnets: []string{"10.50.0.0/20"}}); err != nil {
			t.Fatal(err)
		}
		_, rev, err := b.Endpoints(ctx, "par")
		if err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithCancel(ctx)
		defer cancel()
		events := b.WatchEndpoints(wctx, "par", rev)
		ep := Endpoint{Addr: netip.MustParseAddr("10.50.9.5"), MAC: "02:42:0a:32:09:05"}
		if err := short.PutEndpoint(ctx, "par", ep); err != nil {
			t.Fatal(err)
		}
		if e := <-events; e.Gone || e.Addr != ep.Addr || e.Host != "host-4" || e.VTEP.String() != "198.51.100.14" {
			t.Fatalf("first event %+v", e)
		}
		if _, err := short.Define(ctx, "bad/name", Spec{}); err == nil {
			t.Fatal("a network name with a slash was accepted")
		}
		// Another host can neither take that address nor remove it.
		if err := b.PutEndpoint(ctx, "par", Endpoint{Addr: ep.Addr, MAC: "02:00:00:00:00:01"}); err == nil || !strings.Contains(err.Error(), "is held by host host-4") {
			t.Fatalf("another host publishing the same address: %v", err)
		}
		if err := b.DeleteEndpoint(ctx, "par", ep.Addr); err != nil {
			t.Fatal(err)
		}
		if eps, _, err := b.Endpoints(ctx, "par"); err != nil || eps[ep.Addr].Host != "host-4" {
			t.Fatalf("after another host's delete: %+v %v", eps, err)
		}
		short.Close() // stops renewing, as a host that dies
		start := time.Now()
		select {
		case e := <-events:
			if !e.Gone || e.Addr != ep.Addr {
				t.Fatalf("event %+v, want the endpoint gone", e)
			}
			t.Logf("endpoint gone %s after its host stopped (lease 2 s)", time.Since(start).Round(100*time.Millisecond))
		case <-time.After(10 * time.Second):
			t.Fatal("the dead host's endpoint is still there after 10 s")
		}
	})

	t.Run("a member's leave takes its blocks; the last one's every key, and only its own VNI", func(t *testing.T) {
		subnet := netip.MustParsePrefix("10.52.0.0/24")
		nb, err := b.Define(ctx, "lv", Spec{Subnets: []string{subnet.String()}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := h3.Define(ctx, "lv", Spec{Subnets: []string{subnet.String()}}); err != nil {
			t.Fatal(err)
		}
		if _, err := h3.ClaimBlock(ctx, "lv", subnet); err != nil {
			t.Fatal(err)
		}
		if err := h3.Leave(ctx, "lv"); err != nil {
			t.Fatal(err)
		}
		if held, err := b.Blocks(ctx, "lv"); err != nil || len(held) != 0 {
			t.Fatalf("blocks after host-3 left: %v %v", held, err)
		}
		if k := keysUnder(t, c, netKey("lv")); !slices.Equal(k, []string{netKey("lv") + "members/host-2", netKey("lv") + "spec"}) {
			t.Fatalf("keys after host-3 left, host-2 still a member: %v", k)
		}
		// Its VNI taken by another network meanwhile (a drop that raced
		// a define): the last member's leave leaves that one alone.
		vkey := prefix + "vni/" + strconv.Itoa(nb.VNI)
		cli := c.client()
		defer cli.Close()
		if _, err := cli.Put(ctx, vkey, "another"); err != nil {
			t.Fatal(err)
		}
		defer cli.Delete(ctx, vkey)
		if err := b.Leave(ctx, "lv"); err != nil {
			t.Fatal(err)
		}
		if k := keysUnder(t, c, netKey("lv")); len(k) != 0 {
			t.Fatalf("keys left after the last member left: %v", k)
		}
		if r, err := cli.Get(ctx, vkey); err != nil || len(r.Kvs) != 1 || string(r.Kvs[0].Value) != "another" {
			t.Fatalf("another network's VNI after the leave: %v %v", r.Kvs, err)
		}
	})

	t.Run("one member lost changes nothing; quorum lost fails fast naming the store", func(t *testing.T) {
		// The worst member to lose: the leader (an election follows).
		lead := c.leader()
		other := c.members[(slices.Index(c.members, lead)+1)%len(c.members)]
		c.stop(lead)
		if _, err := b.Define(ctx, "q1", Spec{Subnets: []string{"10.70.0.0/24"}}); err != nil {
			t.Fatalf("with the leader of three members down: %v", err)
		}
		c.stop(other)
		start := time.Now()
		_, err := b.Define(ctx, "q2", Spec{Subnets: []string{"10.71.0.0/24"}})
		took := time.Since(start)
		if err == nil || !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "cluster store (etcd at") {
			t.Fatalf("without quorum: %v", err)
		}
		if took > 6*time.Second { // the call's 5 s, well inside dockerd's 30 s
			t.Fatalf("without quorum the call took %s", took)
		}
		t.Logf("without quorum: failed in %s: %v", took.Round(10*time.Millisecond), err)
		c.restart(other)
		c.restart(lead)
		deadline := time.Now().Add(20 * time.Second)
		for {
			if _, err = b.Define(ctx, "q2", Spec{Subnets: []string{"10.71.0.0/24"}}); err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("quorum back, still failing: %v", err)
			}
			time.Sleep(300 * time.Millisecond)
		}
	})
}
