package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ournet/ournet/driver"
	"github.com/ournet/ournet/ipam"
)

// statusReport is what /ournet.Status answers: ournet's state, checked
// against the kernel. It is read-only.
type statusReport struct {
	Networks []driver.NetworkStatus
	Pools    []ipam.PoolInfo
	// Strays: kernel objects marked as ournet's that ournet left alone
	// (their IDs are in neither the state file nor its journal).
	Strays []string `json:",omitempty"`
	// Unsaved: deletions a full disk kept from the state file so far.
	Unsaved int `json:",omitempty"`
	// State: the state file's problem, when ournet runs without it.
	State string `json:",omitempty"`
}

func statusRoute(drv *driver.Driver, alloc *ipam.Allocator) func(*http.ServeMux) {
	return func(mux *http.ServeMux) {
		route(mux, "/ournet.Status", func(*empty) (*statusReport, error) {
			nets, err := drv.Status()
			if err != nil {
				return nil, err
			}
			return &statusReport{Networks: nets, Pools: alloc.Pools(), Strays: drv.Strays(), Unsaved: drv.Unsaved() + alloc.Unsaved()}, nil
		})
	}
}

// runStatus is `ournet status`: it asks a running plugin for its state and
// prints it for a person, or as JSON. It exits 1 when anything drifted.
func runStatus(args []string) int {
	fs := flag.NewFlagSet("status", flag.ExitOnError)
	socket := fs.String("socket", "/run/docker/plugins/ournet.sock", "the plugin's socket")
	asJSON := fs.Bool("json", false, "print JSON")
	portsOnly := fs.Bool("ports", false, "list only the published ports, per container")
	names := fs.String("names", "", "a file of \"ENDPOINT-ID CONTAINER-NAME\" lines (scripts/ournet-status writes it from the engine)")
	_ = fs.Parse(args)
	client := socketClient(*socket, 10*time.Second)
	resp, err := client.Post("http://ournet/ournet.Status", contentType, bytes.NewReader(nil))
	if err != nil {
		fmt.Fprintf(os.Stderr, "ournet status: cannot reach the plugin at %s: %v\nIs it enabled? docker plugin ls\n", *socket, err)
		return 2
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(os.Stderr, "ournet status: %s: %s\n", resp.Status, body)
		return 2
	}
	var rep statusReport
	if err := json.Unmarshal(body, &rep); err != nil {
		fmt.Fprintf(os.Stderr, "ournet status: bad reply: %v\n", err)
		return 2
	}
	if *names != "" {
		nameEndpoints(&rep, *names)
	}
	switch {
	case *portsOnly && *asJSON:
		out, _ := json.MarshalIndent(publishedPorts(&rep), "", "  ")
		fmt.Println(string(out))
		return 0
	case *portsOnly:
		printPorts(os.Stdout, publishedPorts(&rep))
		return 0
	case *asJSON:
		out, _ := json.Marshal(rep)
		fmt.Println(string(out))
	default:
		printStatus(os.Stdout, &rep)
	}
	if len(rep.Strays) > 0 || rep.Unsaved > 0 || rep.State != "" {
		return 1
	}
	for _, n := range rep.Networks {
		if len(n.Problems) > 0 {
			return 1
		}
		for _, e := range n.Endpoints {
			if len(e.Problems) > 0 {
				return 1
			}
		}
	}
	return 0
}

