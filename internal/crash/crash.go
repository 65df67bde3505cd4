// Package crash lets tests kill the plugin at chosen points inside create
// and delete paths, to prove that a crash anywhere leaks nothing.
//
// OURNET_CRASH_AT lists point names (comma separated). The first time the
// plugin reaches a listed point it writes a marker file and exits at once
// with os.Exit, which runs no deferred cleanup, as in a real crash (not
// SIGKILL to itself: the plugin is PID 1 of its namespace, and PID 1
// ignores signals sent from inside it, even SIGKILL); the marker
// keeps the restarted plugin, which has the same environment, from dying
// there again. Unset (the default), Point costs one map lookup.
//
// A point reached less than minUptime after the process started waits
// until then before it crashes. dockerd restarts a managed plugin that
// died, then dials its socket after 3 s sleeps; a plugin that dies again
// before that check is left disabled for good (seen on 28.5: a retried
// ReleasePool crashed one point, the DeleteNetwork right behind it the
// next, 0.7 s after the restart). A user's plugin would not crash twice in
// a row; the tests must not hit that window by chance.
package crash

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	log "github.com/sirupsen/logrus"
)

const minUptime = 4 * time.Second

var (
	started = time.Now()
	mu      sync.Mutex
	points  map[string]bool
	dir     string
)

// Setup reads OURNET_CRASH_AT; markers go in markerDir.
func Setup(markerDir string) {
	mu.Lock()
	defer mu.Unlock()
	dir = markerDir
	points = map[string]bool{}
	for _, p := range strings.Split(os.Getenv("OURNET_CRASH_AT"), ",") {
		if p = strings.TrimSpace(p); p != "" {
			points[p] = true
		}
	}
}

// Point kills the process if name is a listed point not reached before.
func Point(name string) {
	mu.Lock()
	defer mu.Unlock()
	if !firstReach(name) {
		return
	}
	if wait := minUptime - time.Since(started); wait > 0 {
		log.WithField("point", name).WithField("wait", wait).Info("OURNET_CRASH_AT: waiting until the plugin has run long enough for dockerd to restart it")
		time.Sleep(wait)
	}
	log.WithField("point", name).Warn("OURNET_CRASH_AT: crashing on purpose")
	os.Exit(3)
}

// Refuse says whether name is a listed point not reached before, and
// marks it reached: the caller then fails the call it is handling instead
// of doing it, once. It stands in for what a test cannot make happen on
// cue: a "no-replay:" point refuses the empty retry of a cut-short call,
// as if every retry had fallen in an outage longer than dockerd's 30 s.
func Refuse(name string) bool {
	mu.Lock()
	defer mu.Unlock()
	if !firstReach(name) {
		return false
	}
	log.WithField("point", name).Warn("OURNET_CRASH_AT: failing this call on purpose")
	return true
}

// firstReach says whether name is a listed point reached for the first
// time, and writes its marker; with no marker written it says no (the
// point would act again at every reach, for ever). Called with mu held.
func firstReach(name string) bool {
	if !points[name] {
		return false
	}
	marker := filepath.Join(dir, "crashed-at-"+name)
	if _, err := os.Stat(marker); err == nil {
		return false
	}
	return os.WriteFile(marker, nil, 0o600) == nil
}
