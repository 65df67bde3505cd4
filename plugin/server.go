package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	ipamapi "github.com/docker/go-plugins-helpers/ipam"
	"github.com/docker/go-plugins-helpers/network"
	log "github.com/sirupsen/logrus"

	"github.com/ournet/ournet/driver"
	"github.com/ournet/ournet/internal/crash"
)

const contentType = "application/vnd.docker.plugins.v1.1+json"

// errorBody carries a failure in both spellings: the network API reads Err,
// the IPAM API reads Error on a 200 reply. We also fail with a 500 so that
// either one counts it as an error whatever engine version reads it.
type errorBody struct {
	Err   string
	Error string `json:",omitempty"`
}

// route registers one typed endpoint: decode Req, call fn, encode Res.
func route[Req any, Res any](mux *http.ServeMux, path string, fn func(*Req) (Res, error)) {
	routeAfter(mux, path, fn, nil, nil)
}

// routeAfter is route with answered, called once a successful reply has
// been flushed to the caller's socket (from then on dockerd has it, even
// if the plugin dies at once), and sweep, called after an empty retry of a
// delete (see replayDeletes).
func routeAfter[Req any, Res any](mux *http.ServeMux, path string, fn func(*Req) (Res, error), answered func(*Req), sweep func()) {
	// A call the dying plugin never read: dockerd has sent its body and
	// will retry it empty (see replayDeletes' sweep).
	unread := "before-read:" + strings.TrimPrefix(path, "/")
	mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		crash.Point(unread)
		body, err := io.ReadAll(r.Body)
		if err != nil {
			writeJSON(w, http.StatusBadRequest, errorBody{Err: "ournet: bad request: " + err.Error()})
			return
		}
		replayOf := "" // the kept call this one replays
		if len(bytes.TrimSpace(body)) == 0 && !emptyOK[path] {
			// dockerd retries a call whose connection broke (the plugin
			// died) with the body already consumed: an empty request.
			// The call the dead plugin was handling is replayed instead,
			// or, if it had done its work, its reply sent again.
			if deleteKind[path] {
				replayDeletes(w, path, fn, sweep)
				return
			}
			if crash.Refuse("no-replay:" + strings.TrimPrefix(path, "/")) {
				writeFailure(w, emptyRetry) // as if dockerd had given up
				return
			}
			var reply []byte
			if body, reply, replayOf = replays.take(path); body == nil {
				writeFailure(w, emptyRetry)
				return
			}
			if reply != nil {
				log.WithField("call", path).Info("answering again a call the plugin had done when it stopped (the engine retried it with an empty body)")
				w.Header().Set("Content-Type", contentType)
				w.WriteHeader(http.StatusOK)
				_, _ = w.Write(reply)
				req := new(Req)
				if err := http.NewResponseController(w).Flush(); err == nil && answered != nil && json.Unmarshal(body, req) == nil {
					answered(req)
				}
				return
			}
			log.WithField("call", path).Info("replaying a call the plugin was handling when it stopped (the engine retried it with an empty body)")
		}
		req := new(Req)
		if len(bytes.TrimSpace(body)) > 0 {
			if err := json.Unmarshal(body, req); err != nil {
				writeJSON(w, http.StatusBadRequest, errorBody{Err: "ournet: bad request: " + err.Error()})
				return
			}
		}
		c := replays.begin(path, body, replayOf)
		defer c.done()
		if name := c.name(); name != "" {
			calls.Store(req, name)
			defer calls.Delete(req)
		}
		res, err := fn(req)
		fields := log.Fields{"call": path, "took": time.Since(start).Round(time.Microsecond)}
		if err != nil {
			log.WithFields(fields).WithError(err).Warn("call failed")
			writeFailure(w, userError(err))
			return
		}
		log.WithFields(fields).Debug("call done")
		raw, err := json.Marshal(res)
		if err != nil {
			writeJSON(w, http.StatusInternalServerError, errorBody{Err: "ournet: encoding the reply: " + err.Error()})
			return
		}
		c.answered(raw)
		w.Header().Set("Content-Type", contentType)
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(append(raw, '\n'))
		// Answered only once dockerd's socket has the reply: a failed
		// flush means dockerd may never have it.
		if err := http.NewResponseController(w).Flush(); err == nil && answered != nil {
			answered(req)
		}
	})
}

// replays keeps the calls in flight (inflight.go); without a directory for
// them (unit tests) nothing is kept.
var replays = &inflightSet{}

// inflightSet is an optional *inflight.
type inflightSet struct{ f *inflight }

