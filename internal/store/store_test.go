package store

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

type rec struct{ A string }

func TestStoreRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "state.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Put("b", "k1", rec{"one"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Put("b", "k2", rec{"two"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete("b", "k2"); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete("b", "missing"); err != nil {
		t.Fatalf("deleting a missing key: %v", err)
	}
	if err := s.Delete("nobucket", "k"); err != nil {
		t.Fatalf("deleting from a missing bucket: %v", err)
	}
	s.Close()

	s, err = Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var r rec
	if ok, err := s.Get("b", "k1", &r); !ok || err != nil || r.A != "one" {
		t.Fatalf("Get after reopen = %v %v %+v", ok, err, r)
	}
	if ok, _ := s.Get("b", "k2", &r); ok {
		t.Fatal("deleted key is back")
	}
	all, err := LoadAll[rec](s, "b")
	if err != nil || len(all) != 1 || all["k1"].A != "one" {
		t.Fatalf("LoadAll = %v %v", all, err)
	}
	// A failed transaction writes nothing.
	_ = s.Update(func(tx *Tx) error {
		_ = tx.Put("b", "k3", rec{"three"})
		return ErrNotFound
	})
	if ok, _ := s.Get("b", "k3", &r); ok {
		t.Fatal("a failed transaction's write landed")
	}
}

// On a full filesystem a write fails with ENOSPC, and a delete through
// UpdateReserved still succeeds by giving back the reserve. Mounts a small
// tmpfs, so it runs as root (as make test does).
func TestReserveOnAFullDisk(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("must run as root: it mounts a small tmpfs (make test runs as root)")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=4m", "ournet-test", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount: %v %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", "-l", dir).Run() })
	s, err := Open(filepath.Join(dir, "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.EnsureReserve(); err != nil {
		t.Fatal(err)
	}
	if err := s.Put("b", "keep", rec{"x"}); err != nil {
		t.Fatal(err)
	}
	// Fill the rest, then write until bbolt needs pages it cannot have.
	_ = exec.Command("dd", "if=/dev/zero", "of="+filepath.Join(dir, "fill"), "bs=64k").Run()
	// Small writes until even bbolt's own free pages are used up.
	val := rec{strings.Repeat("z", 1<<10)}
	var full error
	for i := 0; i < 20000 && full == nil; i++ {
		full = s.Put("b", fmt.Sprintf("k%05d", i), val)
	}
	if !errors.Is(full, syscall.ENOSPC) {
		t.Fatalf("writes on a full filesystem: %v, want ENOSPC", full)
	}
	// A delete lands (bbolt may find room in pages its file already has;
	// where it does not, the reserve is given back and the delete retried).
	if err := s.DeleteReserved("b", "keep"); err != nil {
		t.Fatalf("a delete on the full filesystem: %v", err)
	}
	if ok, _ := s.Get("b", "keep", &rec{}); ok {
		t.Fatal("the delete did not land")
	}
	// A commit that fails for want of space (as bbolt's does when its file
	// must grow) is retried once the reserve is given back.
	calls := 0
	err = s.UpdateReserved(func(tx *Tx) error {
		if calls++; calls == 1 {
			return fmt.Errorf("write state.db: %w", syscall.ENOSPC)
		}
		return tx.Delete("b", "k00000")
	})
	if err != nil || calls != 2 {
		t.Fatalf("UpdateReserved after ENOSPC: %v after %d tries", err, calls)
	}
	if _, err := os.Stat(filepath.Join(dir, "state.db.reserve")); !os.IsNotExist(err) {
		t.Fatalf("the reserve was not given back: %v", err)
	}
	// Without a reserve left, the error stands (the caller keeps the
	// deletion in memory).
	if err := s.UpdateReserved(func(*Tx) error { return syscall.ENOSPC }); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("with no reserve left: %v", err)
	}
	// Room again: the reserve is taken back.
	os.Remove(filepath.Join(dir, "fill"))
	if err := s.EnsureReserve(); err != nil {
		t.Fatal(err)
	}
}
