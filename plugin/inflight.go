package main

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	ipamapi "github.com/docker/go-plugins-helpers/ipam"
	"github.com/docker/go-plugins-helpers/network"
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
	// flushed: delete-kind calls whose cut-short bodies were all replayed
	// at the first retry; later retries of the same kind are answered done.
	flushed map[string]bool
}

// replayWindow bounds how old a cut-short call may be to be replayed:
// dockerd's own retries of a broken call stop well within it.
const replayWindow = 2 * time.Minute

// retryWindow bounds how old a cut-short call may be to be the one an
// empty retry repeats (take): dockerd retries a broken call for 30 s from
// its first attempt, and the call's file was made after that attempt
// reached the plugin. An older one was given up on by dockerd (a longer
// outage): replaying it would answer the retry of another call, or, with
// the retry's own call beside it, make both ambiguous.
const retryWindow = 40 * time.Second

func newInflight(dir string) (*inflight, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating %s: %w", dir, err)
	}
	f := &inflight{dir: dir, saved: map[string][]string{}, flushed: map[string]bool{}}
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

// call is one call kept in flight: its body, and its reply once it has one.
type inflightCall struct {
	full string
}

// name is the call's identity, the same in its replays: what an IPAM
// allocation records, so that a replay of a call whose work was saved but
// whose reply was not gets that work's result, not a second one.
func (c *inflightCall) name() string {
	if c == nil || c.full == "" {
		return ""
	}
	return strings.TrimSuffix(filepath.Base(c.full), ".json")
}

// begin keeps body until done is called. A call whose body cannot be kept
// is handled all the same (it just cannot be replayed).
func (f *inflight) begin(path string, body []byte) *inflightCall {
	return f.beginAs(fmt.Sprintf("%020d-%06d-%s.json", time.Now().UnixNano(), f.seq.Add(1)%1000000, strings.TrimPrefix(path, "/")), body)
}

// beginAs is begin under a given name: a replay keeps the name of the
// call it replays (name is the call's identity, see inflightCall.name).
func (f *inflight) beginAs(name string, body []byte) *inflightCall {
	c := &inflightCall{full: filepath.Join(f.dir, name)}
	if err := os.WriteFile(c.full, body, 0o600); err != nil {
		log.WithError(err).WithField("call", name).Debug("keeping the call's body for a replay")
		os.Remove(c.full) // a partial body must never be replayed
		c.full = ""
	}
	return c
}

// answered keeps the call's successful reply beside its body, before the
// reply is sent: a call whose work was done but whose reply never reached
// dockerd is then answered again, not done twice (an address would be
// handed out twice).
func (c *inflightCall) answered(reply []byte) {
	if c == nil || c.full == "" {
		return
	}
	body, err := os.ReadFile(c.full)
	if err != nil {
		return
	}
	tmp := c.full + ".tmp"
	if os.WriteFile(tmp, append(append(body, replySep...), reply...), 0o600) == nil {
		_ = os.Rename(tmp, c.full)
	} else {
		os.Remove(tmp)
	}
}

// done forgets the call: its reply has been flushed to dockerd.
func (c *inflightCall) done() {
	if c != nil && c.full != "" {
		os.Remove(c.full)
	}
}

// replySep separates a kept call's body from its reply in its file.
const replySep = "\n\x00"

// readKept reads, and removes, the file of a call an earlier run kept:
// its body, and its reply if it had one; nil for a file too old or empty.
func readKept(full string) (body, reply []byte) {
	defer os.Remove(full)
	return peekKept(full)
}

// peekKept is readKept leaving the file where it is.
func peekKept(full string) (body, reply []byte) {
	if at, _, ok := parseInflightName(filepath.Base(full)); !ok || time.Since(at) > replayWindow {
		return nil, nil
	}
	raw, err := os.ReadFile(full)
	if err != nil || len(raw) == 0 {
		return nil, nil
	}
	if i := strings.Index(string(raw), replySep); i >= 0 {
		return raw[:i], raw[i+len(replySep):]
	}
	return raw, nil
}

// takeAll returns the bodies of every call to path an earlier run had cut
// short, for the delete-kind calls: each may be done again, in any order,
// so the first empty retry replays them all, and later retries of that
// kind (reported by takeAll as done) are answered as done.
func (f *inflight) takeAll(path string) (bodies [][]byte, done bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	files := f.saved[path]
	delete(f.saved, path)
	if len(files) == 0 {
		return nil, f.flushed[path]
	}
	f.flushed[path] = true
	for _, full := range files {
		if body, _ := readKept(full); body != nil {
			bodies = append(bodies, body)
		}
	}
	return bodies, false
}

// unanswered returns the bodies of the calls to path an earlier run was
// handling when it stopped, with no reply kept, and leaves them for a
// replay.
func (f *inflight) unanswered(path string) [][]byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out [][]byte
	for _, full := range f.saved[path] {
		if body, reply := peekKept(full); body != nil && reply == nil {
			out = append(out, body)
		}
	}
	return out
}

// markCutShort tells the IPAM which RequestAddress and CreateNetwork
// calls an earlier run was handling, unanswered, when it stopped
// (ipam/orphan.go), and the driver which CreateEndpoint calls
// (driver/cutshort.go). f may be nil.
func markCutShort(f *inflight, a interface {
	GatewayCutShort(*ipamapi.RequestAddressRequest)
	NetworkCutShort([]netip.Prefix)
}, d interface{ EndpointsCutShort([]string) }) {
	if f == nil {
		return
	}
	for _, body := range f.unanswered("/IpamDriver.RequestAddress") {
		var req ipamapi.RequestAddressRequest
		if json.Unmarshal(body, &req) == nil {
			a.GatewayCutShort(&req)
		}
	}
	for _, body := range f.unanswered("/NetworkDriver.CreateNetwork") {
		var req network.CreateNetworkRequest
		if json.Unmarshal(body, &req) != nil {
			continue
		}
		var subnets []netip.Prefix
		for _, d := range append(append([]*network.IPAMData{}, req.IPv4Data...), req.IPv6Data...) {
			if d == nil {
				continue
			}
			if p, err := netip.ParsePrefix(d.Pool); err == nil {
				subnets = append(subnets, p)
			}
		}
		a.NetworkCutShort(subnets)
	}
	var ids []string
	for _, body := range f.unanswered("/NetworkDriver.CreateEndpoint") {
		var req network.CreateEndpointRequest
		if json.Unmarshal(body, &req) == nil && req.EndpointID != "" {
			ids = append(ids, req.EndpointID)
		}
	}
	d.EndpointsCutShort(ids)
}

// take returns what an earlier run of the plugin kept of a call to path
// that was cut short: its body, and its reply if it had one. All retries
// come with an empty body, so they cannot be told apart: a call is
// replayed only when it is the one of its kind that was cut short within
// retryWindow (two cut-short Joins could otherwise swap containers); with
// several, every retry is answered "run the command again".
func (f *inflight) take(path string) (body, reply []byte, name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var files []string
	for _, full := range f.saved[path] {
		if at, _, ok := parseInflightName(filepath.Base(full)); ok && time.Since(at) <= retryWindow {
			files = append(files, full)
		} else {
			os.Remove(full)
		}
	}
	delete(f.saved, path)
	if len(files) != 1 {
		for _, full := range files {
			os.Remove(full)
		}
		if len(files) > 1 {
			log.WithField("call", path).WithField("cut short", len(files)).Warn("several calls of this kind were cut short: none is replayed (they cannot be told apart)")
		}
		return nil, nil, ""
	}
	body, reply = readKept(files[0])
	return body, reply, filepath.Base(files[0])
}
