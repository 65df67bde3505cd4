package portmap

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/ournet/ournet/internal/iptables"
)

// fakeRunner is the in-memory iptables, recording the scripts applied.
type fakeRunner struct {
	*iptables.Fake
	mu      sync.Mutex
	scripts []string
	fail    error
}

func (r *fakeRunner) Restore(f iptables.Family, s string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail != nil && strings.Contains(s, "OURNET-P-") {
		return r.fail
	}
	if err := r.Fake.Restore(f, s); err != nil {
		return err
	}
	r.scripts = append(r.scripts, s)
	return nil
}

func (r *fakeRunner) endpointScripts() int {
	n := 0
	for _, s := range r.scripts {
		if strings.Contains(s, "-j DNAT") {
			n++
		}
	}
	return n
}

// fakePorts stands in for the host's sockets: held by ournet or busy
// (someone else's).
type fakePorts struct {
	mu   sync.Mutex
	held map[string]bool
	busy map[string]bool
}

func key(p Proto, ap netip.AddrPort) string { return fmt.Sprintf("%s/%s", ap, p) }

type release func() error

func (r release) Close() error { return r() }

func (f *fakePorts) reserve(p Proto, ap netip.AddrPort) (io.Closer, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k := key(p, ap)
	if f.held[k] || f.busy[k] {
		return nil, ErrInUse
	}
	f.held[k] = true
	return release(func() error {
		f.mu.Lock()
		defer f.mu.Unlock()
		delete(f.held, k)
		return nil
	}), nil
}

type fixture struct {
	m       *Mapper
	run     *fakeRunner
	ports   *fakePorts
	sysctl  map[string]string
	hairpin []string
}

func newFixture(first, last uint16) *fixture {
	fx := &fixture{run: &fakeRunner{Fake: iptables.NewFake()}, ports: &fakePorts{held: map[string]bool{}, busy: map[string]bool{}}, sysctl: map[string]string{}}
	fx.m = New(Config{
		Runner: fx.run, Families: []iptables.Family{iptables.IPv4, iptables.IPv6},
		Reserve: fx.ports.reserve,
		Sysctl:  func(k, v string) error { fx.sysctl[k] = v; return nil },
		Hairpin: func(l string) error { fx.hairpin = append(fx.hairpin, l); return nil },
		Range:   func() (uint16, uint16) { return first, last },
		Forget:  func([]Mapping, bool) error { return nil },
	})
	return fx
}

func ep(id string) Endpoint {
	e := dual
	e.ID = id
	return e
}

// -p CONTAINER and -P: one free port of the ephemeral range, the same on
// 0.0.0.0 and ::, the search going on after the last port handed out.
func TestEphemeralPorts(t *testing.T) {
	fx := newFixture(40000, 40002)
	fx.ports.busy[key(TCP, netip.MustParseAddrPort("[::]:40001"))] = true
	req := []Binding{{Proto: TCP, Port: 80}}
	a, err := fx.m.Map(ep("a"), req)
	if err != nil || len(a) != 2 || a[0].HostPort != 40000 || a[1].HostPort != 40000 || a[0].HostIP != any4 || a[1].HostIP != any6 {
		t.Fatalf("first = %v, %v", a, err)
	}
	b, err := fx.m.Map(ep("b"), req)
	if err != nil || b[0].HostPort != 40002 || b[1].HostPort != 40002 {
		t.Fatalf("second = %v, %v (40001 is busy on ::)", b, err)
	}
	if held := fx.ports.held[key(TCP, netip.MustParseAddrPort("0.0.0.0:40001"))]; held {
		t.Fatal("40001 stays reserved on 0.0.0.0 after :: refused it")
	}
	_, err = fx.m.Map(ep("c"), req)
	if err == nil || !strings.Contains(err.Error(), "no host port of the ephemeral range 40000-40002 is free for 80/tcp") {
		t.Fatalf("third = %v", err)
	}
	if err := fx.m.Unmap("a"); err != nil {
		t.Fatal(err)
	}
	c, err := fx.m.Map(ep("c"), req)
	if err != nil || c[0].HostPort != 40000 {
		t.Fatalf("after release = %v, %v", c, err)
	}
}

