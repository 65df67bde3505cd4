package portmap

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/ournet/ournet/internal/sysctl"
)

// ErrInUse is wrapped by errors about a host port someone else holds.
var ErrInUse = errors.New("address already in use")

// ReserveFunc holds a host port until the returned Closer is closed.
type ReserveFunc func(Proto, netip.AddrPort) (io.Closer, error)

type nopCloser struct{}

func (nopCloser) Close() error { return nil }

// ReserveSocket holds the port with a bound socket in this process, the way
// Docker 25+ does: nothing else on the host can bind it meanwhile, and a
// port someone already holds is found here, before any rule exists. TCP and
// SCTP sockets listen, because with SO_REUSEADDR (needed to bind again over
// TIME_WAIT leftovers) only a listening socket blocks other binds. They
// never accept: the DNAT rules send every connection to the container
// before it could reach them.
func ReserveSocket(p Proto, ap netip.AddrPort) (io.Closer, error) {
	var domain int
	var sa unix.Sockaddr
	if a := ap.Addr(); a.Is4() {
		domain, sa = unix.AF_INET, &unix.SockaddrInet4{Port: int(ap.Port()), Addr: a.As4()}
	} else {
		domain, sa = unix.AF_INET6, &unix.SockaddrInet6{Port: int(ap.Port()), Addr: a.As16()}
	}
	typ, proto := unix.SOCK_STREAM, unix.IPPROTO_TCP
	switch p {
	case UDP:
		typ, proto = unix.SOCK_DGRAM, unix.IPPROTO_UDP
	case SCTP:
		proto = unix.IPPROTO_SCTP
	}
	fd, err := unix.Socket(domain, typ|unix.SOCK_CLOEXEC, proto)
	if p == SCTP && (errors.Is(err, unix.EPROTONOSUPPORT) || errors.Is(err, unix.ESOCKTNOSUPPORT)) {
		// A kernel without SCTP: no process can hold the port, so there is
		// nothing to reserve; the DNAT rule alone publishes it.
		return nopCloser{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("creating a %s socket: %w", p, err)
	}
	f := os.NewFile(uintptr(fd), fmt.Sprintf("ournet-reserve-%s-%s", p, ap))
	if err := bindReserved(fd, domain, typ, sa); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

func bindReserved(fd, domain, typ int, sa unix.Sockaddr) error {
	if typ == unix.SOCK_STREAM {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
			return fmt.Errorf("setting SO_REUSEADDR: %w", err)
		}
	}
	if domain == unix.AF_INET6 {
		// :: must not also take 0.0.0.0, which has a reservation of its own.
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1); err != nil {
			return fmt.Errorf("setting IPV6_V6ONLY: %w", err)
		}
	}
	if err := unix.Bind(fd, sa); err != nil {
		if errors.Is(err, unix.EADDRINUSE) {
			return ErrInUse
		}
		return err
	}
	if typ == unix.SOCK_STREAM {
		if err := unix.Listen(fd, 1); err != nil {
			if errors.Is(err, unix.EADDRINUSE) {
				return ErrInUse
			}
			return fmt.Errorf("listening: %w", err)
		}
	}
	return nil
}

// Docker's fallback when the kernel's range cannot be read.
const defaultFirst, defaultLast = 49153, 60999

// EphemeralRange is the host's net.ipv4.ip_local_port_range, where ports
// asked for as 0 (-p CONTAINER, -P) are picked, like Docker does.
func EphemeralRange() (first, last uint16) {
	v, err := sysctl.Get("ipv4/ip_local_port_range")
	if err != nil {
		return defaultFirst, defaultLast
	}
	f := strings.Fields(v)
	if len(f) != 2 {
		return defaultFirst, defaultLast
	}
	a, err1 := strconv.ParseUint(f[0], 10, 16)
	b, err2 := strconv.ParseUint(f[1], 10, 16)
	if err1 != nil || err2 != nil || a == 0 || b < a {
		return defaultFirst, defaultLast
	}
	return uint16(a), uint16(b)
}
