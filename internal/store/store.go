// Package store persists ournet's state (networks, endpoints, IPAM pools) in a
// bbolt file. Every write is one bbolt transaction, fsynced before it returns,
// so a crash leaves either the old or the new record, never half of one.
package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Store is a bucketed key/value store of JSON records.
type Store struct {
	db *bolt.DB
}

// Open opens (creating if needed) the state file at path.
func Open(path string) (*Store, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("creating state directory: %w", err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("opening state file %s: %w", path, err)
	}
	return &Store{db: db}, nil
}

// Close closes the state file.
func (s *Store) Close() error { return s.db.Close() }

// Tx is one atomic read-write transaction.
type Tx struct{ tx *bolt.Tx }

// Update runs fn in one read-write transaction: all of its writes land, or none.
func (s *Store) Update(fn func(*Tx) error) error {
	return s.db.Update(func(tx *bolt.Tx) error { return fn(&Tx{tx}) })
}

// View runs fn in one read-only transaction.
func (s *Store) View(fn func(*Tx) error) error {
	return s.db.View(func(tx *bolt.Tx) error { return fn(&Tx{tx}) })
}

// Put stores v as JSON under bucket/key.
func (t *Tx) Put(bucket, key string, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encoding %s/%s: %w", bucket, key, err)
	}
	b, err := t.tx.CreateBucketIfNotExists([]byte(bucket))
	if err != nil {
		return err
	}
	return b.Put([]byte(key), raw)
}

// Get decodes bucket/key into v; it reports whether the key exists.
func (t *Tx) Get(bucket, key string, v any) (bool, error) {
	b := t.tx.Bucket([]byte(bucket))
	if b == nil {
		return false, nil
	}
	raw := b.Get([]byte(key))
	if raw == nil {
		return false, nil
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return true, fmt.Errorf("decoding %s/%s: %w", bucket, key, err)
	}
	return true, nil
}

// Delete removes bucket/key; a missing key is not an error.
func (t *Tx) Delete(bucket, key string) error {
	b := t.tx.Bucket([]byte(bucket))
	if b == nil {
		return nil
	}
	return b.Delete([]byte(key))
}

// ForEach calls fn with every key and raw JSON value of bucket, in key order.
func (t *Tx) ForEach(bucket string, fn func(key string, raw []byte) error) error {
	b := t.tx.Bucket([]byte(bucket))
	if b == nil {
		return nil
	}
	return b.ForEach(func(k, v []byte) error { return fn(string(k), v) })
}

// Put is a one-write transaction.
func (s *Store) Put(bucket, key string, v any) error {
	return s.Update(func(t *Tx) error { return t.Put(bucket, key, v) })
}

// Get is a one-read transaction.
func (s *Store) Get(bucket, key string, v any) (found bool, err error) {
	err = s.View(func(t *Tx) error {
		found, err = t.Get(bucket, key, v)
		return err
	})
	return found, err
}

// Delete is a one-delete transaction.
func (s *Store) Delete(bucket, key string) error {
	return s.Update(func(t *Tx) error { return t.Delete(bucket, key) })
}

// LoadAll decodes every record of bucket with decode, in key order.
func LoadAll[T any](s *Store, bucket string) (map[string]*T, error) {
	out := map[string]*T{}
	err := s.View(func(t *Tx) error {
		return t.ForEach(bucket, func(key string, raw []byte) error {
			v := new(T)
			if err := json.Unmarshal(raw, v); err != nil {
				return fmt.Errorf("decoding %s/%s: %w", bucket, key, err)
			}
			out[key] = v
			return nil
		})
	})
	return out, err
}

// ErrNotFound is returned by lookups of records that do not exist.
var ErrNotFound = errors.New("not found")