func TestHostPortRange(t *testing.T) {
	fx := newFixture(40000, 40010)
	fx.ports.busy[key(UDP, netip.MustParseAddrPort("0.0.0.0:8000"))] = true
	req := []Binding{{Proto: UDP, Port: 53, HostPort: 8000, HostPortEnd: 8002}}
	a, err := fx.m.Map(ep("a"), req)
	if err != nil || a[0].HostPort != 8001 {
		t.Fatalf("a = %v, %v", a, err)
	}
	if b, err := fx.m.Map(ep("b"), req); err != nil || b[0].HostPort != 8002 {
		t.Fatalf("b = %v, %v", b, err)
	}
	_, err = fx.m.Map(ep("c"), req)
	if err == nil || !strings.Contains(err.Error(), "every host port of 8000-8002/udp on 0.0.0.0 and :: is already in use") {
		t.Fatalf("c = %v", err)
	}
}

// A port someone holds is refused with a message naming it, and nothing of
// the endpoint stays: no port reserved, no rule written.
func TestPortInUseLeavesNothing(t *testing.T) {
	fx := newFixture(40000, 40010)
	fx.ports.busy[key(TCP, netip.MustParseAddrPort("0.0.0.0:8081"))] = true
	_, err := fx.m.Map(ep("a"), []Binding{{Proto: TCP, Port: 80, HostPort: 8080}, {Proto: TCP, Port: 81, HostPort: 8081}})
	want := "ournet: host port 8081/tcp on 0.0.0.0 is already in use; choose another host port"
	if err == nil || err.Error() != want || !errors.Is(err, ErrInUse) {
		t.Fatalf("err = %v, want %q", err, want)
	}
	if len(fx.ports.held) != 0 || fx.run.endpointScripts() != 0 || len(fx.m.Mappings("a")) != 0 {
		t.Fatalf("left behind: held %v, scripts %d", fx.ports.held, fx.run.endpointScripts())
	}
	// The endpoint's own second binding of one port is refused the same way.
	_, err = fx.m.Map(ep("a"), []Binding{{Proto: TCP, Port: 80, HostPort: 9000}, {Proto: TCP, Port: 81, HostPort: 9000}})
	if err == nil || !strings.Contains(err.Error(), "9000/tcp on 0.0.0.0 is already in use") || len(fx.ports.held) != 0 {
		t.Fatalf("twice the same port: %v, held %v", err, fx.ports.held)
	}
}

func TestInstallFailureReleasesPorts(t *testing.T) {
	fx := newFixture(40000, 40010)
	fx.run.fail = errors.New("iptables-restore: line 3 failed")
	if _, err := fx.m.Map(ep("a"), []Binding{{Proto: TCP, Port: 80, HostPort: 8080}}); err == nil || !strings.Contains(err.Error(), "line 3 failed") {
		t.Fatalf("err = %v", err)
	}
	if len(fx.ports.held) != 0 {
		t.Fatalf("ports held after a failed install: %v", fx.ports.held)
	}
}

// ProgramExternalConnectivity may come again: the same request keeps the
// ports (even those picked from the ephemeral range); another one replaces them.
func TestMapAgain(t *testing.T) {
	fx := newFixture(40000, 40010)
	req := []Binding{{Proto: TCP, Port: 80}}
	a, err := fx.m.Map(ep("a"), req)
	if err != nil {
		t.Fatal(err)
	}
	again, err := fx.m.Map(ep("a"), req)
	if err != nil || again[0] != a[0] || len(fx.ports.held) != 2 {
		t.Fatalf("again = %v, %v, held %v", again, err, fx.ports.held)
	}
	other, err := fx.m.Map(ep("a"), []Binding{{Proto: TCP, Port: 80, HostPort: 8080}})
	if err != nil || other[0].HostPort != 8080 || len(fx.ports.held) != 2 || fx.ports.held[key(TCP, netip.AddrPortFrom(any4, a[0].HostPort))] {
		t.Fatalf("replaced = %v, %v, held %v", other, err, fx.ports.held)
	}
	// Engine 26 sends the same bindings in another order.
	two := []Binding{{Proto: UDP, Port: 53}, {Proto: TCP, Port: 80}}
	first, err := fx.m.Map(ep("b"), two)
	if err != nil {
		t.Fatal(err)
	}
	swapped, err := fx.m.Map(ep("b"), []Binding{two[1], two[0]})
	if err != nil || !slices.Equal(first, swapped) {
		t.Fatalf("reordered request: %v then %v (%v)", first, swapped, err)
	}
}

