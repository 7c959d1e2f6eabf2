//go:build linux

package ipsec

import (
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/opendmvpn/dmvpn/nhrp"
)

// charonSection returns the keys set directly in the charon section of a
// generated strongswan.conf (nested sections skipped).
func charonSection(t *testing.T, conf string) map[string]string {
	t.Helper()
	keys := map[string]string{}
	depth := 0
	for _, line := range strings.Split(conf, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case strings.HasSuffix(line, "{"):
			depth++
		case line == "}":
			depth--
		case depth == 1:
			if k, v, ok := strings.Cut(line, " = "); ok {
				keys[k] = v
			}
		}
	}
	if depth != 0 {
		t.Fatalf("unbalanced sections in:\n%s", conf)
	}
	return keys
}

// TestCharonDoSLimits: the managed charon's strongswan.conf sets the
// IKE_SA_INIT flood limits in its charon section, in both modes, with
// ikesa_limit sized from the node's max_peers (the default's, and a
// configured one's).
func TestCharonDoSLimits(t *testing.T) {
	for _, c := range []struct {
		name     string
		maxPeers int
		ikesa    int
	}{
		{"default max_peers", 0, 2*nhrp.DefaultMaxPeers + 1000},
		{"max_peers 5000", 5000, 11000},
	} {
		for _, mode := range []Mode{ModeKernel, ModeUserspace} {
			t.Run(c.name+"/"+string(mode), func(t *testing.T) {
				conf := strongswanConf(Config{Managed: true, Dir: "/run/x", MaxPeers: c.maxPeers}.withDefaults(), mode)
				keys := charonSection(t, conf)
				want := map[string]string{
					"cookie_threshold": "30", "cookie_threshold_ip": "3", "block_threshold": "5",
					"init_limit_half_open": "1000", "ikesa_limit": strconv.Itoa(c.ikesa),
				}
				got := map[string]string{}
				for k := range want {
					if v, ok := keys[k]; ok {
						got[k] = v
					}
				}
				if d := cmp.Diff(want, got); d != "" {
					t.Errorf("charon section (-want +got):\n%s\n%s", d, conf)
				}
			})
		}
	}
}
