// Command ournet is the plugin process: it serves Docker's NetworkDriver and
// IpamDriver APIs on one unix socket.
package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	log "github.com/sirupsen/logrus"

	"github.com/ournet/ournet/driver"
	"github.com/ournet/ournet/internal/antispoof"
	"github.com/ournet/ournet/internal/cluster"
	"github.com/ournet/ournet/internal/crash"
	"github.com/ournet/ournet/internal/firewall"
	"github.com/ournet/ournet/internal/iptables"
	"github.com/ournet/ournet/internal/netdev"
	"github.com/ournet/ournet/internal/nft"
	"github.com/ournet/ournet/internal/portmap"
	"github.com/ournet/ournet/internal/store"
	"github.com/ournet/ournet/internal/sysctl"
	"github.com/ournet/ournet/internal/watch"
	"github.com/ournet/ournet/ipam"
)

// settings are read from the environment, which `docker plugin set` controls.
type settings struct {
	LogLevel     log.Level
	Socket       string   // the managed plugin's own socket
	AliasSockets []string // more sockets, e.g. in the host's /run/docker/plugins
	StatePath    string
	// ReconcileEvery is how often drift (flushed rules, a deleted bridge)
	// is looked for and repaired where the kernel does not announce rule
	// changes (iptables-legacy, or RepairOnEvents off), and how often
	// writes the state file could not take are tried again.
	ReconcileEvery time.Duration
	// RecheckEvery is, with the kernel's announcements, how often the
	// full comparison runs all the same: the safety net.
	RecheckEvery time.Duration
	// RepairOnEvents: repair when the kernel announces a change of rules
	// or links (default), rather than only every ReconcileEvery.
	RepairOnEvents bool
	DefaultPools   []ipam.DefaultPool
	PoolsV6        []ipam.DefaultPool
	// StateRecover says how to recover a damaged state file: "" (never
	// guess: refuse every call, touch nothing), backup or fresh.
	StateRecover string
}

func env(key, def string) string {
	if v, ok := os.LookupEnv(key); ok && v != "" {
		return v
	}
	return def
}

func loadSettings() (settings, error) {
	var s settings
	var err error
	if s.LogLevel, err = log.ParseLevel(env("LOG_LEVEL", "info")); err != nil {
		return s, fmt.Errorf("LOG_LEVEL=%q is not valid; use one of debug, info, warn, error", os.Getenv("LOG_LEVEL"))
	}
	s.Socket = env("OURNET_SOCKET", "/run/docker/plugins/ournet.sock")
	for _, p := range strings.Split(env("OURNET_ALIAS_SOCKETS", ""), ",") {
		if p = strings.TrimSpace(p); p != "" {
			s.AliasSockets = append(s.AliasSockets, p)
		}
	}
	s.StatePath = env("OURNET_STATE", "/var/lib/ournet/state.db")
	if s.ReconcileEvery, err = time.ParseDuration(env("RECONCILE_INTERVAL", "5s")); err != nil || s.ReconcileEvery < 100*time.Millisecond {
		return s, fmt.Errorf("RECONCILE_INTERVAL=%q is not valid; give a duration of at least 100ms such as 5s", os.Getenv("RECONCILE_INTERVAL"))
	}
	if s.RecheckEvery, err = time.ParseDuration(env("RECHECK_INTERVAL", "10m")); err != nil || s.RecheckEvery < time.Second {
		return s, fmt.Errorf("RECHECK_INTERVAL=%q is not valid; give a duration of at least 1s such as 10m", os.Getenv("RECHECK_INTERVAL"))
	}
	switch v := env("REPAIR_ON_EVENTS", "true"); v {
	case "true", "false":
		s.RepairOnEvents = v == "true"
	default:
		return s, fmt.Errorf("REPAIR_ON_EVENTS=%q is not valid; use true or false", v)
	}
	switch s.StateRecover = env("STATE_RECOVER", ""); s.StateRecover {
	case recoverNone, recoverBackup, recoverFresh:
	default:
		return s, fmt.Errorf("STATE_RECOVER=%q is not valid; leave it empty, or use backup or fresh (see README.md, State and restarts)", s.StateRecover)
	}
	s.DefaultPools = ipam.DefaultV4Pools()
	if v := env("DEFAULT_POOLS", ""); v != "" {
		if s.DefaultPools, err = ipam.ParseDefaultPools(v); err != nil {
			return s, fmt.Errorf("DEFAULT_POOLS: %w", err)
		}
	}
	s.PoolsV6 = ipam.DefaultV6Pools()
	if v := env("DEFAULT_POOLS_V6", ""); v != "" {
		if s.PoolsV6, err = ipam.ParseDefaultPools(v); err != nil {
			return s, fmt.Errorf("DEFAULT_POOLS_V6: %w", err)
		}
	}
	return s, nil
}

// sysctlSetter adapts package sysctl to driver.Sysctls.
type sysctlSetter struct{}

