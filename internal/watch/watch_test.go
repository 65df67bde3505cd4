package watch

import (
	"os/exec"
	"testing"
	"time"

	"github.com/ournet/ournet/internal/iptables"
	"github.com/ournet/ournet/internal/testns"
	"github.com/vishvananda/netlink"
)

func triggered(c <-chan struct{}, within time.Duration) bool {
	select {
	case <-c:
		return true
	case <-time.After(within):
		return false
	}
}

// In a throwaway netns: an iptables change by anyone else triggers, one
// by ournet's runner does not; a link deleted triggers, one that does not
// matter does not.
func TestRulesAndLinksInNetns(t *testing.T) {
	testns.Do(t, func() {
		stop := make(chan struct{})
		defer close(stop)
		run, err := iptables.NewExec(iptables.IPv4)
		if err != nil {
			t.Fatal(err)
		}
		rules, err := Rules(stop, run.Mine)
		if err != nil {
			t.Fatal(err)
		}
		if err := run.Restore(iptables.IPv4, "*filter\n:OURNET-T - [0:0]\n-A OURNET-T -j RETURN\nCOMMIT\n"); err != nil {
			t.Fatal(err)
		}
		if triggered(rules, 500*time.Millisecond) {
			t.Fatal("ournet's own restore triggered a repair")
		}
		if out, err := exec.Command("iptables", "-F", "OURNET-T").CombinedOutput(); err != nil {
			t.Fatalf("%v %s", err, out)
		}
		if !triggered(rules, 2*time.Second) {
			t.Fatal("a flush by someone else did not trigger")
		}
		if triggered(rules, 300*time.Millisecond) {
			t.Fatal("one change triggered twice")
		}
		// Someone else's rules that name nothing of ournet's (the engine's
		// for its own bridges) do not trigger; deleting a jump to one of
		// ournet's chains does.
		for _, args := range [][]string{{"-N", "DOCKER-T"}, {"-A", "FORWARD", "-o", "br-t", "-j", "DOCKER-T"}, {"-D", "FORWARD", "-o", "br-t", "-j", "DOCKER-T"}} {
			if out, err := exec.Command("iptables", args...).CombinedOutput(); err != nil {
				t.Fatalf("%v %s", err, out)
			}
		}
		if triggered(rules, 500*time.Millisecond) {
			t.Fatal("the engine's rules triggered")
		}
		if out, err := exec.Command("iptables", "-A", "FORWARD", "-j", "OURNET-T").CombinedOutput(); err != nil {
			t.Fatalf("%v %s", err, out)
		}
		if !triggered(rules, 2*time.Second) {
			t.Fatal("a jump to an ournet chain added by someone else did not trigger")
		}
		if out, err := exec.Command("iptables", "-F", "FORWARD").CombinedOutput(); err != nil {
			t.Fatalf("%v %s", err, out)
		}
		if !triggered(rules, 2*time.Second) {
			t.Fatal("flushing FORWARD, which held a jump to ournet's chain, did not trigger")
		}
		if out, err := exec.Command("iptables", "-A", "FORWARD", "-o", "br-t", "-j", "DOCKER-T").CombinedOutput(); err != nil {
			t.Fatalf("%v %s", err, out)
		}
		if triggered(rules, 500*time.Millisecond) {
			t.Fatal("a rule of the engine's triggered")
		}

		lc, err := Links(stop, func(u netlink.LinkUpdate) bool { return u.Link.Attrs().Name == "ournet-t" })
		if err != nil {
			t.Fatal(err)
		}
		links := lc.C
		for _, name := range []string{"other", "ournet-t"} {
			if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}); err != nil {
				t.Fatal(err)
			}
		}
		if !triggered(links, 2*time.Second) {
			t.Fatal("adding ournet-t did not trigger")
		}
		if names, all := lc.Take(); !names["ournet-t"] || names["other"] || all {
			t.Fatalf("changed links = %v (all %v), want ournet-t", names, all)
		}
		l, _ := netlink.LinkByName("other")
		_ = netlink.LinkDel(l)
		if triggered(links, 300*time.Millisecond) {
			t.Fatal("a link that does not matter triggered")
		}
		l, _ = netlink.LinkByName("ournet-t")
		_ = netlink.LinkDel(l)
		if !triggered(links, 2*time.Second) {
			t.Fatal("deleting ournet-t did not trigger")
		}
	})
}

// A burst is one trigger, passed on once it has been quiet; a steady
// stream still triggers by max.
func TestDebounce(t *testing.T) {
	stop := make(chan struct{})
	defer close(stop)
	in := make(chan struct{}, 1)
	out := Debounce(stop, in, 50*time.Millisecond, 400*time.Millisecond)
	start := time.Now()
	for i := 0; i < 5; i++ {
		kick(in)
		time.Sleep(10 * time.Millisecond)
	}
	if !triggered(out, time.Second) {
		t.Fatal("no trigger after a burst")
	}
	if d := time.Since(start); d < 90*time.Millisecond {
		t.Fatalf("triggered %v after the burst began: before it was quiet", d)
	}
	if triggered(out, 200*time.Millisecond) {
		t.Fatal("a burst triggered twice")
	}
	// A change every 20 ms for a second: triggers by max, more than once.
	n := 0
	done := time.After(time.Second)
loop:
	for {
		select {
		case <-done:
			break loop
		case <-out:
			n++
		case <-time.After(20 * time.Millisecond):
			kick(in)
		}
	}
	if n < 2 {
		t.Fatalf("a steady stream triggered %d times in a second (max 400 ms)", n)
	}
}
