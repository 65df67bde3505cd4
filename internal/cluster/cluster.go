// Package cluster is ournet's cluster store: the state that ournet networks
// spanning several Docker hosts share, kept in etcd (issue #13). It knows
// hosts (each with a lease: its endpoints vanish when it dies), cluster
// network definitions (created once, compared on every other host), their
// VXLAN network identifiers, per-host address blocks claimed by
// compare-and-swap (never handed out twice, not even to a host cut off and
// back), and the endpoints each host holds, which the data path watches.
//
// Every call has a deadline well inside dockerd's 30 s plugin timeout, and
// writes require a leader: a store without quorum fails fast, with an error
// that names it, instead of hanging `docker run`.
//
// Keys, under /ournet/v1/:
//
//	hosts/<host>                         {Advertise, Hostname}      leased
//	networks/<name>/spec                 {Subnets, Options, VNI}
//	networks/<name>/members/<host>       ""
//	networks/<name>/blocks/<prefix>      <host>
//	networks/<name>/endpoints/<address>  {Host, MAC, VTEP}          leased by <host>
//	vni/<vni>                            <name>
package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const prefix = "/ournet/v1/"

// Config says how to reach the store and who this host is.
type Config struct {
	Endpoints []string
	// CA, Cert and Key are PEM files for TLS to etcd; all empty: plain.
	CA, Cert, Key string
	// Host is this host's identity, kept in its local state (two hosts may
	// share a hostname); Advertise the address other hosts reach it at.
	Host      string
	Hostname  string
	Advertise netip.Addr
	// CallTimeout bounds every call (default 5 s); LeaseTTL is how long a
	// host that stops renewing stays alive to the others (default 10 s).
	CallTimeout time.Duration
	LeaseTTL    time.Duration
}

// Store is one host's connection to the cluster store.
type Store struct {
	cfg    Config
	cli    *clientv3.Client
	mu     sync.Mutex
	lease  clientv3.LeaseID
	stop   context.CancelFunc
	closed bool
	// OnRegistered, if set, is called after the host registered (again:
	// its lease was lost): its endpoints must be published again.
	OnRegistered func()
}

// ErrUnavailable wraps every failure to reach the store or to get an
// answer from it in time.
var ErrUnavailable = errors.New("the cluster store cannot be reached or has no quorum")

// Connect opens a client to the store. It does not fail when the store is
// down (calls then fail fast); it fails on a bad configuration.
func Connect(cfg Config) (*Store, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("ournet: ETCD_ENDPOINTS is empty")
	}
	if cfg.Host == "" {
		return nil, errors.New("ournet: the cluster store needs this host's identity")
	}
	if cfg.CallTimeout == 0 {
		cfg.CallTimeout = 5 * time.Second
	}
	if cfg.LeaseTTL == 0 {
		cfg.LeaseTTL = 10 * time.Second
	}
	tlsCfg, err := tlsConfig(cfg)
	if err != nil {
		return nil, err
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   cfg.Endpoints,
		DialTimeout: cfg.CallTimeout,
		// A member that went away silently (a cut link) is noticed within
		// 3 s, and its calls go to the others.
		DialKeepAliveTime:    2 * time.Second,
		DialKeepAliveTimeout: time.Second,
		TLS:                  tlsCfg,
		Logger:               zap.NewNop(),
		AutoSyncInterval:     time.Minute,
	})
	if err != nil {
		return nil, fmt.Errorf("ournet: cluster store (etcd at %s): %w", strings.Join(cfg.Endpoints, ","), err)
	}
	return &Store{cfg: cfg, cli: cli}, nil
}

func tlsConfig(cfg Config) (*tls.Config, error) {
	if cfg.CA == "" && cfg.Cert == "" && cfg.Key == "" {
		return nil, nil
	}
	c := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.CA != "" {
		pem, err := os.ReadFile(cfg.CA)
		if err != nil {
			return nil, fmt.Errorf("ournet: ETCD_CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ournet: ETCD_CA %s holds no PEM certificate", cfg.CA)
		}
		c.RootCAs = pool
	}
	if (cfg.Cert == "") != (cfg.Key == "") {
		return nil, errors.New("ournet: ETCD_CERT and ETCD_KEY go together; give both or neither")
	}
	if cfg.Cert != "" {
		pair, err := tls.LoadX509KeyPair(cfg.Cert, cfg.Key)
		if err != nil {
			return nil, fmt.Errorf("ournet: ETCD_CERT/ETCD_KEY: %w", err)
		}
		c.Certificates = []tls.Certificate{pair}
	}
	return c, nil
}

// Host is this host's identity in the store.
func (s *Store) Host() string { return s.cfg.Host }

// Advertise is the address other hosts reach this one at.
func (s *Store) Advertise() netip.Addr { return s.cfg.Advertise }

// Lease is this host's lease now (0: not registered).
func (s *Store) Lease() int64 { return int64(s.leaseID()) }

// Close stops renewing this host's lease (the others see it gone when it
// expires) and closes the client.
func (s *Store) Close() error {
	s.mu.Lock()
	s.closed = true
	if s.stop != nil {
		s.stop()
	}
	s.mu.Unlock()
	return s.cli.Close()
}

