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