func (sysctlSetter) Set(key, value string) error { return sysctl.Set(key, value) }

func main() {
	if len(os.Args) > 1 && os.Args[1] == "status" {
		os.Exit(runStatus(os.Args[2:]))
	}
	if len(os.Args) > 1 && os.Args[1] == "retire-host" {
		os.Exit(runRetire(os.Args[2:]))
	}
	log.SetFormatter(&log.TextFormatter{FullTimestamp: true, DisableColors: true})
	if err := run(); err != nil {
		log.WithError(err).Error("ournet stopped")
		os.Exit(1)
	}
}

func run() error {
	cfg, err := loadSettings()
	if err != nil {
		return err
	}
	log.SetLevel(cfg.LogLevel)

	links, err := netdev.New()
	if err != nil {
		return err
	}
	defer links.Close()
	// The host's routes, kept current from the kernel's notifications:
	// every network create checks its subnet against them.
	routesStop := make(chan struct{})
	defer close(routesStop)
	if err := links.WatchRoutes(routesStop); err != nil {
		log.WithError(err).Warn("watching routes (each check lists them instead)")
	}
	families := []iptables.Family{iptables.IPv4, iptables.IPv6}
	runner, err := iptables.NewExec(families...)
	if err != nil {
		return fmt.Errorf("finding iptables: %w", err)
	}
	fw := firewall.New(runner, nft.Dialer(), families...)

	// The state file is checked before anything trusts it: an empty,
	// unreadable or (with ournet's objects in the kernel) missing one is
	// not a fresh start.
	verdict := checkState(cfg.StatePath, cfg.StateRecover, func() bool {
		owned, _ := links.Owned()
		nets, _ := fw.OwnedNetworks()
		return len(owned) > 0 || len(nets) > 0
	})
	if verdict.Problem != "" {
		return serveDamaged(cfg, verdict.Problem)
	}
	st, err := store.Open(cfg.StatePath)
	if err != nil {
		return err
	}
	crash.Setup(filepath.Dir(cfg.StatePath))
	defer st.Close()
	if f, err := newInflight(filepath.Join(filepath.Dir(cfg.StatePath), "inflight")); err != nil {
		log.WithError(err).Warn("cannot keep calls in flight for a replay after a crash")
	} else {
		replays.f = f
	}
	if err := st.EnsureReserve(); err != nil {
		log.WithError(err).Warn("state store: cannot reserve space for deletes on a full disk (tried again later)")
	}

	alloc, err := ipam.New(ipam.Config{
		DefaultPools:   cfg.DefaultPools,
		DefaultPoolsV6: cfg.PoolsV6,
		HostNetworks:   links.HostPrefixes,
		HostRoutes:     links.HostRoutes(),
	}, st)
	if err != nil {
		return fmt.Errorf("loading address allocations: %w", err)
	}
	// Anti-spoofing in nftables' bridge family: works whatever iptables
	// backend the host uses. Published ports: host ports held by sockets
	// here, DNAT rules (issue #5).
	spoof := antispoof.New()
	ports := portmap.New(portmap.Config{Runner: runner, Families: families})
	drv := driver.New(driver.Deps{Links: links, Firewall: fw, Sysctls: sysctlSetter{}, Store: st, AntiSpoof: spoof, Ports: ports, Pools: alloc})
	alloc.SetReclaim(drv.ReclaimUnlearnt)
	markCutShort(replays.f, alloc, drv)
	if verdict.Fresh {
		drv.RemoveUnknownAtRestore()
	}
	if verdict.Recovered != "" {
		drv.KeepUnknownAtRestore()
	}
	// Cluster networks (issue #13), only with ETCD_ENDPOINTS set.
	var cs *cluster.Store
	if cc := loadClusterSettings(); len(cc.Endpoints) > 0 {
		if cs, err = setupCluster(cc, st, fw, drv, alloc); err != nil {
			log.WithError(err).Error("cluster store: cluster networks are refused until this is fixed")
			drv.ClusterOff(err.Error())
		} else {
			// Stops renewing the lease, not revoking it: after a restart
			// within the lease, the other hosts never lose this one.
			defer cs.Close()
		}
	}

	// Listen first: dockerd gives a starting plugin only seconds to open its
	// socket, and calls wait inside the driver until the restore is done.
	srv := &http.Server{Handler: newMux(drv, alloc, func(mux *http.ServeMux) {
		statusRoute(drv, alloc)(mux)
		retireRoute(cs)(mux)
	}), ReadHeaderTimeout: 10 * time.Second}
	var listeners []net.Listener
	for _, path := range append([]string{cfg.Socket}, cfg.AliasSockets...) {
		l, err := listenUnix(path)
		if err != nil {
			return err
		}
		listeners = append(listeners, l)
		go func() {
			if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.WithError(err).WithField("socket", path).Error("serving")
			}
		}()
		log.WithField("socket", path).Info("listening")
	}

	start := time.Now()
	if err := fw.Setup(); err != nil {
		log.WithError(err).Error("setting up firewall base chains")
	}
	if err := ports.Setup(); err != nil {
		log.WithError(err).Error("setting up the published-port chains")
	}
	if err := drv.Restore(); err != nil {
		log.WithError(err).Error("restoring state (continuing with what could be restored)")
	}
	log.WithField("took", time.Since(start).Round(time.Millisecond)).Info("ready")
	// A good state just loaded: the copy to go back to if the file is ever
	// damaged (kept rotated, the newest three).
	backup(st, drv, alloc)
	stop := make(chan struct{})
	defer close(stop)
	go drv.Watch(watchConfig(cfg, runner, stop), stop, alloc.Flush)
	go drv.RunCluster(stop)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	s := <-sig
	log.WithField("signal", s).Info("shutting down")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(ctx)
	// Alias sockets live in a directory the engine scans; a dead socket
	// there would make `-d ournet` fail with "connection refused" rather
	// than the engine's own clear "plugin not found".
	for _, path := range cfg.AliasSockets {
		_ = os.Remove(path)
	}
	// With no network left (the state of `docker plugin rm`, which refuses
	// while networks use the plugin) ournet takes its base chains and its
	// nftables table with it: uninstalling leaves nothing behind. With
	// networks, everything stays, so containers keep working while the
	// plugin is down.
	backup(st, drv, alloc)
	if drv.Empty() {
		if err := fw.Teardown(); err != nil {
			log.WithError(err).Warn("removing ournet's chains")
		}
		if err := spoof.Teardown(); err != nil {
			log.WithError(err).Warn("removing ournet's nftables table")
		}
		log.Info("no network left: removed ournet's chains and tables")
	} else if err := spoof.Settle(); err != nil { // removals still queued
		log.WithError(err).Warn("removing the anti-spoofing checks of deleted endpoints (the next start does)")
	}
	return nil
}

