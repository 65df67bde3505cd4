package firewall

import (
	"github.com/ournet/ournet/internal/iptables"
	"github.com/ournet/ournet/internal/nft"

	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/ournet/ournet/internal/testns"
)

// In a throwaway netns: the guard is one jump and the chain of admitted
// hosts; ensuring it again changes nothing, another host list rewrites the
// chain only, DelVXLAN and Teardown leave no trace.
func TestVXLANGuardInNetns(t *testing.T) {
	testns.Do(t, func() {
		r, err := iptables.NewExec(iptables.IPv4, iptables.IPv6)
		if err != nil {
			t.Fatal(err)
		}
		fw := New(r, nft.Dialer(), iptables.IPv4, iptables.IPv6)
		raw := func() map[string][]string {
			out, err := r.Save(iptables.IPv4, "raw")
			if err != nil {
				t.Fatal(err)
			}
			return iptables.Parse(out)
		}
		hosts := []netip.Addr{netip.MustParseAddr("203.0.113.12"), netip.MustParseAddr("203.0.113.11")}
		for i := 0; i < 2; i++ {
			if err := fw.EnsureVXLAN(4789, "under0", hosts[0], hosts, false); err != nil {
				t.Fatal(err)
			}
		}
		got := raw()
		if j := iptables.Jumps(got["PREROUTING"], VXLANChain); len(j) != 1 || j[0] != vxlanJump(4789) {
			t.Fatalf("jumps: %q", got["PREROUTING"])
		}
		want := []string{
			"-A OURNET-VXLAN -s 203.0.113.11/32 -i under0 -j RETURN",
			"-A OURNET-VXLAN -s 203.0.113.12/32 -i under0 -j RETURN",
			"-A OURNET-VXLAN -j DROP",
		}
		if !slices.Equal(got[VXLANChain], want) {
			t.Fatalf("chain:\n%s", strings.Join(got[VXLANChain], "\n"))
		}
		if err := fw.EnsureVXLAN(4789, "under0", hosts[0], hosts[:1], false); err != nil {
			t.Fatal(err)
		}
		if got := raw(); len(got[VXLANChain]) != 2 || len(iptables.Jumps(got["PREROUTING"], VXLANChain)) != 1 {
			t.Fatalf("after removing a host: %q %q", got[VXLANChain], got["PREROUTING"])
		}
		// keep: an existing guard stays as it is, whatever the list.
		if err := fw.EnsureVXLAN(4789, "under0", hosts[0], nil, true); err != nil {
			t.Fatal(err)
		}
		if got := raw(); len(got[VXLANChain]) != 2 {
			t.Fatalf("keep rewrote the guard: %q", got[VXLANChain])
		}
		if err := fw.DelVXLAN(); err != nil {
			t.Fatal(err)
		}
		if err := fw.DelVXLAN(); err != nil {
			t.Fatalf("already gone: %v", err)
		}
		if got := raw(); len(iptables.Jumps(got["PREROUTING"], VXLANChain)) != 0 {
			t.Fatalf("jump left: %q", got["PREROUTING"])
		} else if _, ok := got[VXLANChain]; ok {
			t.Fatal("chain left")
		}
		if err := fw.EnsureVXLAN(4789, "under0", hosts[0], hosts, false); err != nil {
			t.Fatal(err)
		}
		if err := fw.Teardown(); err != nil {
			t.Fatal(err)
		}
		if _, ok := raw()[VXLANChain]; ok {
			t.Fatal("Teardown left the guard")
		}
	})
}
