package config

import (
	"strings"
	"testing"
)

// TestStateFile: the state file is INTERFACE.state beside the control
// socket by default, any absolute path when given, none with "none"; a
// relative path is an error; the rendered file reads back the same.
func TestStateFile(t *testing.T) {
	for _, c := range []struct {
		extra, want, err string
	}{
		{"", "/run/dmvpnd/dmvpnd.gre1.state", ""},
		{"  state_file: /var/lib/dmvpnd/hub.state\n", "/var/lib/dmvpnd/hub.state", ""},
		{"  state_file: none\n", "", ""},
		{"  state_file: hub.state\n", "", `tunnel.state_file: "hub.state" is not an absolute path`},
	} {
		cfg, err := Parse([]byte(inClear(minimal+c.extra)), "s.yaml")
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%q: error %v, want %q", c.extra, err, c.err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%q: %v", c.extra, err)
		}
		if got := cfg.Daemon(Runtime{}).StateFile; got != c.want {
			t.Errorf("%q: state file %q, want %q", c.extra, got, c.want)
		}
		again, err := Parse(cfg.YAML(), "rendered.yaml")
		if err != nil || again.Daemon(Runtime{}).StateFile != c.want {
			t.Errorf("%q: rendered and read back: %v, %q", c.extra, err, again.Daemon(Runtime{}).StateFile)
		}
	}
}
