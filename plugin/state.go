package main

import (
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	ipamapi "github.com/docker/go-plugins-helpers/ipam"
	"github.com/docker/go-plugins-helpers/network"
	log "github.com/sirupsen/logrus"

	"github.com/ournet/ournet/driver"
	"github.com/ournet/ournet/internal/store"
	"github.com/ournet/ournet/ipam"
)

// How a damaged state file is recovered (STATE_RECOVER), issue #16. Unset,
// ournet never guesses: a state file that is empty, unreadable, or missing
// while the kernel holds ournet's bridges and rules is not a fresh start.
const (
	recoverNone   = ""
	recoverBackup = "backup" // replace it with the newest good backup
	recoverFresh  = "fresh"  // start empty, removing ournet's objects from the kernel
)

// kernelHolds reports whether the host has links or rules marked as
// ournet's.
type kernelHolds func() bool

// stateVerdict is what startup decided about the state file.
type stateVerdict struct {
	// Problem is set when ournet must run without state: every call then
	// fails with it and nothing in the kernel is touched.
	Problem string
	// Fresh: STATE_RECOVER=fresh was applied; Restore must remove every
	// ournet object it does not know.
	Fresh bool
	// Recovered names the backup the state was restored from.
	Recovered string
}

// checkState inspects the state file before bbolt opens it for writing and
// applies STATE_RECOVER where the file needs it.
func checkState(path, recover string, holds kernelHolds) stateVerdict {
	h := store.Inspect(path)
	// STATE_RECOVER acts once: the setting stays set after it was used, and
	// must not wipe a state file damaged months later without asking.
	used := path + ".recover-used"
	if recover == recoverNone {
		os.Remove(used)
	}
	if h.Usable() && !(h.Missing && holds()) {
		if recover != recoverNone {
			log.WithField("STATE_RECOVER", recover).Warn("the state file is good, so STATE_RECOVER does nothing; unset it (docker plugin set <plugin> STATE_RECOVER=)")
		}
		return stateVerdict{}
	}
	backups := store.Backups(path)
	if recover != recoverNone {
		if _, err := os.Stat(used); err == nil {
			v := stateVerdict{Problem: damagedMessage(path, h, backups, recoverNone)}
			v.Problem += fmt.Sprintf(" (STATE_RECOVER=%s is still set from an earlier recovery and acts only once: set it to empty, enable and disable the plugin, then set it again.)", recover)
			return v
		}
	}
	switch recover {
	case recoverBackup:
		if len(backups) == 0 {
			break
		}
		aside, err := store.SetAside(path)
		if err == nil {
			err = store.RestoreBackup(backups[0], path)
		}
		if err != nil {
			return stateVerdict{Problem: fmt.Sprintf("ournet: the state file %s %s, and restoring %s failed: %v", path, h.Problem(), backups[0], err)}
		}
		_ = os.WriteFile(used, []byte(recover+"\n"), 0o600)
		log.WithFields(log.Fields{"state": path, "from": backups[0], "damaged": aside}).
			Warn("state file " + h.Problem() + ": restored the newest good backup (STATE_RECOVER=backup); objects newer than it are left alone, see `ournet status`")
		return stateVerdict{Recovered: backups[0]}
	case recoverFresh:
		aside, err := store.SetAside(path)
		if err != nil {
			return stateVerdict{Problem: fmt.Sprintf("ournet: the state file %s %s, and moving it aside failed: %v", path, h.Problem(), err)}
		}
		_ = os.WriteFile(used, []byte(recover+"\n"), 0o600)
		log.WithFields(log.Fields{"state": path, "damaged": aside}).
			Warn("state file " + h.Problem() + ": starting from an empty state (STATE_RECOVER=fresh); removing ournet's bridges and rules")
		return stateVerdict{Fresh: true}
	}
	return stateVerdict{Problem: damagedMessage(path, h, backups, recover)}
}

func damagedMessage(path string, h store.Health, backups []string, recover string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "ournet: the state file %s %s", path, h.Problem())
	if h.Missing {
		b.WriteString(" while this host has ournet's bridges and rules")
	}
	b.WriteString("; ournet has left every bridge, veth and rule alone, so running containers keep their network, but it can change nothing until the state is recovered. ")
	steps := "docker plugin disable ournet/ournet && docker plugin set ournet/ournet STATE_RECOVER=%s && docker plugin enable ournet/ournet"
	if len(backups) > 0 {
		when := ""
		if fi, err := os.Stat(backups[0]); err == nil {
			when = " (taken " + fi.ModTime().UTC().Format(time.RFC3339) + ")"
		}
		fmt.Fprintf(&b, "To restore the newest good copy, %s%s: "+steps+". ", backups[0], when, recoverBackup)
		if recover == recoverBackup {
			b.WriteString("(STATE_RECOVER=backup is set, but no backup was usable at start.) ")
		}
	} else {
		b.WriteString("No backup of it exists. ")
	}
	fmt.Fprintf(&b, "To start from an empty state instead (ournet's networks are then removed from the kernel and must be created again): "+steps+". See README.md, State and restarts.", recoverFresh)
	return b.String()
}

// damagedMux answers what the engine needs to keep the plugin registered
// (activation, capabilities, address spaces) and fails every other call
// with problem, so that `docker network create`, `docker run` and the rest
// show it. It touches nothing in the kernel.
func damagedMux(problem string) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("/Plugin.Activate", activate)
	route(mux, "/NetworkDriver.GetCapabilities", func(*empty) (*network.CapabilitiesResponse, error) {
		return &network.CapabilitiesResponse{Scope: network.LocalScope, ConnectivityScope: network.LocalScope}, nil
	})
	route(mux, "/IpamDriver.GetCapabilities", func(*empty) (*ipam.Capabilities, error) { return &ipam.Capabilities{}, nil })
	route(mux, "/IpamDriver.GetDefaultAddressSpaces", func(*empty) (*ipamapi.AddressSpacesResponse, error) {
		return &ipamapi.AddressSpacesResponse{LocalDefaultAddressSpace: ipam.LocalAddressSpace, GlobalDefaultAddressSpace: ipam.GlobalAddressSpace}, nil
	})
	route(mux, "/ournet.Status", func(*empty) (*statusReport, error) {
		return &statusReport{Networks: []driver.NetworkStatus{}, State: problem}, nil
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		log.WithField("call", r.URL.Path).Debug("refused: no usable state")
		writeFailure(w, problem)
	})
	return mux
}