func printStatus(w io.Writer, rep *statusReport) {
	problems := 0
	if rep.State != "" {
		fmt.Fprintf(w, "PROBLEM: %s\n", rep.State)
		return
	}
	fmt.Fprintf(w, "%d networks, %d address pools\n", len(rep.Networks), len(rep.Pools))
	for _, n := range rep.Networks {
		o := n.Options
		fmt.Fprintf(w, "\nnetwork %.12s  bridge %s  subnets %s\n", n.ID, n.Bridge, strings.Join(n.Subnets, " "))
		fmt.Fprintf(w, "  icc=%t masquerade=%t internal=%t ipv6=%t mtu=%d\n", o.ICC, o.Masquerade, o.Internal, o.EnableIPv6, o.MTU)
		if len(o.TrustedIfaces) > 0 {
			fmt.Fprintf(w, "  published ports also open at the containers' addresses from %s (trusted_host_interfaces)\n", strings.Join(o.TrustedIfaces, ", "))
		}
		for _, p := range n.Problems {
			fmt.Fprintf(w, "  PROBLEM: %s\n", p)
			problems++
		}
		for _, e := range n.Endpoints {
			fmt.Fprintf(w, "  endpoint %.12s  %s %s  mac %s  veth %s", e.ID, e.Addr, e.AddrV6, e.MAC, e.HostVeth)
			if e.Container != "" {
				fmt.Fprintf(w, "  container %s", e.Container)
			}
			fmt.Fprintln(w)
			if e.Healed != "" {
				fmt.Fprintf(w, "    re-plumbed into its container at %s (its veth had gone)\n", e.Healed)
			}
			for _, p := range e.Ports {
				fmt.Fprintf(w, "    port %s\n", portText(p))
			}
			for _, p := range e.Problems {
				fmt.Fprintf(w, "    PROBLEM: %s\n", p)
				problems++
			}
		}
	}
	for _, p := range rep.Pools {
		fmt.Fprintf(w, "\npool %s: %d addresses held", p.ID, len(p.Allocated))
		for i, a := range p.Allocated {
			if i == 16 {
				fmt.Fprintf(w, " ...")
				break
			}
			fmt.Fprintf(w, " %s", a.Addr)
		}
	}
	fmt.Fprintln(w)
	for _, s := range rep.Strays {
		fmt.Fprintf(w, "\nPROBLEM: left alone: %s is marked as ournet's but its ID is in neither the state file nor its journal (a state restored from an older backup?); if no container uses it, remove it by hand", s)
		problems++
	}
	if rep.Unsaved > 0 {
		fmt.Fprintf(w, "\nPROBLEM: %d deletions could not be written to the state file (disk full?); they are done in the kernel and are saved once there is room", rep.Unsaved)
		problems++
	}
	if len(rep.Strays) > 0 || rep.Unsaved > 0 {
		fmt.Fprintln(w)
	}
	if problems == 0 {
		fmt.Fprintln(w, "\nno drift: the kernel matches ournet's state")
	} else {
		fmt.Fprintf(w, "\n%d problems; ournet repairs drift as it happens (or every RECONCILE_INTERVAL where changes are not announced), see the plugin's log (LOG_LEVEL=debug)\n", problems)
	}
}

// PublishedPort is one line of `ournet-status --ports`.
type PublishedPort struct {
	Container string `json:",omitempty"`
	Endpoint  string
	Network   string
	driver.PortStatus
}

// publishedPorts lists every endpoint's published ports, by container.
func publishedPorts(rep *statusReport) []PublishedPort {
	out := []PublishedPort{}
	for _, n := range rep.Networks {
		for _, e := range n.Endpoints {
			for _, p := range e.Ports {
				out = append(out, PublishedPort{Container: e.Container, Endpoint: e.ID, Network: n.ID, PortStatus: p})
			}
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Container != out[j].Container {
			return out[i].Container < out[j].Container
		}
		return out[i].Endpoint < out[j].Endpoint
	})
	return out
}

func portText(p driver.PortStatus) string {
	return fmt.Sprintf("%s -> %d/%s", hostText(p), p.ContainerPort, p.Proto)
}

// hostText is where a published port is reached: a host address and port,
// or, on a routed family (no host port), the container's own address.
func hostText(p driver.PortStatus) string {
	if p.HostPort == 0 {
		return "routed: " + p.ContainerIP
	}
	return net.JoinHostPort(p.HostIP, fmt.Sprint(p.HostPort))
}

func printPorts(w io.Writer, ports []PublishedPort) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CONTAINER\tENDPOINT\tHOST\tCONTAINER PORT")
	for _, p := range ports {
		name := p.Container
		if name == "" {
			name = "-"
		}
		fmt.Fprintf(tw, "%s\t%.12s\t%s\t%d/%s\n", name, p.Endpoint, hostText(p.PortStatus), p.ContainerPort, p.Proto)
	}
	tw.Flush()
}

// nameEndpoints fills in container names from a file of "ENDPOINT NAME"
// lines; a file that cannot be read costs only the names.
func nameEndpoints(rep *statusReport, path string) {
	raw, err := os.ReadFile(path)
	if err != nil {
		fmt.Fprintf(os.Stderr, "ournet status: container names unknown: %v\n", err)
		return
	}
	names := map[string]string{}
	for _, line := range strings.Split(string(raw), "\n") {
		if f := strings.Fields(line); len(f) == 2 {
			names[f[0]] = strings.TrimPrefix(f[1], "/")
		}
	}
	for i := range rep.Networks {
		for j := range rep.Networks[i].Endpoints {
			e := &rep.Networks[i].Endpoints[j]
			e.Container = names[e.ID]
		}
	}
}

// socketClient talks HTTP to the plugin over its unix socket, for the
// plugin's own subcommands (status, retire-host).
func socketClient(socket string, timeout time.Duration) *http.Client {
	return &http.Client{Timeout: timeout, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", socket)
		},
	}}
}
