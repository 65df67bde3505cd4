package store

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Health is what Inspect found of a state file before anything uses it.
type Health struct {
	Path string
	// Missing: no file; Empty: a file of 0 bytes (a full disk, a bad
	// restore); Damaged: a file bbolt cannot read whole (Reason says why).
	Missing, Empty, Damaged bool
	Reason                  string
}

// Usable reports whether the file can be opened and trusted.
func (h Health) Usable() bool { return !h.Empty && !h.Damaged }

// Problem says, for a person, what is wrong with the file.
func (h Health) Problem() string {
	switch {
	case h.Missing:
		return "is missing"
	case h.Empty:
		return "is empty (0 bytes)"
	case h.Damaged:
		return "is damaged (" + h.Reason + ")"
	}
	return "is good"
}

// Inspect checks the state file at path without trusting it: bbolt panics
// on some corrupt pages, so the check runs under recover, read-only, and
// walks every page (bbolt's own consistency check).
func Inspect(path string) (h Health) {
	h.Path = path
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		h.Missing = true
		return h
	case err != nil:
		h.Damaged, h.Reason = true, err.Error()
		return h
	case fi.Size() == 0:
		h.Empty = true
		return h
	}
	if err := check(path); err != nil {
		h.Damaged, h.Reason = true, err.Error()
	}
	return h
}

func check(path string) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("reading it made bbolt panic: %v", r)
		}
	}()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 5 * time.Second})
	if err != nil {
		return err
	}
	defer db.Close()
	return db.View(func(tx *bolt.Tx) error {
		var errs []string
		for e := range tx.Check() {
			errs = append(errs, e.Error())
			if len(errs) == 3 {
				break
			}
		}
		if len(errs) > 0 {
			return errors.New(strings.Join(errs, "; "))
		}
		// Every record must decode as the JSON it was written as.
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			return b.ForEach(func(k, v []byte) error {
				if v != nil && !jsonLike(v) {
					return fmt.Errorf("record %s/%s is not JSON", name, k)
				}
				return nil
			})
		})
	})
}

func jsonLike(v []byte) bool {
	s := strings.TrimSpace(string(v))
	return s != "" && (s[0] == '{' || s[0] == '[' || s[0] == '"' || s == "true" || s == "false" || s == "null" || (s[0] >= '0' && s[0] <= '9') || s[0] == '-')
}

// Backups: path.backup.1 is the newest copy of a good state, .2 and .3
// older ones.
const keepBackups = 3

func backupName(path string, i int) string { return fmt.Sprintf("%s.backup.%d", path, i) }

// Backup copies the open store, consistently, to path.backup.1, shifting
// older copies down. Called when the state is known good (at a clean
// start, at shutdown).
func (s *Store) Backup() (string, error) {
	path := s.db.Path()
	tmp := path + ".backup.tmp"
	if err := s.db.View(func(tx *bolt.Tx) error { return tx.CopyFile(tmp, 0o600) }); err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("copying the state file: %w", err)
	}
	for i := keepBackups - 1; i >= 1; i-- {
		_ = os.Rename(backupName(path, i), backupName(path, i+1))
	}
	if err := os.Rename(tmp, backupName(path, 1)); err != nil {
		return "", err
	}
	return backupName(path, 1), nil
}

// Backups lists the backups of path that Inspect finds usable, newest first.
func Backups(path string) []string {
	var out []string
	for i := 1; i <= keepBackups; i++ {
		b := backupName(path, i)
		if h := Inspect(b); h.Usable() && !h.Missing {
			out = append(out, b)
		}
	}
	return out
}

// SetAside moves a damaged state file out of the way (kept for a person
// to look at) and returns where it went.
func SetAside(path string) (string, error) {
	dst := fmt.Sprintf("%s.damaged-%s", path, time.Now().UTC().Format("20060102T150405Z"))
	if err := os.Rename(path, dst); err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	return dst, nil
}

// RestoreBackup replaces path with a copy of backup.
func RestoreBackup(backup, path string) error {
	in, err := os.Open(backup)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp := path + ".restore.tmp"
	out, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		os.Remove(tmp)
		return err
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	out.Close()
	return os.Rename(tmp, path)
}

// Damaged lists the set-aside damaged files of path, oldest first.
func Damaged(path string) []string {
	m, _ := filepath.Glob(path + ".damaged-*")
	sort.Strings(m)
	return m
}
