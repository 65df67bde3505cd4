package portmap

import (
	"errors"
	"fmt"
	"io"
	"net/netip"

	"golang.org/x/sys/unix"
)

// reserve picks w's host port, the first free one of its candidates, and
// holds it on every host address of w: one port number for 0.0.0.0 and ::
// alike, as users expect of -p 8080 and of -P.
func (m *Mapper) reserve(ep Endpoint, w want) ([]Mapping, []io.Closer, error) {
	first, last := w.first, w.end
	ephemeral := first == 0
	if ephemeral {
		first, last = m.cfg.Range()
	}
	n := int(last) - int(first) + 1
	start := 0
	if ephemeral {
		// Go on after the last port handed out, as Docker does, so that a
		// port just released is not reused at once by the next container.
		if next := m.next[w.b.Proto]; next >= first && next <= last {
			start = int(next - first)
		}
	}
	for i := 0; i < n; i++ {
		port := first + uint16((start+i)%n)
		held, err := m.hold(w, port)
		if err == nil {
			if ephemeral {
				m.next[w.b.Proto] = port + 1
			}
			return w.mappings(ep, port), held, nil
		}
		if n == 1 || !errors.Is(err, ErrInUse) {
			return nil, nil, err
		}
	}
	hosts := hostList(w.hostIPs)
	if ephemeral {
		return nil, nil, fmt.Errorf("ournet: no host port of the ephemeral range %d-%d is free for %d/%s on %s; free some or give a host port", first, last, w.b.Port, w.b.Proto, hosts)
	}
	return nil, nil, fmt.Errorf("ournet: every host port of %d-%d/%s on %s is already in use; choose another host port range", first, last, w.b.Proto, hosts)
}

// hold reserves port on every host address of w, or on none.
func (m *Mapper) hold(w want, port uint16) ([]io.Closer, error) {
	var held []io.Closer
	for _, h := range w.hostIPs {
		c, err := m.cfg.Reserve(w.b.Proto, netip.AddrPortFrom(h, port))
		if err != nil {
			closeAll(held)
			return nil, inUse(w.b.Proto, h, port, err)
		}
		held = append(held, c)
	}
	return held, nil
}

// inUse is the user's message for a port that could not be reserved.
func inUse(p Proto, host netip.Addr, port uint16, err error) error {
	switch {
	case errors.Is(err, ErrInUse):
		return inUseError(fmt.Sprintf("ournet: host port %d/%s on %s is already in use; choose another host port", port, p, host))
	case errors.Is(err, unix.EADDRNOTAVAIL):
		return fmt.Errorf("ournet: cannot publish port %d/%s on %s: it is not an address of this host; give one of the host's addresses", port, p, host)
	case errors.Is(err, unix.EACCES), errors.Is(err, unix.EPERM):
		return fmt.Errorf("ournet: not allowed to reserve host port %d/%s on %s (%v); give a port above 1023 or check the plugin's capabilities", port, p, host, err)
	}
	return fmt.Errorf("ournet: reserving host port %d/%s on %s: %w", port, p, host, err)
}

// inUseError is ErrInUse with the user's message.
type inUseError string

func (e inUseError) Error() string { return string(e) }
func (e inUseError) Unwrap() error { return ErrInUse }

func hostList(hs []netip.Addr) string {
	s := ""
	for i, h := range hs {
		if i > 0 {
			s += " and "
		}
		s += h.String()
	}
	return s
}
