// Package nft is what ournet's two nftables users share: the part of a
// connection they use (Conn), connections with buffers big enough for
// their transactions (Dialer), and an in-memory nftables for tests without
// root (Fake). Anti-spoofing (table bridge ournet) and the networks'
// firewall (table inet ournet) each program a table of their own.
package nft

import (
	"fmt"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Conn is the part of an nftables connection (*nftables.Conn) ournet uses:
// objects queued, then sent as one transaction by Flush.
type Conn interface {
	AddTable(*nftables.Table) *nftables.Table
	DelTable(*nftables.Table)
	AddSet(*nftables.Set, []nftables.SetElement) error
	AddChain(*nftables.Chain) *nftables.Chain
	FlushChain(*nftables.Chain)
	DelChain(*nftables.Chain)
	AddRule(*nftables.Rule) *nftables.Rule
	DelRule(*nftables.Rule) error
	SetAddElements(*nftables.Set, []nftables.SetElement) error
	SetDeleteElements(*nftables.Set, []nftables.SetElement) error
	Flush() error
	ListChainsOfTableFamily(nftables.TableFamily) ([]*nftables.Chain, error)
	ListTablesOfFamily(nftables.TableFamily) ([]*nftables.Table, error)
	GetSets(*nftables.Table) ([]*nftables.Set, error)
	GetSetElements(*nftables.Set) ([]nftables.SetElement, error)
	GetRules(*nftables.Table, *nftables.Chain) ([]*nftables.Rule, error)
}

// Dialer returns a function that opens connections to the kernel (in the
// current network namespace, or another with nftables.WithNetNSFd), each
// with big socket buffers.
func Dialer(opts ...nftables.ConnOption) func() (Conn, error) {
	opts = append(opts, nftables.WithSockOptions(bigBuffers))
	return func() (Conn, error) { return nftables.New(opts...) }
}

// socketBuffer is room for one transaction and the kernel's
// acknowledgement of each of its messages, with a wide margin; the default
// (about 200 KiB) overflows with a few hundred acknowledgements.
const socketBuffer = 8 << 20

// bigBuffers raises the netlink socket's buffers, past the system maximum
// when CAP_NET_ADMIN allows (as nft does), else up to that maximum.
func bigBuffers(conn *netlink.Conn) error {
	raw, err := conn.SyscallConn()
	if err != nil {
		return fmt.Errorf("netlink socket: %w", err)
	}
	var serr error
	err = raw.Control(func(fd uintptr) {
		for _, opt := range [][2]int{{unix.SO_SNDBUFFORCE, unix.SO_SNDBUF}, {unix.SO_RCVBUFFORCE, unix.SO_RCVBUF}} {
			if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, opt[0], socketBuffer) != nil {
				if err := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, opt[1], socketBuffer); err != nil && serr == nil {
					serr = err
				}
			}
		}
	})
	if err != nil {
		return fmt.Errorf("netlink socket: %w", err)
	}
	if serr != nil {
		return fmt.Errorf("sizing netlink socket buffers: %w", serr)
	}
	return nil
}

// IfName is the key the kernel compares with meta iifname and oifname:
// IFNAMSIZ bytes, zero-padded.
func IfName(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}
