// Package iptables is ournet's one layer over the iptables tools: the
// address families, the runner (iptables-save and iptables-restore
// --noflush, nothing else), the parser of iptables-save output, the line
// helpers every script writer needs, the registry of ournet's chain names,
// and an in-memory runner (Fake) that applies restore scripts, so that the
// code above it is tested without root.
//
// Both writers of iptables rules, internal/firewall (filter, mangle, nat:
// the networks' rules) and internal/portmap (nat, raw: published ports),
// go through it.
package iptables

import (
	"fmt"
	"sort"
	"strings"
)

// Family is an address family: IPv4 (iptables) or IPv6 (ip6tables).
type Family int

const (
	IPv4 Family = 4
	IPv6 Family = 6
)

// String is the family's tool name.
func (f Family) String() string {
	if f == IPv6 {
		return "ip6tables"
	}
	return "iptables"
}

// Runner runs the iptables tools of a family. Save returns iptables-save
// output for one table; Restore applies a script with iptables-restore
// --noflush (in one transaction per table).
type Runner interface {
	Save(f Family, table string) (string, error)
	Restore(f Family, script string) error
}

// Chains is one table as iptables-save prints it: chain -> its rules, each
// as a "-A CHAIN ..." line. A declared chain with no rules is present with
// no lines.
type Chains map[string][]string

// Tables is several tables of one family: table -> its chains.
type Tables map[string]Chains

// Parse reads iptables-save output of one table.
func Parse(dump string) Chains {
	chains := Chains{}
	for _, line := range strings.Split(dump, "\n") {
		switch {
		case strings.HasPrefix(line, ":"):
			name, _, _ := strings.Cut(line[1:], " ")
			if _, ok := chains[name]; !ok {
				chains[name] = nil
			}
		case strings.HasPrefix(line, "-A "):
			name := ChainOf(line)
			chains[name] = append(chains[name], line)
		}
	}
	return chains
}

// Read saves and parses tables of family f.
func Read(r Runner, f Family, tables ...string) (Tables, error) {
	out := Tables{}
	for _, t := range tables {
		dump, err := r.Save(f, t)
		if err != nil {
			return nil, fmt.Errorf("%s: reading table %s: %w", f, t, err)
		}
		out[t] = Parse(dump)
	}
	return out, nil
}

// ChainOf is the chain of a "-A CHAIN ..." line.
func ChainOf(line string) string {
	name, _, _ := strings.Cut(strings.TrimPrefix(line, "-A "), " ")
	return name
}

// DeleteLine turns "-A CHAIN rule" into "-D CHAIN rule".
func DeleteLine(line string) string { return "-D" + strings.TrimPrefix(line, "-A") }

// InsertLine turns "-A CHAIN rule" into "-I CHAIN pos rule".
func InsertLine(line string, pos int) string {
	c := ChainOf(line)
	return fmt.Sprintf("-I %s %d%s", c, pos, strings.TrimPrefix(line, "-A "+c))
}

// Target is the chain or target a rule (a line, or its spec) jumps to
// with -j, "" if none.
func Target(rule string) string {
	i := strings.Index(" "+rule, " -j ")
	if i < 0 {
		return ""
	}
	name, _, _ := strings.Cut(rule[i+3:], " ")
	return name
}

// Jumps returns the lines of lines that jump to one of chains.
func Jumps(lines []string, chains ...string) []string {
	var out []string
	for _, l := range lines {
		for _, c := range chains {
			if strings.HasSuffix(l, " -j "+c) {
				out = append(out, l)
				break
			}
		}
	}
	return out
}

// Names returns the chain names of c, sorted.
func (c Chains) Names() []string {
	out := make([]string, 0, len(c))
	for k := range c {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
