package main

// `ournet retire-host` (scripts/ournet-retire-host): the operator's word
// that a host is gone for good, so that its address blocks, memberships
// and endpoints are freed (issue #13). Until then a host that stopped
// renewing its lease only leaves the other hosts' kernels: its addresses
// stay its own, in case it comes back.

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"time"

	"github.com/ournet/ournet/internal/cluster"
)

type retireRequest struct {
	Host string // "": list the hosts
}

type retireReply struct {
	This  string
	Hosts map[string]bool // host -> alive
}

func retireRoute(cs *cluster.Store) func(*http.ServeMux) {
	return func(mux *http.ServeMux) {
		route(mux, "/ournet.RetireHost", func(req *retireRequest) (*retireReply, error) {
			if cs == nil {
				return nil, fmt.Errorf("ournet: no cluster store is set up on this host (ETCD_ENDPOINTS)")
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			hosts, err := cs.KnownHosts(ctx)
			if err != nil {
				return nil, err
			}
			if req.Host != "" {
				switch _, known := hosts[req.Host]; {
				case req.Host == cs.Host():
					return nil, fmt.Errorf("ournet: %s is this host; retire a host from another one", req.Host)
				case !known:
					return nil, fmt.Errorf("ournet: the cluster store knows no host %s", req.Host)
				}
				// It refuses a host that is alive, or comes back meanwhile.
				if err := cs.RetireHost(ctx, req.Host); err != nil {
					return nil, err
				}
				delete(hosts, req.Host)
			}
			return &retireReply{This: cs.Host(), Hosts: hosts}, nil
		})
	}
}

// runRetire is `ournet retire-host [HOST]`: without HOST it lists the
// hosts the cluster store knows, alive or gone.
func runRetire(args []string) int {
	fs := flag.NewFlagSet("retire-host", flag.ExitOnError)
	socket := fs.String("socket", "/run/docker/plugins/ournet.sock", "the plugin's socket")
	_ = fs.Parse(args)
	client := socketClient(*socket, 15*time.Second)
	body, _ := json.Marshal(retireRequest{Host: fs.Arg(0)})
	resp, err := client.Post("http://ournet/ournet.RetireHost", contentType, bytes.NewReader(body))
	if err != nil {
		fmt.Fprintf(os.Stderr, "ournet retire-host: cannot reach the plugin at %s: %v\n", *socket, err)
		return 2
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		var e errorBody
		_ = json.Unmarshal(raw, &e)
		fmt.Fprintf(os.Stderr, "%s\n", e.Err)
		return 1
	}
	var rep retireReply
	if err := json.Unmarshal(raw, &rep); err != nil {
		fmt.Fprintf(os.Stderr, "ournet retire-host: bad reply: %v\n", err)
		return 2
	}
	if fs.Arg(0) != "" {
		fmt.Printf("retired host %s: its address blocks, memberships and endpoints are free\n", fs.Arg(0))
		return 0
	}
	ids := make([]string, 0, len(rep.Hosts))
	for id := range rep.Hosts {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		state := "gone (holds addresses until retired)"
		if rep.Hosts[id] {
			state = "alive"
		}
		if id == rep.This {
			state += ", this host"
		}
		fmt.Printf("%s  %s\n", id, state)
	}
	return 0
}
