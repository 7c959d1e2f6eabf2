// Package dphelper runs a GRE data-plane backend inside a testbed node for
// end-to-end tests and the benchmark. The test binary (or benchmark
// command) re-executes itself under `ip netns exec` with a configuration in
// the environment; MaybeRun, called first thing in TestMain or main, turns
// that process into the helper. The helper is driven over stdin/stdout
// with a line protocol; it is not a user-facing command.
package dphelper

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"

	"github.com/opendmvpn/dmvpn/gre"
)

// EnvVar carries the JSON Config of a helper process.
const EnvVar = "DMVPN_DPHELPER_CONFIG"

// Route is a route the helper installs through the tunnel.
type Route struct {
	Dst   string `json:"dst"`
	Via   string `json:"via,omitempty"`
	Table int    `json:"table,omitempty"`
}

// Config is the helper's tunnel configuration.
type Config struct {
	// Backend is "userspace", "kernel" or "auto" (default userspace).
	Backend  string `json:"backend,omitempty"`
	Name     string `json:"name"`
	Key      uint32 `json:"key"`
	Prefix   string `json:"prefix"`
	Local    string `json:"local,omitempty"`
	MTU      int    `json:"mtu,omitempty"`
	Checksum bool   `json:"checksum,omitempty"`
	Sequence bool   `json:"sequence,omitempty"`
	// Neighbors maps tunnel addresses to NBMA addresses (static entries).
	Neighbors map[string]string `json:"neighbors,omitempty"`
	Routes    []Route           `json:"routes,omitempty"`
	Multicast []string          `json:"multicast,omitempty"`
	// RefuseIngress lists interface names whose GRE is dropped
	// (Config.AcceptIngress).
	RefuseIngress []string `json:"refuseIngress,omitempty"`
	// CPUProfile writes a Go CPU profile of the helper to this file.
	CPUProfile string `json:"cpuProfile,omitempty"`
}

func (c *Config) greConfig() (gre.Config, error) {
	g := gre.Config{Name: c.Name, Key: c.Key, MTU: c.MTU, Checksum: c.Checksum, Sequence: c.Sequence}
	var err error
	if c.Prefix != "" {
		if g.Prefix, err = netip.ParsePrefix(c.Prefix); err != nil {
			return g, fmt.Errorf("dphelper: prefix: %w", err)
		}
	}
	if c.Local != "" {
		if g.Local, err = netip.ParseAddr(c.Local); err != nil {
			return g, fmt.Errorf("dphelper: local: %w", err)
		}
	}
	return g, nil
}

// Message prefixes of the helper's output protocol.
const (
	lineReady    = "READY "
	lineMiss     = "MISS "
	lineNHRP     = "NHRP "
	lineReply    = "R"
	lineBackend  = "BACKEND "
	replyOK      = "OK"
	replyErr     = "ERR"
	replyCounter = "COUNTERS"
)

func encodeCounters(c gre.Counters) string {
	b, _ := json.Marshal(c)
	return string(b)
}

func decodeCounters(s string) (gre.Counters, error) {
	var c gre.Counters
	if err := json.Unmarshal([]byte(strings.TrimSpace(s)), &c); err != nil {
		return c, fmt.Errorf("dphelper: counters: %w", err)
	}
	return c, nil
}