// route_localnet only where the host's loopback can reach the port;
// hairpin mode whenever a port is published.
func TestLocalnetAndHairpinSettings(t *testing.T) {
	fx := newFixture(40000, 40010)
	if _, err := fx.m.Map(ep("a"), []Binding{{Proto: TCP, Port: 80, HostPort: 8080, HostIP: netip.MustParseAddr("198.51.100.1")}}); err != nil {
		t.Fatal(err)
	}
	if len(fx.sysctl) != 0 || len(fx.hairpin) != 1 || fx.hairpin[0] != "ov1" {
		t.Fatalf("specific address: sysctl %v hairpin %v", fx.sysctl, fx.hairpin)
	}
	if _, err := fx.m.Map(ep("b"), []Binding{{Proto: TCP, Port: 80, HostPort: 8081, HostIP: lo4}}); err != nil {
		t.Fatal(err)
	}
	if fx.sysctl["ipv4/conf/br0/route_localnet"] != "1" {
		t.Fatalf("127.0.0.1: sysctl %v", fx.sysctl)
	}
}

// After a restart the same host ports are held again; one taken meanwhile
// is reported, and the rules are installed all the same.
func TestRestore(t *testing.T) {
	fx := newFixture(40000, 40010)
	ms := []Mapping{
		{Proto: TCP, HostIP: any4, HostPort: 40005, ContainerIP: c4, ContainerPort: 80},
		{Proto: TCP, HostIP: any6, HostPort: 40005, ContainerIP: c6, ContainerPort: 80},
	}
	fx.ports.busy[key(TCP, netip.MustParseAddrPort("[::]:40005"))] = true
	err := fx.m.Restore(ep("a"), []Binding{{Proto: TCP, Port: 80}}, ms)
	if err == nil || !strings.Contains(err.Error(), "40005/tcp on :: is already in use") {
		t.Fatalf("err = %v", err)
	}
	if !fx.ports.held[key(TCP, netip.MustParseAddrPort("0.0.0.0:40005"))] || fx.run.endpointScripts() == 0 {
		t.Fatalf("held %v, scripts %d", fx.ports.held, fx.run.endpointScripts())
	}
	// The engine asks again with the same request: the ports stay.
	got, err := fx.m.Map(ep("a"), []Binding{{Proto: TCP, Port: 80}})
	if err != nil || got[0].HostPort != 40005 {
		t.Fatalf("Map after Restore = %v, %v", got, err)
	}
}

// The rules land in the tables (the in-memory iptables: no root), a
// flushed endpoint chain and a deleted base jump are put back by
// Reconcile, and Unmap and Prune leave nothing of the endpoints.
func TestRulesWithoutRoot(t *testing.T) {
	fx := newFixture(40000, 40010)
	if err := fx.m.Setup(); err != nil {
		t.Fatal(err)
	}
	base := map[iptables.Family]string{}
	for _, f := range []iptables.Family{iptables.IPv4, iptables.IPv6} {
		base[f], _ = fx.run.Save(f, "nat")
	}
	if _, err := fx.m.Map(ep("a1"), []Binding{{Proto: TCP, Port: 80, HostPort: 8080}}); err != nil {
		t.Fatal(err)
	}
	if _, err := fx.m.Map(ep("b2"), []Binding{{Proto: UDP, Port: 53, HostPort: 5353}}); err != nil {
		t.Fatal(err)
	}
	dnat := func(f iptables.Family, id string) []string {
		r, _ := fx.run.Rules(f, "nat", dnatChain(id))
		return r
	}
	if r := dnat(iptables.IPv4, "a1"); len(r) != 1 || !strings.Contains(r[0], "--dport 8080") || !strings.Contains(r[0], "-j DNAT") {
		t.Fatalf("a1's IPv4 DNAT rules = %q", r)
	}
	if r := dnat(iptables.IPv6, "b2"); len(r) != 1 || !strings.Contains(r[0], "-p udp") {
		t.Fatalf("b2's IPv6 DNAT rules = %q", r)
	}
	want, _ := fx.run.Save(iptables.IPv4, "nat")
	// A firewall reload takes a1's rules and the OUTPUT jump.
	jumps, _ := fx.run.Rules(iptables.IPv4, "nat", "OUTPUT")
	if err := fx.run.Fake.Restore(iptables.IPv4, "*nat\n-F "+dnatChain("a1")+"\n"+iptables.DeleteLine(jumps[0])+"\nCOMMIT\n"); err != nil {
		t.Fatal(err)
	}
	repaired, err := fx.m.Reconcile()
	if err != nil || !slices.Equal(repaired, []string{"a1"}) {
		t.Fatalf("Reconcile = %v, %v", repaired, err)
	}
	if got, _ := fx.run.Save(iptables.IPv4, "nat"); got != want {
		t.Fatalf("after Reconcile:\n%s\nwant\n%s", got, want)
	}
	if repaired, err := fx.m.Reconcile(); err != nil || len(repaired) != 0 {
		t.Fatalf("Reconcile with nothing to do = %v, %v", repaired, err)
	}
	if err := fx.m.Unmap("a1"); err != nil {
		t.Fatal(err)
	}
	// b2 is unknown to the next run (its endpoint is gone): Prune.
	if err := fx.m.Prune(nil); err != nil {
		t.Fatal(err)
	}
	for _, f := range []iptables.Family{iptables.IPv4, iptables.IPv6} {
		if got, _ := fx.run.Save(f, "nat"); got != base[f] {
			t.Fatalf("%s after Unmap and Prune:\n%s\nwant\n%s", f, got, base[f])
		}
	}
}

