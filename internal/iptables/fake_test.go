package iptables

import (
	"slices"
	"strings"
	"testing"
)

// The fake applies scripts as iptables-restore --noflush does, whole or
// not at all, and prints what Parse reads back.
func TestFakeRestoreAndSave(t *testing.T) {
	k := NewFake()
	must := func(script string) {
		t.Helper()
		if err := k.Restore(IPv4, script); err != nil {
			t.Fatal(err)
		}
	}
	must("*filter\n:OURNET-A - [0:0]\n-A OURNET-A -j DROP\n-A FORWARD -j OURNET-A\nCOMMIT\n")
	must("*filter\n-I FORWARD 1 -j ACCEPT\n-A OURNET-A -j ACCEPT\nCOMMIT\n")
	got, _ := k.Rules(IPv4, "filter", "FORWARD")
	if !slices.Equal(got, []string{"-A FORWARD -j ACCEPT", "-A FORWARD -j OURNET-A"}) {
		t.Fatalf("FORWARD = %q", got)
	}
	// Declaring an existing chain flushes it.
	must("*filter\n:OURNET-A - [0:0]\n-A OURNET-A -j RETURN\nCOMMIT\n")
	dump, _ := k.Save(IPv4, "filter")
	if c := Parse(dump); !slices.Equal(c["OURNET-A"], []string{"-A OURNET-A -j RETURN"}) || len(c["INPUT"]) != 0 {
		t.Fatalf("parsed back:\n%s", dump)
	}
	// A failing line leaves everything as it was.
	for _, bad := range []string{
		"*filter\n-D FORWARD -j ACCEPT\n-D FORWARD -j NOPE\nCOMMIT\n",            // no such rule
		"*filter\n-F OURNET-A\n-A OURNET-B -j DROP\nCOMMIT\n",                    // no such chain
		"*filter\n-F OURNET-A\n-X OURNET-A\nCOMMIT\n",                            // still referenced
		"*filter\n-F FORWARD\nCOMMIT\n*nat\n-A OURNET-X -j MASQUERADE\nCOMMIT\n", // second table fails
		"*filter\n-A FORWARD -j OURNET-MISSING\nCOMMIT\n",                        // no such target
	} {
		if err := k.Restore(IPv4, bad); err == nil {
			t.Errorf("accepted:\n%s", bad)
		}
	}
	if after, _ := k.Save(IPv4, "filter"); after != dump {
		t.Fatalf("a failed restore changed the tables:\n%s\nwas:\n%s", after, dump)
	}
	// The families are apart.
	if d6, _ := k.Save(IPv6, "filter"); strings.Contains(d6, "OURNET") {
		t.Fatalf("ip6tables shows iptables' chains:\n%s", d6)
	}
	must("*filter\n-D FORWARD -j OURNET-A\n-F OURNET-A\n-X OURNET-A\nCOMMIT\n")
	if _, ok := k.Rules(IPv4, "filter", "OURNET-A"); ok {
		t.Fatal("chain not deleted")
	}
}
