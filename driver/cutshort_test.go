package driver

import (
	"testing"
	"time"

	"github.com/docker/go-plugins-helpers/network"
)

// Endpoints whose CreateEndpoint an earlier run saved and never answered
// (cutshort.go): the replayed one and the joined one stay, and so does one
// cut short before its save and replayed; the one whose
// address the engine gave to a new endpoint goes at that create; the one
// nothing claimed goes when the window closes. None of their addresses is
// told to the IPAM.
func TestEndpointsCutShort(t *testing.T) {
	d, l, fw, st := newTestDriver(t)
	id := func(c byte) string { return string([]byte{c, c, c, c, c, c, c, c, c, c, c, c}) + eid[12:] }
	req := func(c byte, addr string) *network.CreateEndpointRequest {
		return &network.CreateEndpointRequest{NetworkID: nid, EndpointID: id(c), Interface: &network.EndpointInterface{Address: addr}}
	}
	if err := d.CreateNetwork(createReq()); err != nil {
		t.Fatal(err)
	}
	// The replayed one, the joined one, the forgotten one, the one whose
	// address goes to another; and one answered, not marked.
	cut := map[byte]string{'a': "198.18.7.5/24", 'b': "198.18.7.6/24", 'c': "198.18.7.7/24", 'd': "198.18.7.8/24", 'e': "198.18.7.9/24"}
	for c, addr := range cut {
		if _, err := d.CreateEndpoint(req(c, addr)); err != nil {
			t.Fatal(err)
		}
	}

	gone := &goneNets{}
	d2 := New(Deps{Links: l, Firewall: fw, Sysctls: fakeSysctl{}, Store: st, Pools: gone})
	d2.cutShortWindow = 300 * time.Millisecond
	// g: cut short before its save (undone at the restart), then replayed.
	d2.EndpointsCutShort([]string{id('a'), id('b'), id('c'), id('d'), id('g')})
	if err := d2.Restore(); err != nil {
		t.Fatal(err)
	}
	if _, err := d2.CreateEndpoint(req('a', cut['a'])); err != nil {
		t.Fatal(err)
	}
	if _, err := d2.Join(&network.JoinRequest{NetworkID: nid, EndpointID: id('b'), SandboxKey: "/run/netns/b"}); err != nil {
		t.Fatal(err)
	}
	if _, err := d2.CreateEndpoint(req('f', cut['d'])); err != nil {
		t.Fatal(err)
	}
	if _, err := d2.CreateEndpoint(req('g', "198.18.7.10/24")); err != nil {
		t.Fatal(err)
	}
	has := func(c byte) bool {
		defer d2.lock()() // the window's removal runs on a timer
		_, veth := l.veths["ov"+id(c)[:12]]
		var ep Endpoint
		saved, _ := st.Get(bucketEndpoints, id(c), &ep)
		_, known := d2.endpoints[id(c)]
		if veth != saved || saved != known {
			t.Errorf("endpoint %c: veth %v, saved %v, known %v", c, veth, saved, known)
		}
		return known
	}
	for c, want := range map[byte]bool{'a': true, 'b': true, 'c': true, 'd': false, 'e': true, 'f': true, 'g': true} {
		if got := has(c); got != want {
			t.Errorf("right after the restart, endpoint %c there: %v, want %v", c, got, want)
		}
	}
	time.Sleep(600 * time.Millisecond)
	for c, want := range map[byte]bool{'a': true, 'b': true, 'c': false, 'd': false, 'e': true, 'f': true, 'g': true} {
		if got := has(c); got != want {
			t.Errorf("after the window, endpoint %c there: %v, want %v", c, got, want)
		}
	}
	if len(gone.addrs) != 0 {
		t.Errorf("told the IPAM of addresses %v", gone.addrs)
	}
}