// On a routed family a binding publishes no host port: no reservation, no
// DNAT rule, no kernel setting, a Direct mapping at the container's
// address, whatever host address and port it gave (with the bridge driver,
// ignored too); the other family of the same endpoint is NATed as ever.
// Unmap and Restore leave no reservation behind either.
func TestRoutedFamilyOpensDirectly(t *testing.T) {
	fx := newFixture(40000, 40010)
	e := ep("r")
	e.RoutedV4 = true
	req := []Binding{{Proto: TCP, Port: 80}, {Proto: UDP, Port: 53, HostPort: 5353, HostIP: lo4}}
	got, err := fx.m.Map(e, req)
	want := []Mapping{
		{Proto: TCP, HostIP: any4, ContainerIP: c4, ContainerPort: 80},
		{Proto: TCP, HostIP: any6, HostPort: 40000, ContainerIP: c6, ContainerPort: 80},
		{Proto: UDP, HostIP: any4, ContainerIP: c4, ContainerPort: 53},
	}
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("Map = %v, %v; want %v", got, err, want)
	}
	if !got[0].Direct() || got[1].Direct() || got[0].String() != c4.String()+":80/tcp (routed: no host port)" {
		t.Fatalf("Direct %v %v, String %q", got[0].Direct(), got[1].Direct(), got[0].String())
	}
	if len(fx.ports.held) != 1 || !fx.ports.held[key(TCP, netip.MustParseAddrPort("[::]:40000"))] {
		t.Fatalf("held %v: only [::]:40000/tcp should be", fx.ports.held)
	}
	v4, _ := fx.run.Save(iptables.IPv4, "nat")
	if strings.Contains(v4, "OURNET-P-") || len(fx.sysctl) != 0 {
		t.Fatalf("routed IPv4 got NAT rules or route_localnet: %s %v", v4, fx.sysctl)
	}
	if v6, _ := fx.run.Save(iptables.IPv6, "nat"); !strings.Contains(v6, "--dport 40000 -j DNAT") {
		t.Fatalf("nat IPv6 has no DNAT rule:\n%s", v6)
	}
	if again, err := fx.m.Map(e, req); err != nil || !slices.Equal(again, want) {
		t.Fatalf("Map again = %v, %v", again, err)
	}
	if err := fx.m.Unmap("r"); err != nil || len(fx.ports.held) != 0 {
		t.Fatalf("Unmap: %v, held %v", err, fx.ports.held)
	}
	if err := fx.m.Restore(e, req, want); err != nil || len(fx.ports.held) != 1 {
		t.Fatalf("Restore: %v, held %v (only the IPv6 host port)", err, fx.ports.held)
	}

	// Every family routed: nothing in the kernel at all, and ::1 (refused
	// on a nat family: no userland proxy) is only ignored.
	all := ep("s")
	all.RoutedV4, all.RoutedV6 = true, true
	got, err = fx.m.Map(all, []Binding{{Proto: TCP, Port: 443, HostPort: 8443, HostIP: netip.IPv6Loopback()}})
	if err != nil || len(got) != 1 || got[0] != (Mapping{Proto: TCP, HostIP: any6, ContainerIP: c6, ContainerPort: 443}) {
		t.Fatalf("::1 on a routed family: %v, %v", got, err)
	}
	if s, _ := fx.run.Save(iptables.IPv6, "nat"); strings.Contains(s, "OURNET-P-"+iptables.Short("s")) {
		t.Fatalf("an all-routed endpoint got NAT rules:\n%s", s)
	}
}
