package integration

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/opendmvpn/dmvpn/bgp"
)

// testLabFailover: dmvpn-lab fail spoke1 isp1 (both ways: an nftables drop
// on the first internet router with the link up, then the link down) and
// restore, as a user runs them on the lab: the output follows spoke1 from
// the cut to its registration with both hubs from its second ISP's address,
// and back; spoke2's LAN reaches spoke1's in between; at the far end the
// hubs' BGP routes to spoke1's LAN are unchanged and their sessions with
// spoke1 (over the tunnel address) established. spoke1 and spoke3 (behind
// NAT), with shortcuts to each other's LAN before each cut, go straight to
// each other again after it and after the restore: spoke1's purge cannot
// reach spoke3 from its new address (the NAT has no mapping for it),
// which once left spoke3's shortcut at the dead address for its holding
// time.
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
	// straight waits until from's LAN host reaches to's over a shortcut
	// (TTL 62: two routers, no hub between them).
	straight := func(when, from, to string) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for {
			out, err := l.run(t, "exec", from, "--", "ping", "-n", "-c", "1", "-W", "1", to)
			if err == nil && strings.Contains(out, "ttl=62") {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("%s: %s does not reach %s over a shortcut within 15 s:\n%s", when, from, to, out)
				return
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	for _, mode := range [][]string{nil, {"--link"}} {
		straight("before the cut", "spoke3-h1", "10.1.0.2")
		straight("before the cut", "spoke1-h1", "10.3.0.2")
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
		straight("after the cut", "spoke3-h1", "10.1.0.2")
		straight("after the cut", "spoke1-h1", "10.3.0.2")
		expect([]string{"restore", "spoke1", "isp1"},
			"uplink isp1 up", "default route via isp1", "NBMA address 198.51.100.1",
			"registered with hub1 from 198.51.100.1", "registered with hub2 from 198.51.100.1")
		straight("after the restore", "spoke3-h1", "10.1.0.2")
		straight("after the restore", "spoke1-h1", "10.3.0.2")
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
