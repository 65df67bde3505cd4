package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// composeFile is the project README.md shows: two ournet networks, one with
// icc off, ournet's IPAM with a subnet, a static address, a published port.
const composeFile = `name: oc
services:
  web:
    image: ournet-test:busybox
    command: ["sh", "-c", "mkdir -p /tmp/www && echo hello from web > /tmp/www/index.html && exec httpd -f -p 80 -h /tmp/www"]
    ports:
      - "18090:80"
    networks:
      front:
        ipv4_address: 198.18.90.10
      back: {}
  client:
    image: ournet-test:busybox
    command: ["sleep", "600"]
    networks: [front]
  stranger:
    image: ournet-test:busybox
    command: ["sleep", "600"]
    networks: [back]

networks:
  front:
    driver: ournet
    ipam:
      driver: ournet
      config:
        - subnet: 198.18.90.0/24
  back:
    driver: ournet
    driver_opts:
      com.docker.network.bridge.enable_icc: "false"
    ipam:
      driver: ournet
      config:
        - subnet: 198.18.91.0/24
`

// compose runs docker-compose v2 ($E2E_COMPOSE: the engine's own where it
// ships one) on the project in dir against engine e.
func (e *Engine) compose(dir string, args ...string) (string, error) {
	bin := os.Getenv("E2E_COMPOSE")
	if bin == "" {
		return "", fmt.Errorf("E2E_COMPOSE is not set: run the suite through make (it unpacks docker-compose v2 with the engines)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append([]string{"--project-directory", dir, "-f", filepath.Join(dir, "compose.yaml")}, args...)...)
	cmd.Env = append(os.Environ(), "DOCKER_HOST="+e.Host)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("docker-compose %s: %w\n%s", strings.Join(args, " "), err, out.String())
	}
	return out.String(), nil
}

// ids lists what `docker <kind> ls` shows of the compose project "oc".
func (e *Engine) projectObjects(t *testing.T, kind string) []string {
	t.Helper()
	args := []string{kind, "ls", "-q", "--filter", "label=com.docker.compose.project=oc"}
	if kind == "container" {
		args = append(args, "-a")
	}
	out := e.Run(t, args...)
	ids := strings.Fields(out)
	sort.Strings(ids)
	return ids
}

// Compose v2 drives ournet like any driver: `up` creates both networks
// with their options and IPAM, services resolve each other by name, the
// static address and the published port hold, a second `up` recreates and
// duplicates nothing, and `down` leaves no container, network, bridge or
// rule.
func TestCompose(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "compose.yaml"), []byte(composeFile), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := eng.compose(dir, "version"); err != nil {
		t.Fatal(err)
	} else {
		t.Logf("%s", strings.TrimSpace(out))
	}
	t.Cleanup(func() { _, _ = eng.compose(dir, "down", "--timeout", "1") })
	if _, err := eng.compose(dir, "up", "-d"); err != nil {
		t.Fatal(err)
	}
	nets, ctrs := eng.projectObjects(t, "network"), eng.projectObjects(t, "container")
	if len(nets) != 2 || len(ctrs) != 3 {
		t.Fatalf("after up: networks %v, containers %v; want 2 and 3", nets, ctrs)
	}
	for _, n := range []string{"oc_front", "oc_back"} {
		if d := eng.Run(t, "network", "inspect", "-f", "{{.Driver}} {{.IPAM.Driver}}", n); !strings.HasPrefix(d, "ournet") || !strings.Contains(d, " ournet") {
			t.Fatalf("network %s has driver and IPAM %q, want ournet's", n, d)
		}
	}
	web := "oc-web-1"
	if ip := eng.IP(t, web, "oc_front"); ip != "198.18.90.10" {
		t.Fatalf("web's ipv4_address on front is %s, want 198.18.90.10", ip)
	}

	// Names: the client resolves and reaches web on front (icc on).
	if out, err := eng.Fetch("oc-client-1", "http://web/"); err != nil || out != "hello from web" {
		t.Fatalf("client cannot fetch http://web/: %q %v", out, err)
	}
	// On back (icc off) the name resolves to web's back address, which the
	// stranger cannot reach.
	backIP := eng.IP(t, web, "oc_back")
	out, _ := eng.Exec("oc-stranger-1", "ping", "-c", "1", "-W", "2", "web")
	if !strings.Contains(out, "("+backIP+")") {
		t.Fatalf("stranger does not resolve web to its back address %s: %q", backIP, out)
	}
	if strings.Contains(out, " 0% packet loss") {
		t.Fatalf("icc=false from driver_opts does not hold: stranger pings web\n%s", out)
	}
	// The published port, from the host.
	if out, err := eng.Sh("curl", "-sf", "-m", "5", "http://127.0.0.1:18090/"); err != nil || strings.TrimSpace(out) != "hello from web" {
		t.Fatalf("published port 18090 from the host: %q %v", out, err)
	}
	ports, err := eng.ournetStatus("--ports")
	if err != nil || !strings.Contains(ports, web) || !strings.Contains(ports, ":18090") || !strings.Contains(ports, "80/tcp") {
		t.Fatalf("ournet-status --ports does not show web's port: %v\n%s", err, ports)
	}

	// up again: nothing recreated, nothing added.
	if _, err := eng.compose(dir, "up", "-d"); err != nil {
		t.Fatal(err)
	}
	if n2, c2 := eng.projectObjects(t, "network"), eng.projectObjects(t, "container"); strings.Join(n2, " ") != strings.Join(nets, " ") || strings.Join(c2, " ") != strings.Join(ctrs, " ") {
		t.Fatalf("second up changed the project: networks %v -> %v, containers %v -> %v", nets, n2, ctrs, c2)
	}
	if out, err := eng.Fetch("oc-client-1", "http://web/"); err != nil || out != "hello from web" {
		t.Fatalf("after the second up, client cannot fetch http://web/: %q %v", out, err)
	}

	if _, err := eng.compose(dir, "down", "--timeout", "1"); err != nil {
		t.Fatal(err)
	}
	if n, c := eng.projectObjects(t, "network"), eng.projectObjects(t, "container"); len(n)+len(c) != 0 {
		t.Fatalf("after down: networks %v, containers %v remain", n, c)
	}
	assertNetworksGone(t, eng, nets, "18090")
}

// assertNetworksGone checks that nothing of the ournet networks ids (as
// `docker network ls -q` prints them) is left in e's kernel: no bridge, no
// chain or tagged rule, no rule of the published host ports.
func assertNetworksGone(t testing.TB, e *Engine, ids []string, hostPorts ...string) {
	t.Helper()
	links, _ := e.Sh("ip", "-o", "link")
	for _, id := range ids {
		if strings.Contains(links, "ournet-"+id[:8]) {
			t.Errorf("bridge ournet-%s of removed network %s is left:\n%s", id[:8], id, links)
		}
	}
	for _, line := range strings.Split(e.Rules(), "\n") {
		for _, id := range ids {
			if strings.Contains(line, id[:12]) {
				t.Errorf("the firewall keeps a rule of removed network %s: %s", id, line)
			}
		}
		for _, p := range hostPorts {
			if strings.Contains(line, "--dport "+p) {
				t.Errorf("the firewall keeps a rule of host port %s: %s", p, line)
			}
		}
	}
}
