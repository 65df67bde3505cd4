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
