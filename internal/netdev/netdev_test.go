package netdev

import (
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/ournet/ournet/internal/testns"
)

func TestCheckName(t *testing.T) {
	for name, ok := range map[string]bool{
		"ournet-0123abcd": true, "br0": true, "": false, "a-name-that-is-long": false,
		"has space": false, "a/b": false, "..": false,
	} {
		if err := CheckName(name); (err == nil) != ok {
			t.Errorf("CheckName(%q) = %v, want ok=%v", name, err, ok)
		}
	}
	if err := CheckName("sixteen-chars-xx"); err == nil || !strings.Contains(err.Error(), "at most 15") {
		t.Errorf("long name error does not say the limit: %v", err)
	}
}

func TestBridgeAndVethInNetns(t *testing.T) {
	testns.Do(t, func() {
		m, err := New()
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		br := Bridge{Name: "ournet-test", Owner: "net1", MTU: 1400, MAC: net.HardwareAddr{2, 0x6f, 1, 2, 3, 4},
			Addrs: []netip.Prefix{netip.MustParsePrefix("198.18.9.1/24"), netip.MustParsePrefix("fd00:9::1/64")}}
		for i := 0; i < 2; i++ { // the second time must change nothing and not fail
			if err := m.EnsureBridge(br); err != nil {
				t.Fatalf("EnsureBridge #%d: %v", i+1, err)
			}
		}
		link, err := netlink.LinkByName("ournet-test")
		if err != nil {
			t.Fatal(err)
		}
		if link.Attrs().MTU != 1400 || link.Attrs().HardwareAddr.String() != br.MAC.String() || link.Attrs().Flags&net.FlagUp == 0 {
			t.Fatalf("bridge attrs = mtu %d mac %s flags %v", link.Attrs().MTU, link.Attrs().HardwareAddr, link.Attrs().Flags)
		}
		addrs, _ := netlink.AddrList(link, netlink.FAMILY_ALL)
		var got []string
		for _, a := range addrs {
			got = append(got, a.IPNet.String())
		}
		if s := strings.Join(got, " "); !strings.Contains(s, "198.18.9.1/24") || !strings.Contains(s, "fd00:9::1/64") {
			t.Fatalf("bridge addresses = %s", s)
		}
		// Someone else's device of the same name is refused, not adopted.
		if err := m.EnsureBridge(Bridge{Name: "ournet-test", Owner: "net2"}); !errors.Is(err, ErrNotOurs) {
			t.Fatalf("EnsureBridge of another network's bridge = %v, want ErrNotOurs", err)
		}
		foreign := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "foreign0"}, PeerName: "foreign1"}
		if err := netlink.LinkAdd(foreign); err != nil {
			t.Fatal(err)
		}
		if err := m.EnsureBridge(Bridge{Name: "foreign0", Owner: "net3"}); !errors.Is(err, ErrNotOurs) {
			t.Fatalf("EnsureBridge over a foreign veth = %v, want ErrNotOurs", err)
		}
		if err := m.DeleteBridge("foreign0", "net3"); !errors.Is(err, ErrNotOurs) {
			t.Fatalf("DeleteBridge of a foreign device = %v, want ErrNotOurs", err)
		}

		v := Veth{Host: "ovtest", Peer: "octest", Owner: "ep1", Bridge: "ournet-test", MTU: 1400,
			PeerMAC: net.HardwareAddr{2, 0x42, 198, 18, 9, 2}}
		for i := 0; i < 2; i++ {
			if err := m.EnsureVeth(v); err != nil {
				t.Fatalf("EnsureVeth #%d: %v", i+1, err)
			}
		}
		host, _ := netlink.LinkByName("ovtest")
		peer, _ := netlink.LinkByName("octest")
		if host == nil || peer == nil {
			t.Fatal("veth ends missing")
		}
		if host.Attrs().MasterIndex != link.Attrs().Index || host.Attrs().MTU != 1400 || peer.Attrs().MTU != 1400 {
			t.Fatalf("veth: master %d (bridge %d), mtu %d/%d", host.Attrs().MasterIndex, link.Attrs().Index, host.Attrs().MTU, peer.Attrs().MTU)
		}
		if peer.Attrs().HardwareAddr.String() != v.PeerMAC.String() {
			t.Fatalf("peer MAC = %s, want %s", peer.Attrs().HardwareAddr, v.PeerMAC)
		}
		owned, err := m.Owned()
		if err != nil || owned["ovtest"] != "ep1" || owned["ournet-test"] != "net1" || owned["foreign0"] != "" {
			t.Fatalf("Owned() = %v, %v", owned, err)
		}
		for i := 0; i < 2; i++ { // deleting what is gone is success
			if err := m.DeleteVeth("ovtest", "ep1"); err != nil {
				t.Fatal(err)
			}
			if err := m.DeleteBridge("ournet-test", "net1"); err != nil {
				t.Fatal(err)
			}
		}
		if ok, _ := m.Exists("octest"); ok {
			t.Fatal("peer end survived its host end")
		}
		if ok, _ := m.Exists("ournet-test"); ok {
			t.Fatal("bridge survived DeleteBridge")
		}
	})
}

