package ipam

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	api "github.com/docker/go-plugins-helpers/ipam"
)

var gwOpts = map[string]string{optRequestAddressType: optGateway}

func newMem(t testing.TB, cfg Config) *Allocator {
	t.Helper()
	a, err := New(cfg, nil)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return a
}

func mustPool(t testing.TB, a *Allocator, pool, sub string, opts map[string]string) string {
	t.Helper()
	res, err := a.RequestPool(&api.RequestPoolRequest{AddressSpace: LocalAddressSpace, Pool: pool, SubPool: sub,
		Options: opts, V6: strings.Contains(pool, ":")})
	if err != nil {
		t.Fatalf("RequestPool(%s, %s): %v", pool, sub, err)
	}
	return res.PoolID
}

func reqAddr(a *Allocator, id, addr string, opts map[string]string) (string, error) {
	res, err := a.RequestAddress(&api.RequestAddressRequest{PoolID: id, Address: addr, Options: opts})
	if err != nil {
		return "", err
	}
	if res.Address == "" {
		return "", errors.New("empty address with no error")
	}
	return res.Address, nil
}

func mustAddr(t testing.TB, a *Allocator, id, addr string, opts map[string]string) string {
	t.Helper()
	got, err := reqAddr(a, id, addr, opts)
	if err != nil {
		t.Fatalf("RequestAddress(%s, %q): %v", id, addr, err)
	}
	return got
}

func mustRelease(t testing.TB, a *Allocator, id, addr string) {
	t.Helper()
	if err := a.ReleaseAddress(&api.ReleaseAddressRequest{PoolID: id, Address: addr}); err != nil {
		t.Fatalf("ReleaseAddress(%s, %s): %v", id, addr, err)
	}
}

// checkErr asserts err is of kind and its message holds each word; the
// message is what a Docker user reads, so its content is the contract.
func checkErr(t testing.TB, err, kind error, words ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want %v", kind)
	}
	if !errors.Is(err, kind) {
		t.Errorf("error %q is not %v", err, kind)
	}
	msg := err.Error()
	if !strings.HasPrefix(msg, "ournet: ") {
		t.Errorf("error %q does not carry the prefix the user sees, ournet: ", msg)
	}
	for _, w := range words {
		if !strings.Contains(msg, w) {
			t.Errorf("error %q does not contain %q", msg, w)
		}
	}
}

func poolInfo(t testing.TB, a *Allocator, id string) PoolInfo {
	t.Helper()
	for _, p := range a.Pools() {
		if p.ID == id {
			return p
		}
	}
	t.Fatalf("pool %s not held", id)
	return PoolInfo{}
}

func addrsOf(p PoolInfo) []string {
	var out []string
	for _, al := range p.Allocated {
		out = append(out, al.Addr.String())
	}
	return out
}

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func mustA(s string) netip.Addr { return netip.MustParseAddr(s) }
