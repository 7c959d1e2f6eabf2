package config

import (
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/opendmvpn/dmvpn/bgp"
)

const hubMinimal = `node: hub1
role: hub
tunnel:
  interface: gre1
  address: 172.16.0.1/16
`

func TestBGPSection(t *testing.T) {
	c, err := Parse([]byte(inClear(hubMinimal+`bgp:
  hubs: [172.16.0.2]
  summary: [10.0.0.0/8]
  phase: 2
  max_prefixes: 8
  max_neighbors: 50
  graceful_restart: 0
  spokes:
    - address: 172.16.1.1
      as: 65001
      networks: [10.1.0.0/24]
  default_spoke: {as: 65100, networks: [10.100.0.0/16]}
`)), "hub.yaml")
	if err != nil {
		t.Fatal(err)
	}
	b := c.Daemon(Runtime{}).BGP
	want := &bgp.Config{Role: bgp.RoleHub, AS: 65000, HubAS: 65000, Tunnel: netip.MustParsePrefix("172.16.0.1/16"), Port: 179,
		Hubs: []netip.Addr{netip.MustParseAddr("172.16.0.2")}, Summary: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")},
		Phase2: true, MaxPrefixLen: 26, MaxPrefixes: 8, MaxNeighbors: 50, Keepalive: 10 * time.Second, Hold: 30 * time.Second, ConnectRetry: 5 * time.Second,
		Spokes:       map[netip.Addr]bgp.SpokeAuth{netip.MustParseAddr("172.16.1.1"): {AS: 65001, Networks: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/24")}}},
		DefaultSpoke: &bgp.SpokeAuth{AS: 65100, Networks: []netip.Prefix{netip.MustParsePrefix("10.100.0.0/16")}},
	}
	if d := cmp.Diff(want, b, cmpNet...); d != "" {
		t.Errorf("bgp config (-want +got):\n%s", d)
	}
	if c.Daemon(Runtime{}).BGPProtocol != DefaultBGPProtocol {
		t.Errorf("protocol %d, want %d", c.Daemon(Runtime{}).BGPProtocol, DefaultBGPProtocol)
	}
	back, err := Parse(c.YAML(), "rendered")
	if err != nil {
		t.Fatalf("rendered: %v\n%s", err, c.YAML())
	}
	if d := cmp.Diff(c, back, cmpNet...); d != "" {
		t.Errorf("round trip (-file +rendered):\n%s", d)
	}

	// A spoke: its networks default to the top-level ones, the servers'
	// NBMA addresses are protected, graceful restart defaults on.
	s, err := Parse([]byte(inClear(minimal+"networks: [10.1.0.0/24]\nbgp: {as: 65001}\n")), "spoke.yaml")
	if err != nil {
		t.Fatal(err)
	}
	sb := s.Daemon(Runtime{}).BGP
	if sb.Role != bgp.RoleSpoke || sb.AS != 65001 || len(sb.Networks) != 1 || sb.RestartTime != DefaultBGPGracefulRestart ||
		len(sb.ProtectedNBMA) != 1 || sb.ProtectedNBMA[0] != netip.MustParseAddr("192.0.2.1") {
		t.Errorf("spoke bgp config %+v", sb)
	}
}

func TestBGPSectionErrors(t *testing.T) {
	for _, tc := range []struct {
		name, file string
		want       []string
	}{
		{"spoke without AS", minimal + "bgp: {}\n", []string{"line 9: bgp: a spoke needs its AS (bgp.as: its certificate's OU=AS=)"}},
		{"hub-only keys on a spoke", minimal + "bgp:\n  as: 65001\n  summary: [10.0.0.0/8]\n", []string{"line 11: bgp.summary: summary is for hubs"}},
		{"bad values", hubMinimal + "bgp:\n  as: 65001\n  phase: 4\n  hubs: [10.9.9.9]\n  keepalive: 1m\n  redistribute: [ospf]\n", []string{
			"line 7: bgp.as: a hub's AS is the hubs' AS 65000 (hub_as)",
			"line 8: bgp.phase: 4 out of range 2-3",
			"line 9: bgp.hubs[0]: 10.9.9.9 is outside the tunnel network 172.16.0.0/16",
			"line 10: bgp.keepalive: keepalive 1m0s must be shorter than hold_time 30s",
			`line 11: bgp.redistribute[0]: "ospf" is not one of connected, static`,
		}},
		{"default route announced", hubMinimal + "bgp:\n  summary: [0.0.0.0/0]\n", []string{"line 6: bgp: bgp: 0.0.0.0/0 cannot be announced: the default route"}},
		{"spoke entry without AS", hubMinimal + "bgp:\n  spokes:\n    - address: 172.16.1.1\n", []string{"line 8: bgp.spokes[0]: a spoke needs its as"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if d := cmp.Diff(tc.want, errorLines(t, inClear(tc.file))); d != "" {
				t.Errorf("errors (-want +got):\n%s", d)
			}
		})
	}
}
