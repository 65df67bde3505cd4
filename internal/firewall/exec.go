package firewall

import (
	"bytes"
	"fmt"
	"os/exec"
	"slices"
	"strings"

	"github.com/coreos/go-iptables/iptables"
)

// ExecRunner runs the real iptables tools found in PATH.
type ExecRunner struct {
	ipt map[Family]*iptables.IPTables
}

// NewExecRunner finds the tools of each family; a family whose tools are
// missing is reported as an error, so that ournet never silently runs
// without the rules it promises.
func NewExecRunner(families ...Family) (*ExecRunner, error) {
	r := &ExecRunner{ipt: map[Family]*iptables.IPTables{}}
	for _, f := range families {
		proto := iptables.ProtocolIPv4
		if f == IPv6 {
			proto = iptables.ProtocolIPv6
		}
		ipt, err := iptables.New(iptables.IPFamily(proto), iptables.Timeout(10))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		r.ipt[f] = ipt
	}
	return r, nil
}

func (r *ExecRunner) tool(f Family, suffix string) string { return f.String() + suffix }

// Save implements Runner.
func (r *ExecRunner) Save(f Family, table string) (string, error) {
	var out, errb bytes.Buffer
	cmd := exec.Command(r.tool(f, "-save"), "-t", table)
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s -t %s: %w: %s", cmd.Path, table, err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// Restore implements Runner.
func (r *ExecRunner) Restore(f Family, script string) error {
	var errb bytes.Buffer
	cmd := exec.Command(r.tool(f, "-restore"), "--noflush", "--wait", "10")
	cmd.Stdin = strings.NewReader(script)
	cmd.Stderr = &errb
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w: %s", cmd.Path, err, strings.TrimSpace(errb.String()))
	}
	return nil
}

// EnsureBase implements Runner. The FORWARD jump goes right after dockerd's
// DOCKER-USER jump, so the user's rules still come first, and before
// dockerd's own ACCEPT rules for its bridges; the mangle guard goes first.
// OURNET-FORWARD holds exactly its jumps to OURNET-INTO and OURNET-OUTOF:
// anything else there (an older version's lines) is replaced, atomically.
func (r *ExecRunner) EnsureBase(f Family) error {
	ipt := r.ipt[f]
	for _, c := range []struct{ table, chain, parent string }{
		{"filter", ForeignChain, ""},
		{"filter", BridgesChain, ""},
		{"filter", IntoChain, ""},
		{"filter", OutofChain, ""},
		{"filter", ForwardChain, "FORWARD"},
		{"mangle", GuardChain, "FORWARD"},
		{"nat", PostroutingChain, "POSTROUTING"},
	} {
		ok, err := ipt.ChainExists(c.table, c.chain)
		if err != nil {
			return err
		}
		if !ok {
			if err := ipt.NewChain(c.table, c.chain); err != nil {
				return err
			}
		}
		if c.chain == ForwardChain {
			if err := r.ensureForward(f); err != nil {
				return err
			}
		}
		if c.parent == "" {
			continue
		}
		rules, err := ipt.List(c.table, c.parent)
		if err != nil {
			return err
		}
		want := jumpPosition(rules, c.parent, c.chain)
		if have := slices.Index(rules, "-A "+c.parent+" -j "+c.chain); have == want {
			continue
		} else if have > 0 {
			// Present but out of place (dockerd inserted its rules above
			// it): move it back.
			if err := ipt.Delete(c.table, c.parent, "-j", c.chain); err != nil {
				return err
			}
			if have < want {
				want--
			}
		}
		if err := ipt.Insert(c.table, c.parent, want, "-j", c.chain); err != nil {
			return err
		}
	}
	return nil
}

func (r *ExecRunner) ensureForward(f Family) error {
	have, err := r.ipt[f].List("filter", ForwardChain)
	if err != nil {
		return err
	}
	want := []string{"-N " + ForwardChain, "-A " + ForwardChain + " -j " + IntoChain, "-A " + ForwardChain + " -j " + OutofChain}
	if slices.Equal(have, want) {
		return nil
	}
	return r.Restore(f, "*filter\n:"+ForwardChain+" - [0:0]\n"+strings.Join(want[1:], "\n")+"\nCOMMIT\n")
}

// jumpPosition is where ournet's jump belongs in parent, as a 1-based rule
// number (rules[0] is the policy line, so it doubles as an index in rules):
// right after DOCKER-USER's jump in filter FORWARD, else first.
func jumpPosition(rules []string, parent, chain string) int {
	if chain == ForwardChain {
		if i := slices.Index(rules, "-A "+parent+" -j DOCKER-USER"); i > 0 {
			return i + 1
		}
	}
	return 1
}
