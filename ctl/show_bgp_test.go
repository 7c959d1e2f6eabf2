package ctl

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/opendmvpn/dmvpn/bgp"
	"github.com/opendmvpn/dmvpn/daemon/control"
)

// TestBGPPrintEmptyState: a neighbour without a state (a daemon that sent
// none) prints as Unknown in the summary and the detail, no panic.
func TestBGPPrintEmptyState(t *testing.T) {
	n := bgp.NeighborStatus{SessionState: bgp.SessionState{Address: netip.MustParseAddr("172.16.1.1"), AS: 65001}, Kind: bgp.KindSpoke}
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	var sum, det strings.Builder
	s := control.BGPSummary{Enabled: true, Summary: bgp.Summary{AS: 65000, Neighbors: []bgp.NeighborStatus{n}}}
	if err := printBGPSummary(&sum, s, now); err != nil {
		t.Fatal(err)
	}
	if err := printBGPNeighbors(&det, []bgp.NeighborStatus{n}, now); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(sum.String(), "Unknown") || !strings.Contains(det.String(), "BGP state = Unknown") {
		t.Errorf("summary:\n%s\ndetail:\n%s\nwant the state Unknown in both", sum.String(), det.String())
	}
	n.State = bgp.StateOpenSent
	if got := stateOrPrefixes(n); got != "Opensent" {
		t.Errorf("stateOrPrefixes(opensent) = %q", got)
	}
}

// TestParsePrefixArg: an address goes to the daemon bare (looked up by
// longest match there), a prefix masked.
func TestParsePrefixArg(t *testing.T) {
	for arg, want := range map[string]string{"10.1.0.7": "10.1.0.7", "10.1.0.7/24": "10.1.0.0/24", "::ffff:10.1.0.7": "10.1.0.7"} {
		if got, err := parsePrefixArg(arg); err != nil || got != want {
			t.Errorf("parsePrefixArg(%q) = %q, %v; want %q", arg, got, err, want)
		}
	}
	if _, err := parsePrefixArg("nope"); err == nil {
		t.Error("parsePrefixArg(nope): no error")
	}
}

// TestBGPPrintNeighborDetail: `show ip bgp neighbors` prints a spoke's
// certificate, what it may announce and the other spokes' more specific
// networks it may not announce into, as the speaker filters it.
func TestBGPPrintNeighborDetail(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	n := bgp.NeighborStatus{
		SessionState: bgp.SessionState{Address: netip.MustParseAddr("172.16.1.1"), AS: 65001, State: bgp.StateEstablished,
			Since: now.Add(-90 * time.Second), Received: 3, Accepted: 1},
		Kind: bgp.KindSpoke, NBMA: netip.MustParseAddr("198.51.100.1"), Identity: "CN=spoke1", Source: "certificate",
		Networks: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16")}, MaxLen: 26,
		Excluded: []netip.Prefix{netip.MustParsePrefix("10.0.5.0/24"), netip.MustParsePrefix("10.0.9.0/24")},
		Refused:  2, RefusedTotal: 2,
	}
	var b strings.Builder
	if err := printBGPNeighbors(&b, []bgp.NeighborStatus{n}, now); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"BGP neighbor is 172.16.1.1, remote AS 65001, external link, spoke\n",
		"  Certificate CN=spoke1\n",
		"  May announce (from the certificate): 10.0.0.0/16 le 26\n",
		"  Except inside other spokes' more specific networks: 10.0.5.0/24, 10.0.9.0/24\n",
		"  Prefixes: 3 received, 1 accepted, 2 refused now (2 refused in all)\n",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("detail lacks %q:\n%s", want, b.String())
		}
	}
	n.Excluded = nil
	b.Reset()
	if err := printBGPNeighbors(&b, []bgp.NeighborStatus{n}, now); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(b.String(), "Except") {
		t.Errorf("a spoke without exclusions:\n%s", b.String())
	}
}
