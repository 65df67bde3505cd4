package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	ipamapi "github.com/docker/go-plugins-helpers/ipam"
	"github.com/docker/go-plugins-helpers/network"

	"github.com/ournet/ournet/driver"
	"github.com/ournet/ournet/internal/store"
	"github.com/ournet/ournet/ipam"
)

type stubIPAM struct{ ipamapi.Ipam }

func (stubIPAM) RequestPool(r *ipamapi.RequestPoolRequest) (*ipamapi.RequestPoolResponse, error) {
	if r.Pool == "bad" {
		return nil, errors.New("ournet: bad pool")
	}
	return &ipamapi.RequestPoolResponse{PoolID: "p1", Pool: r.Pool}, nil
}

func (stubIPAM) GetCapabilities() (*ipamapi.CapabilitiesResponse, error) {
	return &ipamapi.CapabilitiesResponse{}, nil
}

type stubDriver struct{ network.Driver }

func (stubDriver) GetCapabilities() (*network.CapabilitiesResponse, error) {
	return &network.CapabilitiesResponse{Scope: "local", ConnectivityScope: "local"}, nil
}

func call(t *testing.T, mux http.Handler, path, body string) (int, map[string]any) {
	t.Helper()
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, path, strings.NewReader(body)))
	if ct := rec.Header().Get("Content-Type"); ct != contentType {
		t.Errorf("%s: content type %q", path, ct)
	}
	var out map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
		t.Fatalf("%s: reply %q is not JSON: %v", path, rec.Body.String(), err)
	}
	return rec.Code, out
}

func TestOneSocketBothAPIs(t *testing.T) {
	mux := newMux(stubDriver{}, stubIPAM{}, nil)
	code, out := call(t, mux, "/Plugin.Activate", "")
	impl, _ := out["Implements"].([]any)
	if code != 200 || len(impl) != 2 || impl[0] != "NetworkDriver" || impl[1] != "IpamDriver" {
		t.Fatalf("Activate = %d %v", code, out)
	}
	if code, out := call(t, mux, "/NetworkDriver.GetCapabilities", ""); code != 200 || out["Scope"] != "local" {
		t.Fatalf("NetworkDriver.GetCapabilities = %d %v", code, out)
	}
	if code, out := call(t, mux, "/IpamDriver.GetCapabilities", "{}"); code != 200 || out["RequiresMACAddress"] != false {
		t.Fatalf("IpamDriver.GetCapabilities = %d %v", code, out)
	}
	if code, out := call(t, mux, "/IpamDriver.RequestPool", `{"Pool":"198.18.0.0/24"}`); code != 200 || out["PoolID"] != "p1" {
		t.Fatalf("RequestPool = %d %v", code, out)
	}
}

// An IPAM failure must be seen as one by every engine: a 500 with both Err
// and Error (a 200 carrying only Err counts as success for IPAM).
func TestErrorsCarryBothFields(t *testing.T) {
	mux := newMux(stubDriver{}, stubIPAM{}, nil)
	code, out := call(t, mux, "/IpamDriver.RequestPool", `{"Pool":"bad"}`)
	if code != 500 || out["Err"] != "ournet: bad pool" || out["Error"] != "ournet: bad pool" {
		t.Fatalf("RequestPool error = %d %v", code, out)
	}
	code, out = call(t, mux, "/IpamDriver.RequestPool", `{not json`)
	if code != 400 || !strings.Contains(out["Err"].(string), "bad request") {
		t.Fatalf("malformed request = %d %v", code, out)
	}
}

func TestListenUnixReplacesStaleSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "ournet.sock")
	l1, err := listenUnix(path)
	if err != nil {
		t.Fatal(err)
	}
	l1.(interface{ SetUnlinkOnClose(bool) }).SetUnlinkOnClose(false)
	l1.Close() // leaves the file behind, as a crash would
	l2, err := listenUnix(path)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	l2.Close()
}

// dockerd retries a broken call with an empty body: that must fail with a
// message that tells the user to run the command again, not be taken as a
// request with every field empty.
func TestEmptyRetryRefused(t *testing.T) {
	mux := newMux(stubDriver{}, stubIPAM{}, nil)
	code, out := call(t, mux, "/IpamDriver.RequestPool", "")
	if code != 500 || !strings.Contains(out["Err"].(string), "run the command again") {
		t.Fatalf("empty RequestPool = %d %v", code, out)
	}
	if code, _ := call(t, mux, "/NetworkDriver.GetCapabilities", ""); code != 200 {
		t.Fatalf("GetCapabilities without a body = %d", code)
	}
}