// begin keeps a call's body; a replay of a kept call keeps its name.
func (s *inflightSet) begin(path string, body []byte, replayOf string) *inflightCall {
	if s.f == nil || emptyOK[path] {
		return nil
	}
	if replayOf != "" {
		return s.f.beginAs(replayOf, body)
	}
	return s.f.begin(path, body)
}

// calls maps a request being handled to its call's name (inflightCall.name).
var calls sync.Map

// callOf is the name of the call req is handled in, "" for none.
func callOf(req any) string {
	name, _ := calls.Load(req)
	s, _ := name.(string)
	return s
}

func (s *inflightSet) takeAll(path string) ([][]byte, bool) {
	if s.f == nil {
		return nil, false
	}
	return s.f.takeAll(path)
}

func (s *inflightSet) take(path string) (body, reply []byte, name string) {
	if s.f == nil {
		return nil, nil, ""
	}
	return s.f.take(path)
}

// deleteKind lists the calls that may be done again in any order: a
// retry of one of them with an empty body replays every one cut short.
// dockerd forgets what it deletes even when the call fails, so a delete
// not replayed would leave a network or endpoint behind in ournet.
var deleteKind = map[string]bool{
	"/NetworkDriver.DeleteNetwork": true, "/NetworkDriver.DeleteEndpoint": true, "/NetworkDriver.Leave": true,
	"/NetworkDriver.RevokeExternalConnectivity": true, "/IpamDriver.ReleaseAddress": true, "/IpamDriver.ReleasePool": true,
}

// replayDeletes answers an empty retry of a delete: every kept delete of
// that kind is done again, then sweep (if any) does what no kept body
// says: the retried call may be one the plugin never read.
func replayDeletes[Req any, Res any](w http.ResponseWriter, path string, fn func(*Req) (Res, error), sweep func()) {
	bodies, done := replays.takeAll(path)
	if len(bodies) == 0 && !done && sweep == nil {
		writeFailure(w, emptyRetry)
		return
	}
	var first error
	for _, b := range bodies {
		req := new(Req)
		if err := json.Unmarshal(b, req); err != nil {
			continue
		}
		c := replays.begin(path, b, "")
		_, err := fn(req)
		c.done()
		if err != nil && first == nil {
			first = err
		}
	}
	if sweep != nil {
		sweep()
	}
	log.WithFields(log.Fields{"call": path, "replayed": len(bodies)}).Info("replayed the deletes the plugin was doing when it stopped (the engine retried them with empty bodies)")
	if first != nil {
		writeFailure(w, userError(first))
		return
	}
	writeJSON(w, http.StatusOK, empty{})
}

// userError is what the user's docker command shows of err: every layer
// wraps what it was doing around the cause, and the message carries one
// prefix, "ournet: ", whichever layer it came from.
func userError(err error) string {
	msg := err.Error()
	if !strings.HasPrefix(msg, "ournet: ") {
		msg = "ournet: " + msg
	}
	return msg
}

// emptyRetry answers an empty retry that cannot be replayed.
const emptyRetry = "ournet: the engine sent an empty request, as it does when it retries a call after the plugin restarted; run the command again"

// writeFailure answers a failed call: HTTP 500 with the message in both
// Err (NetworkDriver) and Error (IpamDriver), so that every engine sees a
// failure and shows it.
func writeFailure(w http.ResponseWriter, msg string) {
	writeJSON(w, http.StatusInternalServerError, errorBody{Err: msg, Error: msg})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", contentType)
	w.WriteHeader(status)
	if err := json.NewEncoder(w).Encode(v); err != nil {
		log.WithError(err).Debug("writing reply")
	}
}

type empty struct{}

// gwAllocChecker is the driver's side of engine 28's GwAllocCheck.
type gwAllocChecker interface {
	Capabilities() *driver.CapabilitiesResponse
	GwAllocCheck(*driver.GwAllocCheckRequest) (*driver.GwAllocCheckResponse, error)
}

// emptyOK lists the calls that have no request body.
var emptyOK = map[string]bool{
	"/NetworkDriver.GetCapabilities": true, "/IpamDriver.GetCapabilities": true,
	"/IpamDriver.GetDefaultAddressSpaces": true, "/ournet.Status": true,
}

// noErr adapts a method that only returns an error.
func noErr[Req any](fn func(*Req) error) func(*Req) (empty, error) {
	return func(r *Req) (empty, error) { return empty{}, fn(r) }
}

