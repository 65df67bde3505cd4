package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// WhoAmI serves http://<uplink>:8000/cgi-bin/ip from the uplink host: the
// reply is the client's address as the uplink sees it (REMOTE_ADDR), which
// tells masquerade from routed. Stopped when the test ends.
func (u *Uplink) WhoAmI(t testing.TB) {
	t.Helper()
	dir := t.TempDir()
	cgi := filepath.Join(dir, "cgi-bin")
	if err := os.MkdirAll(cgi, 0o755); err != nil {
		t.Fatal(err)
	}
	script := "#!/bin/sh\necho 'Content-Type: text/plain'\necho\necho \"$REMOTE_ADDR\"\n"
	if err := os.WriteFile(filepath.Join(cgi, "ip"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", u.NS, "busybox", "httpd", "-f", "-p", "8000", "-h", dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
	})
	// Bounded wait until it answers on its own loopback.
	for i := 0; i < 50; i++ {
		if _, err := u.Exec("curl", "-sf", "-m", "1", "http://127.0.0.1:8000/cgi-bin/ip"); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatal("uplink web server did not start")
}

// SeenAs fetches the uplink's WhoAmI page from a container and returns the
// address the uplink saw, or an error if it could not be reached.
func (e *Engine) SeenAs(container, uplinkIP string) (string, error) {
	host := uplinkIP
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	out, err := e.Exec(container, "timeout", "5", "wget", "-q", "-O", "-", "http://"+host+":8000/cgi-bin/ip")
	if err != nil {
		return "", fmt.Errorf("%s cannot reach the uplink at %s: %w", container, uplinkIP, err)
	}
	// busybox httpd prints IPv6 in brackets and IPv4 as mapped IPv6.
	addr := strings.Trim(strings.TrimSpace(out), "[]")
	return strings.TrimPrefix(addr, "::ffff:"), nil
}

// Serve starts a busybox httpd on port in a container that answers "hello
// from NAME" at /, for connection tests.
func (e *Engine) Serve(t testing.TB, container string, port int) {
	t.Helper()
	cmd := fmt.Sprintf("mkdir -p /tmp/www && echo hello from %s > /tmp/www/index.html && httpd -p %d -h /tmp/www", container, port)
	if _, err := e.Exec(container, "sh", "-c", cmd); err != nil {
		t.Fatalf("starting httpd in %s: %v", container, err)
	}
}

// Fetch GETs url from a container (3 s timeout).
func (e *Engine) Fetch(container, url string) (string, error) {
	out, err := e.Exec(container, "timeout", "5", "wget", "-q", "-O", "-", url)
	return strings.TrimSpace(out), err
}
