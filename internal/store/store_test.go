package store

import (
	"path/filepath"
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
