package driver

import (
	"fmt"
	"sort"
	"time"

	"github.com/ournet/ournet/internal/firewall"
)

// NetworkStatus is one network as ournet knows it, checked against the kernel.
type NetworkStatus struct {
	ID        string
	Bridge    string
	Subnets   []string
	Options   NetworkOptions
	Endpoints []EndpointStatus
	Problems  []string `json:",omitempty"`
}

// EndpointStatus is one endpoint, checked against the kernel.
type EndpointStatus struct {
	ID string
	// Container is the container's name, where the caller knows it (the
	// plugin never asks the engine: scripts/ournet-status fills it in).
	Container string `json:",omitempty"`
	Addr      string
	AddrV6    string `json:",omitempty"`
	MAC       string
	HostVeth  string
	// Ports are the endpoint's published ports as installed: `docker port`
	// and `docker ps` cannot show a remote driver's (moby/libnetwork#2451).
	Ports    []PortStatus `json:",omitempty"`
	Problems []string     `json:",omitempty"`
	// Healed is when ournet last plumbed the endpoint into its container
	// again because its veth had gone.
	Healed string `json:",omitempty"`
}

// PortStatus is one published port: host address and port to the
// container's port and protocol.
type PortStatus struct {
	HostIP        string
	HostPort      uint16
	ContainerIP   string
	ContainerPort uint16
	Proto         string
}

// Status reports ournet's state and every difference from the kernel: a
// missing bridge or veth, rules that drifted. It changes nothing.
func (d *Driver) Status() ([]NetworkStatus, error) {
	defer d.lock()()
	var all []firewall.Network
	for _, n := range d.networks {
		all = append(all, d.fwNetwork(n))
	}
	drifted, err := d.fw.Drifted(all)
	if err != nil {
		return nil, err
	}
	bad := map[string]bool{}
	for _, n := range drifted {
		bad[n.ID] = true
	}
	var out []NetworkStatus
	for _, n := range d.networks {
		ns := NetworkStatus{ID: n.ID, Bridge: n.Bridge, Options: n.Options}
		for _, s := range append(append([]Subnet{}, n.IPv4...), n.IPv6...) {
			ns.Subnets = append(ns.Subnets, s.Pool.String())
		}
		if ok, err := d.links.Exists(n.Bridge); err != nil || !ok {
			ns.Problems = append(ns.Problems, fmt.Sprintf("bridge %s is missing", n.Bridge))
		}
		if bad[n.ID] {
			ns.Problems = append(ns.Problems, "firewall rules differ from what they should be")
		}
		for _, ep := range d.endpoints {
			if ep.NetworkID != n.ID {
				continue
			}
			es := EndpointStatus{ID: ep.ID, Addr: ep.Addr.String(), MAC: ep.MAC, HostVeth: ep.HostVeth}
			if ep.AddrV6.IsValid() {
				es.AddrV6 = ep.AddrV6.String()
			}
			for _, m := range ep.Ports {
				es.Ports = append(es.Ports, PortStatus{HostIP: m.HostIP.String(), HostPort: m.HostPort,
					ContainerIP: m.ContainerIP.String(), ContainerPort: m.ContainerPort, Proto: m.Proto.String()})
			}
			if ok, err := d.links.Exists(ep.HostVeth); err != nil || !ok {
				p := fmt.Sprintf("veth %s is missing", ep.HostVeth)
				if ep.healErr != "" {
					p += "; plumbing it into its container again failed: " + ep.healErr
				}
				es.Problems = append(es.Problems, p)
			}
			if !ep.healed.IsZero() {
				es.Healed = ep.healed.Format(time.RFC3339)
			}
			ns.Endpoints = append(ns.Endpoints, es)
		}
		sort.Slice(ns.Endpoints, func(i, j int) bool { return ns.Endpoints[i].ID < ns.Endpoints[j].ID })
		out = append(out, ns)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// Strays lists kernel objects marked as ournet's whose IDs neither the
// state nor its journal knows: left alone at start (removeOrphans).
func (d *Driver) Strays() []string {
	defer d.lock()()
	return append([]string(nil), d.strays...)
}

// Unsaved counts deletions a full disk kept from the state file so far.
func (d *Driver) Unsaved() int {
	defer d.lock()()
	return len(d.unsaved)
}

// Empty reports whether ournet has no network left, so that shutting down
// may remove its base chains and tables too.
func (d *Driver) Empty() bool {
	defer d.lock()()
	return len(d.networks) == 0 && len(d.endpoints) == 0
}
