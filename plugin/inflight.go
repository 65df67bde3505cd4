package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	log "github.com/sirupsen/logrus"
)

// inflight keeps the body of every call the plugin is handling in a file
// until its reply has been flushed, so that a call cut short by the
// plugin's death can be replayed. dockerd retries such a call once the
// plugin is back, but with an empty body (its request body was already
// consumed), and it does not fail a delete that errors: it forgets the
// network or endpoint all the same. Without the replay, every delete in
// flight at a kill would leave a network or endpoint dockerd no longer
// has. The files need no fsync: a plugin that is killed leaves the page
// cache to the kernel, and a host that crashes restarts dockerd too, which
// then retries nothing.
type inflight struct {
	dir string
	seq atomic.Uint64

	mu    sync.Mutex
	saved map[string][]string // path -> files of an earlier run, oldest first
}

// replayWindow bounds how old a cut-short call may be to be replayed:
// dockerd's own retries of a broken call stop well within it.
const replayWindow = 2 * time.Minute

func newInflight(dir string) (*inflight, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating %s: %w", dir, err)
	}
	f := &inflight{dir: dir, saved: map[string][]string{}}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	sort.Strings(names) // by time: the names start with it, zero-padded
	for _, n := range names {
		full := filepath.Join(dir, n)
		at, path, ok := parseInflightName(n)
		if !ok || time.Since(at) > replayWindow {
			os.Remove(full)
			continue
		}
		f.saved[path] = append(f.saved[path], full)
	}
	return f, nil
}

func parseInflightName(n string) (time.Time, string, bool) {
	ts, rest, ok := strings.Cut(strings.TrimSuffix(n, ".json"), "-")
	if !ok {
		return time.Time{}, "", false
	}
	_, call, ok := strings.Cut(rest, "-")
	if !ok {
		return time.Time{}, "", false
	}
	ns, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return time.Time{}, "", false
	}
	return time.Unix(0, ns), "/" + call, true
}

// begin keeps body until the returned func is called. A call whose body
// cannot be kept is handled all the same (it just cannot be replayed).
func (f *inflight) begin(path string, body []byte) func() {
	name := fmt.Sprintf("%020d-%06d-%s.json", time.Now().UnixNano(), f.seq.Add(1)%1000000, strings.TrimPrefix(path, "/"))
	full := filepath.Join(f.dir, name)
	if err := os.WriteFile(full, body, 0o600); err != nil {
		log.WithError(err).WithField("call", path).Debug("keeping the call's body for a replay")
		return func() {}
	}
	return func() { os.Remove(full) }
}

// take returns the body of the oldest call to path that an earlier run of
// the plugin was handling when it died, or nil.
func (f *inflight) take(path string) []byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	for len(f.saved[path]) > 0 {
		full := f.saved[path][0]
		f.saved[path] = f.saved[path][1:]
		body, err := os.ReadFile(full)
		os.Remove(full)
		if err == nil && len(body) > 0 {
			return body
		}
	}
	return nil
}
