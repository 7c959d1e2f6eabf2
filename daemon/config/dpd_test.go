package config

import (
	"testing"
	"time"

	"github.com/opendmvpn/dmvpn/ipsec"
)

// TestDefaultDPD: a hub without dpd_delay checks idle spokes every 30 s,
// a spoke keeps the package's 1 s, and a configured delay is kept.
func TestDefaultDPD(t *testing.T) {
	for _, tc := range []struct {
		role string
		set  time.Duration
		want time.Duration
	}{
		{"hub", 0, ipsec.DefaultHubDPDDelay},
		{"spoke", 0, 0}, // the ipsec package's default (1 s) applies
		{"hub", 2 * time.Second, 2 * time.Second},
	} {
		sec := &ipsec.Config{DPDDelay: tc.set}
		defaultDPD(sec, tc.role)
		if sec.DPDDelay != tc.want {
			t.Errorf("%s with %v: %v, want %v", tc.role, tc.set, sec.DPDDelay, tc.want)
		}
	}
	defaultDPD(nil, "hub") // ipsec: off
	if ipsec.DefaultHubDPDDelay != 30*time.Second || ipsec.DefaultDPDDelay != time.Second {
		t.Errorf("defaults %v (hub), %v (spoke): README says 30 s and 1 s", ipsec.DefaultHubDPDDelay, ipsec.DefaultDPDDelay)
	}
}