// stubGwDriver is a driver that answers engine 28's GwAllocCheck.
type stubGwDriver struct{ stubDriver }

func (stubGwDriver) Capabilities() *driver.CapabilitiesResponse {
	return &driver.CapabilitiesResponse{Scope: "local", ConnectivityScope: "local", GwAllocChecker: true}
}
func (stubGwDriver) GwAllocCheck(r *driver.GwAllocCheckRequest) (*driver.GwAllocCheckResponse, error) {
	_, internal := r.Options["com.docker.network.internal"]
	return &driver.GwAllocCheckResponse{SkipIPv4: internal}, nil
}

// On the wire, as engine 28's remote shim reads it.
func TestGwAllocCheckOnTheWire(t *testing.T) {
	mux := newMux(stubGwDriver{}, stubIPAM{}, nil)
	if code, out := call(t, mux, "/NetworkDriver.GetCapabilities", ""); code != 200 || out["GwAllocChecker"] != true || out["Scope"] != "local" {
		t.Fatalf("GetCapabilities = %d %v", code, out)
	}
	code, out := call(t, mux, "/NetworkDriver.GwAllocCheck", `{"Options":{"com.docker.network.internal":true,"com.docker.network.generic":{}}}`)
	if code != 200 || out["SkipIPv4"] != true || out["SkipIPv6"] != false {
		t.Fatalf("GwAllocCheck = %d %v", code, out)
	}
}

// recDriver records the networks it is asked to delete.
type recDriver struct {
	stubDriver
	deleted *[]string
}

func (d recDriver) DeleteNetwork(r *network.DeleteNetworkRequest) error {
	*d.deleted = append(*d.deleted, r.NetworkID)
	return nil
}

// A call the plugin was handling when it died is replayed when dockerd
// retries it with an empty body; one whose work was done is answered with
// its reply again, not done twice; two cut short of the same kind cannot
// be told apart and are not replayed; with nothing to replay the retry is
// refused with what to do.
func TestEmptyRetryReplaysTheCallInFlight(t *testing.T) {
	dir := t.TempDir()
	before := openInflight(t, dir)
	// The dead run was deleting a network, had given out a pool (its reply
	// kept, not yet sent), and was handling two Joins.
	_ = before.begin("/NetworkDriver.DeleteNetwork", []byte(`{"NetworkID":"n1"}`))
	_ = before.begin("/NetworkDriver.DeleteNetwork", []byte(`{"NetworkID":"n2"}`))
	pool := before.begin("/IpamDriver.RequestPool", []byte(`{"Pool":"198.18.0.0/24"}`))
	pool.answered([]byte(`{"PoolID":"p-first","Pool":"198.18.0.0/24"}`))
	_ = before.begin("/NetworkDriver.Join", []byte(`{"NetworkID":"n1","EndpointID":"e1"}`))
	_ = before.begin("/NetworkDriver.Join", []byte(`{"NetworkID":"n1","EndpointID":"e2"}`))

	restartInflight(t, dir)
	var deleted []string
	mux := newMux(recDriver{deleted: &deleted}, stubIPAM{}, nil)
	// Deletes may be done again in any order: the first retry replays both,
	// the second is answered done.
	for i := 0; i < 2; i++ {
		if code, out := call(t, mux, "/NetworkDriver.DeleteNetwork", ""); code != 200 || strings.Join(deleted, " ") != "n1 n2" {
			t.Fatalf("retry %d of DeleteNetwork = %d %v, deleted %v", i+1, code, out, deleted)
		}
	}
	if code, out := call(t, mux, "/IpamDriver.RequestPool", ""); code != 200 || out["PoolID"] != "p-first" {
		t.Fatalf("a done RequestPool retried = %d %v, want its first reply (stubIPAM would answer p1)", code, out)
	}
	for i := 0; i < 2; i++ {
		if code, out := call(t, mux, "/NetworkDriver.Join", ""); code != 500 || !strings.Contains(out["Err"].(string), "run the command again") {
			t.Fatalf("a retry of one of two cut-short Joins = %d %v", code, out)
		}
	}
	if code, out := call(t, mux, "/NetworkDriver.CreateNetwork", ""); code != 500 || !strings.Contains(out["Err"].(string), "run the command again") {
		t.Fatalf("an empty retry with nothing to replay = %d %v", code, out)
	}
	// A call that completes leaves nothing to replay.
	if code, _ := call(t, mux, "/NetworkDriver.DeleteNetwork", `{"NetworkID":"n3"}`); code != 200 {
		t.Fatal("DeleteNetwork failed")
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("files left in %s: %v", dir, entries)
	}
}