// call runs fn with the call deadline, and names the store in its error.
//
// Within the deadline fn is tried again (every fn is safe to repeat: its
// writes are compare-and-swap) when the answer is not final: a call cut by
// its connection (the client spreads calls over the members and retries
// only reads; a member that went away silently is noticed by keepalive),
// an attempt that hung (on a member whose leader just went away; each
// attempt has 2 s), and "no leader" for as long as an election takes
// (electionWait). A store without quorum is thus refused in about
// electionWait, well inside dockerd's 30 s.
func (s *Store) call(ctx context.Context, what string, fn func(context.Context) error) error {
	start := time.Now()
	octx, cancel := context.WithTimeout(clientv3.WithRequireLeader(ctx), s.cfg.CallTimeout)
	defer cancel()
	var err error
	for try := 0; ; try++ {
		actx, acancel := context.WithTimeout(octx, attemptTimeout)
		err = fn(actx)
		acancel()
		if err == nil || octx.Err() != nil || try == 8 {
			break
		}
		var user *UserError
		if errors.As(err, &user) {
			return err
		}
		noLeader := strings.Contains(err.Error(), "no leader")
		hung := errors.Is(err, context.DeadlineExceeded) || status.Code(err) == codes.DeadlineExceeded
		if !(lostConnection(err) || hung || noLeader && time.Since(start) < electionWait) {
			break
		}
		select {
		case <-octx.Done():
		case <-time.After(time.Duration(100*(try+1)) * time.Millisecond):
		}
	}
	if err == nil {
		return nil
	}
	var user *UserError
	if errors.As(err, &user) {
		return err
	}
	if octx.Err() != nil || isUnavailable(err) {
		return fmt.Errorf("ournet: %s: cluster store (etcd at %s): %w (%v)", what, strings.Join(s.cfg.Endpoints, ","), ErrUnavailable, err)
	}
	return fmt.Errorf("ournet: %s: cluster store (etcd at %s): %w", what, strings.Join(s.cfg.Endpoints, ","), err)
}

// attemptTimeout bounds one try of a call; electionWait is how long "no
// leader" is waited out (a new leader is elected in about a second after
// one is lost, with etcd's default timings; a store without quorum is
// refused after it).
const (
	attemptTimeout = 2 * time.Second
	electionWait   = 2500 * time.Millisecond
)

// lostConnection is a call cut by its connection (a member gone), not an
// answer of the store.
func lostConnection(err error) bool {
	return status.Code(err) == codes.Unavailable && !strings.Contains(err.Error(), "no leader")
}

func isUnavailable(err error) bool {
	msg := err.Error()
	for _, s := range []string{"no leader", "Unavailable", "deadline", "connection refused", "context canceled", "request timed out"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// UserError is a refusal for the user (a mismatch, an exhausted range),
// passed through as it is.
type UserError struct{ Msg string }

func (e *UserError) Error() string { return e.Msg }

func userErr(format string, a ...any) error { return &UserError{Msg: fmt.Sprintf(format, a...)} }

// Host is one host as the store knows it.
type Host struct {
	ID        string `json:"-"`
	Advertise netip.Addr
	Hostname  string
}

// Register puts this host in the store under a lease it keeps renewing
// until Close: while the host lives, its endpoints stay in the store.
func (s *Store) Register(ctx context.Context) error {
	return s.call(ctx, "registering this host", func(ctx context.Context) error {
		ttl := int64(s.cfg.LeaseTTL / time.Second)
		if ttl < 2 {
			ttl = 2
		}
		g, err := s.cli.Grant(ctx, ttl)
		if err != nil {
			return err
		}
		raw, _ := json.Marshal(Host{Advertise: s.cfg.Advertise, Hostname: s.cfg.Hostname})
		if _, err := s.cli.Put(ctx, prefix+"hosts/"+s.cfg.Host, string(raw), clientv3.WithLease(g.ID)); err != nil {
			return err
		}
		kctx, stop := context.WithCancel(context.Background())
		ch, err := s.cli.KeepAlive(kctx, g.ID)
		if err != nil {
			stop()
			return err
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			stop()
			return errors.New("the store was closed")
		}
		go s.renew(kctx, ch)
		if s.stop != nil {
			s.stop()
		}
		s.lease, s.stop = g.ID, stop
		s.mu.Unlock()
		return nil
	})
}

// renew drains the lease's keepalive answers. When they stop while the
// store is still wanted (a partition longer than the lease: the host, and
// its endpoints, are gone from the store), the host registers again, every
// two seconds at most, and calls OnRegistered so that its endpoints are
// published anew.
func (s *Store) renew(ctx context.Context, ch <-chan *clientv3.LeaseKeepAliveResponse) {
	for range ch {
	}
	if ctx.Err() != nil {
		return
	}
	s.mu.Lock()
	s.lease = 0
	s.mu.Unlock()
	s.registerLoop(ctx)
}

// registerLoop registers until it succeeds or ctx ends.
func (s *Store) registerLoop(ctx context.Context) {
	for wait := 500 * time.Millisecond; ctx.Err() == nil; wait = min(2*wait, 2*time.Second) {
		if err := s.Register(context.Background()); err == nil {
			s.mu.Lock()
			fn := s.OnRegistered
			s.mu.Unlock()
			if fn != nil {
				fn()
			}
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// Start registers this host in the background, retrying while the store
// cannot be reached, then calls OnRegistered; until Close it registers
// again whenever the lease is lost.
func (s *Store) Start() {
	ctx, stop := context.WithCancel(context.Background())
	s.mu.Lock()
	s.stop = stop
	s.mu.Unlock()
	go s.registerLoop(ctx)
}

// Hosts lists the live hosts.
func (s *Store) Hosts(ctx context.Context) ([]Host, error) {
	var out []Host
	err := s.call(ctx, "listing hosts", func(ctx context.Context) error {
		r, err := s.cli.Get(ctx, prefix+"hosts/", clientv3.WithPrefix())
		if err != nil {
			return err
		}
		for _, kv := range r.Kvs {
			var h Host
			if json.Unmarshal(kv.Value, &h) == nil {
				h.ID = strings.TrimPrefix(string(kv.Key), prefix+"hosts/")
				out = append(out, h)
			}
		}
		return nil
	})
	return out, err
}

func (s *Store) leaseID() clientv3.LeaseID {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lease
}