// serveDamaged runs the plugin without its state: it listens (so the
// engine keeps it enabled and shows the problem to the user), fails every
// call with problem, logs it once, and touches nothing in the kernel, so
// running containers keep their network.
func serveDamaged(cfg settings, problem string) error {
	log.WithField("state", cfg.StatePath).Error(problem)
	srv := &http.Server{Handler: damagedMux(problem), ReadHeaderTimeout: 10 * time.Second}
	for _, path := range append([]string{cfg.Socket}, cfg.AliasSockets...) {
		l, err := listenUnix(path)
		if err != nil {
			return err
		}
		go func() { _ = srv.Serve(l) }()
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(ctx)
	for _, path := range cfg.AliasSockets {
		_ = os.Remove(path)
	}
	return nil
}

// backup copies a state that holds something; an empty one would only push
// the good copies out of the rotation.
func backup(st *store.Store, drv *driver.Driver, alloc *ipam.Allocator) {
	if drv.Empty() && len(alloc.Pools()) == 0 {
		return
	}
	if b, err := st.Backup(); err != nil {
		log.WithError(err).Warn("backing up the state file")
	} else {
		log.WithField("backup", b).Debug("state file backed up")
	}
}

// watchConfig is what drives the repair rounds: the kernel's
// announcements of rule and link changes, debounced (a flush of every
// table is many commits), with a full comparison every RecheckEvery; or,
// without them (iptables-legacy writes announce nothing, or
// REPAIR_ON_EVENTS=false), a full comparison every ReconcileEvery.
func watchConfig(cfg settings, run *iptables.Exec, stop <-chan struct{}) driver.WatchConfig {
	wc := driver.WatchConfig{Every: cfg.ReconcileEvery, Recheck: cfg.RecheckEvery}
	if !cfg.RepairOnEvents {
		log.WithField("every", cfg.ReconcileEvery).Info("drift repair: polling (REPAIR_ON_EVENTS=false)")
		return wc
	}
	if !run.NFTables() {
		log.WithField("every", cfg.ReconcileEvery).Info("drift repair: polling (iptables-legacy announces no change)")
	} else if rules, err := watch.Rules(stop, run.Mine); err != nil {
		log.WithError(err).WithField("every", cfg.ReconcileEvery).Warn("drift repair: polling (no nftables notifications)")
	} else {
		wc.Rules = watch.Debounce(stop, rules, debounceQuiet, debounceMax)
	}
	if links, err := watch.Links(stop, netdev.Matters); err != nil {
		log.WithError(err).Warn("drift repair: link changes are not watched")
	} else {
		wc.Links, wc.LinkNames = watch.Debounce(stop, links.C, debounceQuiet, debounceMax), links.Take
	}
	return wc
}

// A burst of changes is repaired once it has been quiet for debounceQuiet,
// or debounceMax after it began.
const debounceQuiet, debounceMax = 100 * time.Millisecond, 500 * time.Millisecond