// openInflight opens dir as a run of the plugin does at start.
func openInflight(t *testing.T, dir string) *inflight {
	t.Helper()
	f, err := newInflight(dir)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// restartInflight is the next run's view of dir, in use by the server
// until the test ends.
func restartInflight(t *testing.T, dir string) {
	t.Helper()
	replays.f = openInflight(t, dir)
	t.Cleanup(func() { replays.f = nil })
}

// sweepDriver records DeleteEndpoint calls and sweeps.
type sweepDriver struct {
	stubDriver
	deleted *[]string
	sweeps  *int
}

func (d sweepDriver) DeleteEndpoint(r *network.DeleteEndpointRequest) error {
	*d.deleted = append(*d.deleted, r.EndpointID)
	return nil
}
func (d sweepDriver) DeleteLeftEndpoints() { *d.sweeps++ }

// An empty DeleteEndpoint retry replays what was kept and then sweeps the
// endpoints the engine left: the retried call may be one the dead plugin
// never read (or one of another run). It is answered done, never "run the
// command again": dockerd forgets the endpoint whatever it hears.
func TestEmptyDeleteEndpointRetrySweeps(t *testing.T) {
	dir := t.TempDir()
	before := openInflight(t, dir)
	_ = before.begin("/NetworkDriver.DeleteEndpoint", []byte(`{"NetworkID":"n1","EndpointID":"e1"}`))
	restartInflight(t, dir)
	var deleted []string
	var sweeps int
	mux := newMux(sweepDriver{deleted: &deleted, sweeps: &sweeps}, stubIPAM{}, nil)
	for i := 0; i < 3; i++ {
		if code, out := call(t, mux, "/NetworkDriver.DeleteEndpoint", ""); code != 200 {
			t.Fatalf("retry %d = %d %v", i+1, code, out)
		}
		if strings.Join(deleted, " ") != "e1" || sweeps != i+1 {
			t.Fatalf("after retry %d: deleted %v, sweeps %d", i+1, deleted, sweeps)
		}
	}
	// A plugin without a sweep still says what to do.
	replays.f, _ = newInflight(t.TempDir())
	if code, out := call(t, newMux(stubDriver{}, stubIPAM{}, nil), "/NetworkDriver.DeleteEndpoint", ""); code != 500 || !strings.Contains(out["Err"].(string), "run the command again") {
		t.Fatalf("empty retry without a sweep = %d %v", code, out)
	}
}

// bareIPAM fails RequestPool with an error of a lower layer, unprefixed.
type bareIPAM struct{ stubIPAM }

func (bareIPAM) RequestPool(*ipamapi.RequestPoolRequest) (*ipamapi.RequestPoolResponse, error) {
	return nil, fmt.Errorf("antispoof: adding checks for ov1: %w", errors.New("netlink receive: operation not permitted"))
}

// Whatever layer an error comes from, the user sees one prefix.
func TestErrorsCarryOnePrefix(t *testing.T) {
	mux := newMux(stubDriver{}, bareIPAM{}, nil)
	code, out := call(t, mux, "/IpamDriver.RequestPool", `{"Pool":"198.18.0.0/24"}`)
	if code != 500 || out["Err"] != "ournet: antispoof: adding checks for ov1: netlink receive: operation not permitted" {
		t.Fatalf("RequestPool = %d %v", code, out)
	}
}

// sweepIPAM counts the sweeps of orphan pools and addresses.
type sweepIPAM struct {
	stubIPAM
	sweeps, addrSweeps *int
}

func (a sweepIPAM) SweepOrphans() int   { *a.sweeps++; return 0 }
func (a sweepIPAM) SweepAddresses() int { *a.addrSweeps++; return 0 }

// An empty ReleasePool retry names no pool: it frees the pools of deleted
// networks an earlier run left waiting for their ReleasePool
// (ipam/orphan.go), and is answered done.
func TestEmptyReleasePoolRetrySweeps(t *testing.T) {
	restartInflight(t, t.TempDir())
	var sweeps, addrSweeps int
	mux := newMux(stubDriver{}, sweepIPAM{sweeps: &sweeps, addrSweeps: &addrSweeps}, nil)
	for i := 0; i < 2; i++ {
		if code, out := call(t, mux, "/IpamDriver.ReleasePool", ""); code != 200 || sweeps != i+1 {
			t.Fatalf("retry %d = %d %v, sweeps %d", i+1, code, out, sweeps)
		}
	}
	// The same for ReleaseAddress and the addresses of deleted endpoints.
	for i := 0; i < 2; i++ {
		if code, out := call(t, mux, "/IpamDriver.ReleaseAddress", ""); code != 200 || addrSweeps != i+1 || sweeps != 2 {
			t.Fatalf("ReleaseAddress retry %d = %d %v, sweeps %d/%d", i+1, code, out, addrSweeps, sweeps)
		}
	}
}

// gatewayMarks records GatewayCutShort.
type gatewayMarks []string

func (g *gatewayMarks) GatewayCutShort(r *ipamapi.RequestAddressRequest) {
	*g = append(*g, r.PoolID+":"+r.Options["RequestAddressType"])
}

func (g *gatewayMarks) NetworkCutShort(subnets []netip.Prefix) {
	*g = append(*g, fmt.Sprint("network:", subnets))
}

// At start, the RequestAddress and CreateNetwork calls an earlier run
// stopped in, unanswered, reach the IPAM; answered ones do not; the bodies
// stay for a replay.
func TestCutShortRequestAddressMarked(t *testing.T) {
	dir := t.TempDir()
	f := openInflight(t, dir)
	f.begin("/IpamDriver.RequestAddress", []byte(`{"PoolID":"ournet-local/10.1.0.0/24","Options":{"RequestAddressType":"com.docker.network.gateway"}}`))
	f.begin("/IpamDriver.RequestAddress", []byte(`{"PoolID":"ournet-local/10.2.0.0/24"}`)).answered([]byte(`{"Address":"10.2.0.2/24"}`))
	f.begin("/NetworkDriver.CreateNetwork", []byte(`{"NetworkID":"n1","IPv4Data":[{"Pool":"10.3.0.0/24"}],"IPv6Data":[{"Pool":"fd00:3::/64"}]}`))
	f.begin("/NetworkDriver.CreateNetwork", []byte(`{"NetworkID":"n2","IPv4Data":[{"Pool":"10.4.0.0/24"}]}`)).answered([]byte(`{}`))
	var marks gatewayMarks
	var eps endpointMarks
	next := openInflight(t, dir)
	markCutShort(next, &marks, &eps)
	if want := []string{"ournet-local/10.1.0.0/24:com.docker.network.gateway", "network:[10.3.0.0/24 fd00:3::/64]"}; !slices.Equal(marks, want) {
		t.Fatalf("marked %v, want %v", marks, want)
	}
	markCutShort(nil, &marks, &eps) // no directory for calls in flight: nothing
	if bodies, _ := next.takeAll("/IpamDriver.RequestAddress"); len(bodies) != 2 {
		t.Fatalf("%d bodies left for a replay, want 2", len(bodies))
	}
}

// endpointMarks records EndpointsCutShort.
type endpointMarks [][]string

func (e *endpointMarks) EndpointsCutShort(ids []string) { *e = append(*e, ids) }

// At start, the endpoints of the CreateEndpoint calls an earlier run
// stopped in, unanswered, reach the driver, in one call; the body stays
// for the replay.
func TestCutShortCreateEndpointMarked(t *testing.T) {
	dir := t.TempDir()
	f := openInflight(t, dir)
	f.begin("/NetworkDriver.CreateEndpoint", []byte(`{"NetworkID":"n1","EndpointID":"e1","Interface":{"Address":"10.1.0.5/24"}}`))
	f.begin("/NetworkDriver.CreateEndpoint", []byte(`{"NetworkID":"n1","EndpointID":"e2"}`)).answered([]byte(`{}`))
	f.begin("/NetworkDriver.Join", []byte(`{"NetworkID":"n1","EndpointID":"e3"}`))
	var marks endpointMarks
	var ipam gatewayMarks
	next := openInflight(t, dir)
	markCutShort(next, &ipam, &marks)
	if len(marks) != 1 || !slices.Equal(marks[0], []string{"e1"}) || len(ipam) != 0 {
		t.Fatalf("marked %v and in the IPAM %v, want [[e1]] and nothing", marks, ipam)
	}
	markCutShort(nil, &ipam, &marks)
	if len(marks) != 1 {
		t.Fatalf("marked %v with no directory for calls in flight", marks)
	}
	if left := next.unanswered("/NetworkDriver.CreateEndpoint"); len(left) != 1 || !strings.Contains(string(left[0]), `"e1"`) {
		t.Fatalf("kept for the replay: %q", left)
	}
}

// createRec records CreateEndpoint calls.
type createRec struct {
	stubDriver
	created *[]string
}

func (d createRec) CreateEndpoint(r *network.CreateEndpointRequest) (*network.CreateEndpointResponse, error) {
	*d.created = append(*d.created, r.EndpointID)
	return &network.CreateEndpointResponse{}, nil
}

// A kept call older than dockerd's retries (a CreateEndpoint dockerd gave
// up on in a longer outage) is not the one an empty retry repeats: the
// retry replays the young one beside it, not neither, and a retry with
// only an old one kept is refused, not answered with the old call.
func TestEmptyRetryIgnoresCallsGivenUp(t *testing.T) {
	dir := t.TempDir()
	old := func(id string) {
		name := fmt.Sprintf("%020d-%06d-%s.json", time.Now().Add(-retryWindow-5*time.Second).UnixNano(), 1, "NetworkDriver.CreateEndpoint")
		if err := os.WriteFile(filepath.Join(dir, name), []byte(`{"NetworkID":"n1","EndpointID":"`+id+`"}`), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	old("e-old")
	_ = openInflight(t, dir).begin("/NetworkDriver.CreateEndpoint", []byte(`{"NetworkID":"n1","EndpointID":"e-young"}`))
	restartInflight(t, dir)
	var created []string
	mux := newMux(createRec{created: &created}, stubIPAM{}, nil)
	if code, out := call(t, mux, "/NetworkDriver.CreateEndpoint", ""); code != 200 || !slices.Equal(created, []string{"e-young"}) {
		t.Fatalf("the retry = %d %v, created %v, want e-young replayed", code, out, created)
	}
	old("e-old2")
	restartInflight(t, dir)
	if code, out := call(t, mux, "/NetworkDriver.CreateEndpoint", ""); code != 500 || len(created) != 1 {
		t.Fatalf("a retry with only a given-up call kept = %d %v, created %v", code, out, created)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("files left in %s: %v", dir, entries)
	}
}

// A RequestAddress the dead run saved but never answered, replayed for
// dockerd's empty retry, gets the address the dead run saved (the
// gateway stays the first address), not a second one; a new call gets
// the next. The allocation knows the call by its kept file's name.
func TestReplayedRequestAddressGetsTheSavedAddress(t *testing.T) {
	a := newAllocator(t)
	p, err := a.RequestPool(&ipamapi.RequestPoolRequest{Pool: "198.18.61.0/24"})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	before := openInflight(t, dir)
	body := `{"PoolID":"` + p.PoolID + `","Options":{"RequestAddressType":"com.docker.network.gateway"}}`
	c := before.begin("/IpamDriver.RequestAddress", []byte(body))
	// The dead run's work: saved, then killed before its reply was kept.
	if _, err := a.RequestAddressIn(c.name(), &ipamapi.RequestAddressRequest{PoolID: p.PoolID, Options: map[string]string{"RequestAddressType": "com.docker.network.gateway"}}); err != nil {
		t.Fatal(err)
	}

	restartInflight(t, dir)
	mux := newMux(stubDriver{}, a, nil)
	if code, out := call(t, mux, "/IpamDriver.RequestAddress", ""); code != 200 || out["Address"] != "198.18.61.1/24" {
		t.Fatalf("the empty retry = %d %v, want the saved gateway 198.18.61.1/24", code, out)
	}
	if code, out := call(t, mux, "/IpamDriver.RequestAddress", `{"PoolID":"`+p.PoolID+`"}`); code != 200 || out["Address"] != "198.18.61.2/24" {
		t.Fatalf("a new RequestAddress = %d %v, want 198.18.61.2/24", code, out)
	}
}

// newAllocator is ournet's IPAM over a state file of its own.
func newAllocator(t *testing.T) *ipam.Allocator {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	a, err := ipam.New(ipam.Config{}, st)
	if err != nil {
		t.Fatal(err)
	}
	return a
}
