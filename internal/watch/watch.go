// Package watch turns the kernel's notifications into repair triggers, so
// that drift is repaired when it happens and nothing runs while nothing
// changes: nftables commits (every iptables-nft change is one, whoever
// makes it: a flush by hand, a firewalld reload, dockerd's restart) and
// link changes (a bridge or veth deleted or changed by hand).
//
// A trigger is a value on a channel of capacity one: a burst of changes is
// one trigger, and Debounce waits for the burst to end.
package watch

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	mnl "github.com/mdlayher/netlink"
	log "github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// retryAfter is how long a watcher whose socket failed waits before it
// opens a new one (and triggers once: changes may have been missed).
const retryAfter = time.Second

// reopen calls open every retryAfter until it succeeds; false if stop was
// closed first.
func reopen[T any](stop <-chan struct{}, open func() (T, error)) (T, bool) {
	for {
		select {
		case <-stop:
			var zero T
			return zero, false
		case <-time.After(retryAfter):
		}
		if v, err := open(); err == nil {
			return v, true
		}
	}
}

func kick(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// Rules triggers on every nftables commit in this network namespace that
// touches ournet's objects and that mine does not claim (ournet's own
// writes: the tools it ran, its own threads). A commit touches ournet's
// objects when one of its messages names one (Ours): a chain or table of
// ournet's, a rule in one or jumping to one, a rule with ournet's
// comment; so a flush or a rule deleted by hand triggers, the engine's
// rules for its own bridges do not. The commit's generation message names
// the process that made it; a lost message (the socket's buffer overran)
// is a trigger too. It fails when nftables notifications cannot be had at
// all.
func Rules(stop <-chan struct{}, mine func(pid uint32) bool) (<-chan struct{}, error) {
	conn, err := dialRules()
	if err != nil {
		return nil, err
	}
	out := make(chan struct{}, 1)
	var mu sync.Mutex // cur: the socket to close at stop
	cur, stopped := conn, false
	go func() {
		<-stop
		mu.Lock()
		stopped = true
		cur.Close()
		mu.Unlock()
	}()
	go func() {
		for {
			err := readRules(conn, out, mine)
			conn.Close()
			mu.Lock()
			done := stopped
			mu.Unlock()
			if done {
				return
			}
			log.WithError(err).Warn("watching nftables commits: opening the socket again")
			var ok bool
			if conn, ok = reopen(stop, dialRules); !ok {
				return
			}
			mu.Lock()
			if stopped {
				mu.Unlock()
				conn.Close()
				return
			}
			cur = conn
			mu.Unlock()
			kick(out)
		}
	}()
	return out, nil
}

func dialRules() (*mnl.Conn, error) {
	conn, err := mnl.Dial(unix.NETLINK_NETFILTER, nil)
	if err != nil {
		return nil, fmt.Errorf("opening a netfilter netlink socket: %w", err)
	}
	if err := conn.JoinGroup(unix.NFNLGRP_NFTABLES); err != nil {
		conn.Close()
		return nil, fmt.Errorf("joining the nftables notification group: %w", err)
	}
	_ = conn.SetReadBuffer(1 << 20)
	return conn, nil
}

// newGen is the type of a commit's generation message.
const newGen = mnl.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_NEWGEN)

func readRules(conn *mnl.Conn, out chan struct{}, mine func(uint32) bool) error {
	touched := false // by the commit whose messages are being read
	for {
		msgs, err := conn.Receive()
		if errors.Is(err, unix.ENOBUFS) {
			kick(out) // messages were lost: something changed
			continue
		}
		if err != nil {
			return err
		}
		for _, m := range msgs {
			if m.Header.Type != newGen {
				// The commit's objects come before its generation.
				touched = touched || Ours(m.Data)
				continue
			}
			if pid, ok := genPID(m.Data); touched && (!ok || !mine(pid)) {
				kick(out)
			}
			touched = false
		}
	}
}

// Ours reports whether an nftables notification (a table, chain, rule,
// set or element added or deleted) names something of ournet's: the
// registry's chains ("OURNET-", iptables-nft's chains and jump targets are
// strings in the message), ournet's tables ("ournet", in the inet and
// bridge families), ournet's rule comments ("ournet:"), its bridges
// ("ournet-...").
func Ours(msg []byte) bool {
	return bytes.Contains(msg, []byte("OURNET-")) || bytes.Contains(msg, []byte("ournet"))
}

// genPID is the process that made the commit a generation message reports.
func genPID(data []byte) (uint32, bool) {
	if len(data) < 4 {
		return 0, false
	}
	ad, err := mnl.NewAttributeDecoder(data[4:]) // after struct nfgenmsg
	if err != nil {
		return 0, false
	}
	ad.ByteOrder = binary.BigEndian
	for ad.Next() {
		if ad.Type() == unix.NFTA_GEN_PROC_PID {
			return ad.Uint32(), true
		}
	}
	return 0, false
}

// LinkChanges triggers (C) on link changes that matter, and keeps the
// names of the links that changed until Take.
type LinkChanges struct {
	C     <-chan struct{}
	mu    sync.Mutex
	names map[string]bool
	all   bool
}

// Take returns the names of the links that changed since the last Take,
// and all: changes may have been missed (the subscription was made again),
// so every link must be looked at.
func (c *LinkChanges) Take() (names map[string]bool, all bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	names, all = c.names, c.all
	c.names, c.all = map[string]bool{}, false
	return names, all
}

func (c *LinkChanges) note(name string, all bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if name != "" {
		c.names[name] = true
	}
	c.all = c.all || all
}

// Links triggers on every link change in this network namespace that
// matters says matters, keeping the link's name. A failed subscription is
// opened again (and triggers once, for every link).
func Links(stop <-chan struct{}, matters func(netlink.LinkUpdate) bool) (*LinkChanges, error) {
	updates, err := subscribeLinks(stop)
	if err != nil {
		return nil, err
	}
	out := make(chan struct{}, 1)
	lc := &LinkChanges{C: out, names: map[string]bool{}}
	go func() {
		for {
			for u := range updates {
				if matters(u) {
					lc.note(u.Link.Attrs().Name, false)
					kick(out)
				}
			}
			select {
			case <-stop:
				return
			default:
			}
			log.Warn("watching links: subscribing again")
			var ok bool
			if updates, ok = reopen(stop, func() (chan netlink.LinkUpdate, error) { return subscribeLinks(stop) }); !ok {
				return
			}
			lc.note("", true)
			kick(out)
		}
	}()
	return lc, nil
}

func subscribeLinks(stop <-chan struct{}) (chan netlink.LinkUpdate, error) {
	ch := make(chan netlink.LinkUpdate, 256)
	err := netlink.LinkSubscribeWithOptions(ch, stop, netlink.LinkSubscribeOptions{
		ReceiveBufferSize: 1 << 20,
		ErrorCallback:     func(err error) { log.WithError(err).Debug("link notifications") },
	})
	if err != nil {
		return nil, fmt.Errorf("subscribing to link notifications: %w", err)
	}
	return ch, nil
}

// Debounce passes a trigger on once in has been quiet for quiet, or at
// the latest max after the first trigger of a burst: a flush of every
// table is many commits, repaired once.
func Debounce(stop <-chan struct{}, in <-chan struct{}, quiet, max time.Duration) <-chan struct{} {
	out := make(chan struct{}, 1)
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-in:
			}
			deadline := time.After(max)
		burst:
			for {
				select {
				case <-stop:
					return
				case <-in:
				case <-time.After(quiet):
					break burst
				case <-deadline:
					break burst
				}
			}
			kick(out)
		}
	}()
	return out
}
