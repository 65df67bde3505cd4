package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/ournet/ournet/driver"
)

// A port published on a routed family has no host port: the table says
// where it is reached instead, the container's own address.
func TestPortsTableShowsRoutedPorts(t *testing.T) {
	var b bytes.Buffer
	printPorts(&b, []PublishedPort{
		{Container: "web", Endpoint: "5e14a84a84e3aaaa", PortStatus: driver.PortStatus{HostIP: "::", HostPort: 8080, ContainerIP: "2001:db8::2", ContainerPort: 80, Proto: "tcp"}},
		{Container: "api", Endpoint: "6e14a84a84e3aaaa", PortStatus: driver.PortStatus{HostIP: "0.0.0.0", ContainerIP: "198.18.62.2", ContainerPort: 80, Proto: "tcp"}},
	})
	for _, want := range []string{"[::]:8080            80/tcp", "routed: 198.18.62.2  80/tcp"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("the table lacks %q:\n%s", want, b.String())
		}
	}
}

// A network's trusted host interfaces are in its summary: they open its
// published ports at the containers' addresses.
func TestStatusShowsTrustedInterfaces(t *testing.T) {
	var b bytes.Buffer
	printStatus(&b, &statusReport{Networks: []driver.NetworkStatus{
		{ID: "0123456789abcdef", Bridge: "ournet-01234567", Options: driver.NetworkOptions{TrustedIfaces: []string{"eth1", "vxlan0"}}},
		{ID: "1123456789abcdef", Bridge: "ournet-11234567"},
	}})
	if got := strings.Count(b.String(), "trusted_host_interfaces"); got != 1 || !strings.Contains(b.String(), "from eth1, vxlan0 (") {
		t.Errorf("want one line naming eth1, vxlan0:\n%s", b.String())
	}
}