// newMux serves the NetworkDriver and the IpamDriver APIs on one handler:
// a managed plugin has one socket, and go-plugins-helpers' handlers each own
// a private mux with its own /Plugin.Activate.
func newMux(d network.Driver, a ipamapi.Ipam, extra func(*http.ServeMux)) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("/Plugin.Activate", activate)

	if c, ok := d.(gwAllocChecker); ok {
		// Engine 28+ asks before reserving gateway addresses; older ones
		// ignore the field.
		route(mux, "/NetworkDriver.GetCapabilities", func(*empty) (*driver.CapabilitiesResponse, error) { return c.Capabilities(), nil })
		route(mux, "/NetworkDriver.GwAllocCheck", c.GwAllocCheck)
	} else {
		route(mux, "/NetworkDriver.GetCapabilities", func(*empty) (*network.CapabilitiesResponse, error) { return d.GetCapabilities() })
	}
	var createAnswered func(*network.CreateNetworkRequest)
	if a, ok := d.(interface{ CreateAnswered(string) }); ok {
		createAnswered = func(r *network.CreateNetworkRequest) { a.CreateAnswered(r.NetworkID) }
	}
	routeAfter(mux, "/NetworkDriver.CreateNetwork", noErr(d.CreateNetwork), createAnswered, nil)
	route(mux, "/NetworkDriver.DeleteNetwork", noErr(d.DeleteNetwork))
	route(mux, "/NetworkDriver.AllocateNetwork", d.AllocateNetwork)
	route(mux, "/NetworkDriver.FreeNetwork", noErr(d.FreeNetwork))
	route(mux, "/NetworkDriver.CreateEndpoint", d.CreateEndpoint)
	var sweepLeft func()
	if s, ok := d.(interface{ DeleteLeftEndpoints() }); ok {
		sweepLeft = s.DeleteLeftEndpoints
	}
	routeAfter(mux, "/NetworkDriver.DeleteEndpoint", noErr(d.DeleteEndpoint), nil, sweepLeft)
	route(mux, "/NetworkDriver.EndpointOperInfo", d.EndpointInfo)
	route(mux, "/NetworkDriver.Join", d.Join)
	route(mux, "/NetworkDriver.Leave", noErr(d.Leave))
	route(mux, "/NetworkDriver.DiscoverNew", noErr(d.DiscoverNew))
	route(mux, "/NetworkDriver.DiscoverDelete", noErr(d.DiscoverDelete))
	route(mux, "/NetworkDriver.ProgramExternalConnectivity", noErr(d.ProgramExternalConnectivity))
	route(mux, "/NetworkDriver.RevokeExternalConnectivity", noErr(d.RevokeExternalConnectivity))

	route(mux, "/IpamDriver.GetCapabilities", func(*empty) (*ipamapi.CapabilitiesResponse, error) { return a.GetCapabilities() })
	route(mux, "/IpamDriver.GetDefaultAddressSpaces", func(*empty) (*ipamapi.AddressSpacesResponse, error) { return a.GetDefaultAddressSpaces() })
	route(mux, "/IpamDriver.RequestPool", a.RequestPool)
	var sweepPools func()
	if s, ok := a.(interface{ SweepOrphans() int }); ok {
		sweepPools = func() { s.SweepOrphans() }
	}
	routeAfter(mux, "/IpamDriver.ReleasePool", noErr(a.ReleasePool), nil, sweepPools)
	if ac, ok := a.(interface {
		RequestAddressIn(call string, req *ipamapi.RequestAddressRequest) (*ipamapi.RequestAddressResponse, error)
	}); ok {
		// A replay of a call whose address was saved gets that address.
		route(mux, "/IpamDriver.RequestAddress", func(req *ipamapi.RequestAddressRequest) (*ipamapi.RequestAddressResponse, error) {
			return ac.RequestAddressIn(callOf(req), req)
		})
	} else {
		route(mux, "/IpamDriver.RequestAddress", a.RequestAddress)
	}
	var sweepAddrs func()
	if s, ok := a.(interface{ SweepAddresses() int }); ok {
		sweepAddrs = func() { s.SweepAddresses() }
	}
	routeAfter(mux, "/IpamDriver.ReleaseAddress", noErr(a.ReleaseAddress), nil, sweepAddrs)
	if extra != nil {
		extra(mux)
	}
	return mux
}

// activate answers /Plugin.Activate: both APIs on the one socket.
func activate(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string][]string{"Implements": {"NetworkDriver", "IpamDriver"}})
}

// listenUnix listens on path, replacing a stale socket left by a crash.
func listenUnix(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("removing stale socket %s: %w", path, err)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", path, err)
	}
	return l, nil
}
