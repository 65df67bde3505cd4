package store

import (
	"errors"
	"os"
	"syscall"

	log "github.com/sirupsen/logrus"
)

// ReserveSize is the space kept aside, in a file beside the state file,
// for deletes on a full disk: a delete that fails with ENOSPC gives it back
// and is tried again, so that removing containers and networks always
// completes and is remembered (issue #16). Every bbolt commit also needs
// new pages, so a full disk would otherwise refuse deletes too.
const ReserveSize = 2 << 20

func (s *Store) reservePath() string { return s.db.Path() + ".reserve" }

// EnsureReserve (re)creates the reserve file where it is missing or short;
// on a disk that is still full it tries again next time. Safe to call often.
func (s *Store) EnsureReserve() error {
	p := s.reservePath()
	if fi, err := os.Stat(p); err == nil && fi.Size() >= ReserveSize {
		return nil
	}
	f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	// Written, not just truncated: a sparse file reserves nothing.
	buf := make([]byte, 64<<10)
	for off := int64(0); off < ReserveSize; off += int64(len(buf)) {
		if _, err := f.WriteAt(buf, off); err != nil {
			f.Close()
			os.Remove(p)
			return err
		}
	}
	return f.Sync()
}

// UpdateReserved is Update for deletes: on a full disk it gives back the
// reserve and tries once more.
func (s *Store) UpdateReserved(fn func(*Tx) error) error {
	err := s.Update(fn)
	if !errors.Is(err, syscall.ENOSPC) {
		return err
	}
	if rerr := os.Remove(s.reservePath()); rerr != nil {
		return err
	}
	log.WithField("file", s.db.Path()).Warn("state store: the disk is full; used the space reserved for deletes (it is taken again once there is room)")
	return s.Update(fn)
}

// DeleteReserved is Delete through UpdateReserved.
func (s *Store) DeleteReserved(bucket, key string) error {
	return s.UpdateReserved(func(t *Tx) error { return t.Delete(bucket, key) })
}
