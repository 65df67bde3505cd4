// Package sysctl reads and writes the network sysctls of the namespace the
// plugin runs in. Inside a managed plugin /proc/sys is read-only, so
// config.json bind-mounts the host's /proc/sys/net at HostPath, which is
// writable; outside a plugin (tests, a plain process) /proc/sys/net is used.
// The files under /proc/sys/net always show the reader's network namespace.
package sysctl

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// HostPath is where config.json mounts the host's /proc/sys/net.
const HostPath = "/host/proc/sys/net"

func root() string {
	if _, err := os.Stat(HostPath); err == nil {
		return HostPath
	}
	return "/proc/sys/net"
}

// path turns "ipv4/conf/br0/route_localnet" into a file path.
func path(key string) (string, error) {
	if strings.Contains(key, "..") || strings.HasPrefix(key, "/") {
		return "", fmt.Errorf("bad sysctl key %q", key)
	}
	return filepath.Join(root(), key), nil
}

// Get returns the value of net/<key>, e.g. Get("ipv4/ip_forward").
func Get(key string) (string, error) {
	p, err := path(key)
	if err != nil {
		return "", err
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return "", fmt.Errorf("reading net.%s: %w", strings.ReplaceAll(key, "/", "."), err)
	}
	return strings.TrimSpace(string(b)), nil
}

// Set writes value to net/<key> unless it already holds it.
func Set(key, value string) error {
	if cur, err := Get(key); err == nil && cur == value {
		return nil
	}
	p, err := path(key)
	if err != nil {
		return err
	}
	if err := os.WriteFile(p, []byte(value), 0o644); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("setting net.%s: no such sysctl: %w", strings.ReplaceAll(key, "/", "."), err)
		}
		return fmt.Errorf("setting net.%s=%s: %w", strings.ReplaceAll(key, "/", "."), value, err)
	}
	return nil
}
