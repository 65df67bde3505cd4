// Package testns runs kernel tests in throwaway network namespaces, so that
// they never touch the host's links or rules and can run side by side.
package testns

import (
	"os"
	"runtime"
	"testing"

	"github.com/vishvananda/netns"
)

// Do runs fn on a locked OS thread inside a new, empty network namespace,
// which is discarded afterwards. Processes fn starts (iptables) inherit it.
// Without root the test is skipped, except in CI (CI=true), where it fails.
func Do(t testing.TB, fn func()) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("kernel test needs root, and CI runs as root")
		}
		t.Skip("kernel test needs root")
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	ns, err := netns.New() // unshares and switches this thread
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	defer func() {
		if err := netns.Set(orig); err != nil {
			// This thread is unusable now; do not let it serve other goroutines.
			panic(err)
		}
	}()
	fn()
}

// In runs fn on a locked OS thread inside the existing namespace ns, and
// returns this thread to the namespace it was in: sockets fn makes belong
// to ns. For kernel tests that play several hosts in namespaces of their
// own (each made inside Do).
func In(t testing.TB, ns netns.NsHandle, fn func()) {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	home, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer home.Close()
	if err := netns.Set(ns); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := netns.Set(home); err != nil {
			// This thread is unusable now; do not let it serve other goroutines.
			panic(err)
		}
	}()
	fn()
}
