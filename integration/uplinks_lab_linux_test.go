package integration

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/opendmvpn/dmvpn/bgp"
)

// testLabFailover: dmvpn-lab fail spoke1 isp1 (both ways: an nftables drop
// on the first internet router with the link up, then the link down) and
// restore, as a user runs them on the lab: the output follows spoke1 from
// the cut to its registration with both hubs from its second ISP's address,
// and back; spoke2's LAN reaches spoke1's in between; at the far end the
// hubs' BGP routes to spoke1's LAN are unchanged and their sessions with
// spoke1 (over the tunnel address) established.
func testLabFailover(t *testing.T, l *labEnv) {
	lanRoutes := func() map[string][]string {
		m := map[string][]string{}
		for _, hub := range []string{"hub1", "hub2"} {
			for _, r := range bgpRoutes(t, l.prefix+"-"+hub) {
				if strings.HasPrefix(r, "10.1.0.0/24 ") {
					m[hub] = append(m[hub], r)
				}
			}
		}
		return m
	}
	session := func(hub string) bgp.SessionState {
		for _, n := range bgpSummary(t, l, hub).Neighbors {
			if n.Address == netip.MustParseAddr("172.16.1.1") {
				return n.SessionState
			}
		}
		return bgp.SessionState{}
	}
	routes := lanRoutes()
	if len(routes["hub1"]) == 0 || len(routes["hub2"]) == 0 {
		t.Fatalf("no BGP route to spoke1's LAN on the hubs before the cut: %v", routes)
	}
	flaps := session("hub1").Flaps
	expect := func(args []string, wants ...string) {
		t.Helper()
		out, err := l.run(t, args...)
		if err != nil {
			t.Fatalf("dmvpn-lab %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		for _, w := range wants {
			if !strings.Contains(out, w) {
				t.Errorf("dmvpn-lab %s: no %q in\n%s", strings.Join(args, " "), w, out)
			}
		}
		t.Logf("dmvpn-lab %s:\n%s", strings.Join(args, " "), firstLines(out, 7))
	}
	for _, mode := range [][]string{nil, {"--link"}} {
		expect(append([]string{"fail", "spoke1", "isp1"}, mode...),
			"uplink isp1 down", "default route via isp2", "NBMA address 203.0.113.65",
			"registered with hub1 from 203.0.113.65", "registered with hub2 from 203.0.113.65",
			"NBMA address 203.0.113.65 (uplink isp2), default route via isp2")
		if out, err := l.run(t, "exec", "spoke2-h1", "--", "ping", "-c", "3", "-i", "0.2", "-W", "2", "10.1.0.2"); err != nil {
			t.Errorf("spoke2's LAN to spoke1's after the failover: %v\n%s", err, out)
		}
		if got := lanRoutes(); !cmp.Equal(got, routes) {
			t.Errorf("the hubs' BGP routes to spoke1's LAN changed with the failover: %v, were %v", got, routes)
		}
		for _, hub := range []string{"hub1", "hub2"} {
			if s := session(hub); s.State != bgp.StateEstablished {
				t.Errorf("%s's BGP session with spoke1 after the failover: %+v", hub, s)
			}
		}
		t.Logf("hub1's BGP session with spoke1: %d flaps across the failover", session("hub1").Flaps-flaps)
		expect([]string{"restore", "spoke1", "isp1"},
			"uplink isp1 up", "default route via isp1", "NBMA address 198.51.100.1",
			"registered with hub1 from 198.51.100.1", "registered with hub2 from 198.51.100.1")
	}
}

// firstLines returns the first n lines of s.
func firstLines(s string, n int) string {
	lines := strings.SplitN(s, "\n", n+1)
	if len(lines) > n {
		lines = lines[:n]
	}
	return strings.Join(lines, "\n")
}