// A crash between creating a pair and marking it leaves a veth without an
// alias: ournet recognises it by its name (Owned), adopts it when the call
// is made again (EnsureVeth) and removes it as an orphan (DeleteLink); a
// veth of another name without an alias stays someone else's.
func TestUnmarkedVethInNetns(t *testing.T) {
	testns.Do(t, func() {
		m, err := New()
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		if err := m.EnsureBridge(Bridge{Name: "ournet-unm", Owner: "net1"}); err != nil {
			t.Fatal(err)
		}
		for _, pair := range [][2]string{{"ov0123456789ab", "oc0123456789ab"}, {"ovfedcba987654", "ocfedcba987654"}, {"vethforeign", "vethforeign1"}} {
			attrs := netlink.NewLinkAttrs()
			attrs.Name = pair[0]
			if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: pair[1]}); err != nil {
				t.Fatal(err)
			}
		}
		owned, err := m.Owned()
		if err != nil {
			t.Fatal(err)
		}
		if owned["ov0123456789ab"] != "0123456789ab" || owned["ovfedcba987654"] != "fedcba987654" {
			t.Fatalf("Owned = %v", owned)
		}
		if _, ok := owned["vethforeign"]; ok {
			t.Fatal("a foreign veth without an alias counted as ournet's")
		}
		ep := "0123456789abcdef0123"
		if err := m.EnsureVeth(Veth{Host: "ov0123456789ab", Peer: "oc0123456789ab", Owner: ep, Bridge: "ournet-unm"}); err != nil {
			t.Fatalf("adopting the unmarked veth: %v", err)
		}
		if l, _ := netlink.LinkByName("ov0123456789ab"); l == nil || l.Attrs().Alias != AliasPrefix+ep {
			t.Fatalf("not marked after adoption: %+v", l)
		}
		if err := m.EnsureVeth(Veth{Host: "ovfedcba987654", Peer: "ocfedcba987654", Owner: "aaaaaaaaaaaa0000", Bridge: "ournet-unm"}); !errors.Is(err, ErrNotOurs) {
			t.Fatalf("another endpoint's unmarked veth: %v, want ErrNotOurs", err)
		}
		if err := m.DeleteLink("ovfedcba987654", "fedcba987654"); err != nil {
			t.Fatalf("removing the orphan: %v", err)
		}
		if err := m.DeleteLink("vethforeign", "vethforeign"); !errors.Is(err, ErrNotOurs) {
			t.Fatalf("removing a foreign veth: %v, want ErrNotOurs", err)
		}
	})
}

// The same for a bridge (made with ournet's device group, not yet marked):
// adopted when the create is made again, named or not as ournet names
// them; listed by Owned and removed as an orphan when named as ournet
// names them; a bridge with no alias and another group stays someone
// else's.
func TestUnmarkedBridgeInNetns(t *testing.T) {
	testns.Do(t, func() {
		m, err := New()
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		const group = 0x6f75
		for _, b := range []struct {
			name  string
			group uint32
		}{{"ournet-01234567", group}, {"ournet-89abcdef", group}, {"mybridge", group}, {"ournet-fedcba98", 0}} {
			attrs := netlink.NewLinkAttrs()
			attrs.Name, attrs.Group = b.name, b.group
			if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: attrs}); err != nil {
				t.Fatal(err)
			}
		}
		owned, err := m.Owned()
		if err != nil {
			t.Fatal(err)
		}
		if _, other := owned["ournet-fedcba98"]; owned["ournet-01234567"] != "01234567" || owned["ournet-89abcdef"] != "89abcdef" || other {
			t.Fatalf("Owned = %v", owned)
		}
		for _, nid := range []string{"0123456789abcdef", "fedcba9876543210"} {
			name := map[string]string{"0123456789abcdef": "ournet-01234567", "fedcba9876543210": "mybridge"}[nid]
			if err := m.EnsureBridge(Bridge{Name: name, Owner: nid, Group: group}); err != nil {
				t.Fatalf("adopting the unmarked bridge %s: %v", name, err)
			}
			if l, _ := netlink.LinkByName(name); l == nil || l.Attrs().Alias != AliasPrefix+nid {
				t.Fatalf("%s not marked after adoption: %+v", name, l)
			}
		}
		if err := m.EnsureBridge(Bridge{Name: "ournet-fedcba98", Owner: "fedcba9800000000", Group: group}); !errors.Is(err, ErrNotOurs) {
			t.Fatalf("a bridge with no alias and another group: %v, want ErrNotOurs", err)
		}
		if err := m.DeleteLink("ournet-89abcdef", "89abcdef"); err != nil {
			t.Fatalf("removing the orphan: %v", err)
		}
	})
}
