package iptables

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-iptables/iptables"
)

// Exec runs the real tools found in PATH. It remembers the processes it
// started for a while, so that a watcher of nftables commits can tell
// ournet's own writes from everyone else's (Mine).
type Exec struct {
	backend string

	mu      sync.Mutex
	started map[int]time.Time
}

// mineFor is how long a started tool's PID counts as ournet's: far longer
// than a notification of its commit can take to arrive, far shorter than
// the kernel takes to hand the PID out again on any real host.
const mineFor = 30 * time.Second

// NewExec finds the tools of each family; a family whose tools are
// missing is an error, so that ournet never silently runs without the
// rules it promises.
func NewExec(families ...Family) (*Exec, error) {
	for _, f := range families {
		proto := iptables.ProtocolIPv4
		if f == IPv6 {
			proto = iptables.ProtocolIPv6
		}
		if _, err := iptables.New(iptables.IPFamily(proto), iptables.Timeout(10)); err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
	}
	return &Exec{backend: backendOf("iptables"), started: map[int]time.Time{}}, nil
}

// backendOf tells the iptables backend from the multi-call binary the
// tool links to (xtables-nft-multi or xtables-legacy-multi).
func backendOf(tool string) string {
	path, err := exec.LookPath(tool)
	if err != nil {
		return ""
	}
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return ""
	}
	switch {
	case strings.Contains(filepath.Base(real), "legacy"):
		return "legacy"
	case strings.Contains(filepath.Base(real), "nft"):
		return "nf_tables"
	}
	return ""
}

// NFTables reports whether the tools write nftables objects (iptables-nft),
// whose changes the kernel announces; iptables-legacy's are never announced.
func (r *Exec) NFTables() bool { return r.backend == "nf_tables" }

// Save implements Runner.
func (r *Exec) Save(f Family, table string) (string, error) {
	var out, errb bytes.Buffer
	cmd := exec.Command(f.String()+"-save", "-t", table)
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := r.run(cmd); err != nil {
		return "", fmt.Errorf("%s -t %s: %w: %s", cmd.Path, table, err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// Restore implements Runner.
func (r *Exec) Restore(f Family, script string) error {
	var errb bytes.Buffer
	cmd := exec.Command(f.String()+"-restore", "--noflush", "--wait", "10")
	cmd.Stdin = strings.NewReader(script)
	cmd.Stderr = &errb
	if err := r.run(cmd); err != nil {
		return fmt.Errorf("%s: %w: %s", cmd.Path, err, strings.TrimSpace(errb.String()))
	}
	return nil
}

func (r *Exec) run(cmd *exec.Cmd) error {
	if err := cmd.Start(); err != nil {
		return err
	}
	now := time.Now()
	r.mu.Lock()
	for pid, at := range r.started {
		if now.Sub(at) > mineFor {
			delete(r.started, pid)
		}
	}
	r.started[cmd.Process.Pid] = now
	r.mu.Unlock()
	return cmd.Wait()
}

// Mine reports whether pid is a tool this runner started lately, or a
// thread of this process (nftables written over netlink, as anti-spoofing
// does): the writer of an nftables commit is the task that made it.
func (r *Exec) Mine(pid uint32) bool {
	r.mu.Lock()
	_, ok := r.started[int(pid)]
	r.mu.Unlock()
	return ok || OwnThread(pid)
}

// OwnThread reports whether pid is a thread of this process.
func OwnThread(pid uint32) bool {
	if pid == 0 {
		return false
	}
	_, err := os.Stat(fmt.Sprintf("/proc/self/task/%d", pid))
	return err == nil
}
