package config

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/opendmvpn/dmvpn/ipsec"
	"github.com/opendmvpn/dmvpn/nhrp"
)

// TestLimits: the limits section reaches the NHRP engine and the audit
// log's rotation, renders back to itself, and keys left out take the
// engine's defaults.
func TestLimits(t *testing.T) {
	file := minimal + `limits:
  max_entries: 200000
  max_peers: 150000
  max_pending: 4096
  source_rate: 20
  source_burst: 50
  max_sources: 32768
  max_cies: 16
  max_hooks: 256
  audit_log_max_mb: 16
  audit_log_keep: 3
`
	c, err := Parse([]byte(inClear(file)), "f.yaml")
	if err != nil {
		t.Fatal(err)
	}
	want := nhrp.Limits{MaxEntries: 200000, MaxPeers: 150000, MaxPending: 4096, SourceRate: 20, SourceBurst: 50,
		MaxSources: 32768, MaxCIEs: 16, MaxHooks: 256}
	if diff := cmp.Diff(want, c.Daemon(Runtime{}).NHRP.Limits); diff != "" {
		t.Errorf("engine limits (-want +got):\n%s", diff)
	}
	sec := &ipsec.Config{}
	c.Limits.applyIPsec(sec)
	if sec.AuditLogMaxSize != 16<<20 || sec.AuditLogKeep != 3 {
		t.Errorf("audit rotation: %d bytes, %d kept", sec.AuditLogMaxSize, sec.AuditLogKeep)
	}
	if sec.MaxPeers != 150000 {
		t.Errorf("ipsec MaxPeers %d, want max_peers 150000 (it sizes charon's ikesa_limit)", sec.MaxPeers)
	}
	back, err := Parse(c.YAML(), "rendered")
	if err != nil {
		t.Fatalf("rendered: %v\n%s", err, c.YAML())
	}
	if diff := cmp.Diff(c.Limits, back.Limits); diff != "" {
		t.Errorf("render round trip (-file +rendered):\n%s", diff)
	}

	// Without the section: the engine's defaults.
	c, err = Parse([]byte(inClear(minimal)), "f.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Daemon(Runtime{}).NHRP.Limits; got != (nhrp.Limits{}) {
		t.Errorf("limits without the section: %+v, want zero (the engine's defaults)", got)
	}
}

// TestLimitsRefused: out-of-range and unknown keys are refused with their
// line, all at once.
func TestLimitsRefused(t *testing.T) {
	got := errorLines(t, inClear(minimal+`limits:
  max_entries: 3
  max_cies: 0
  source_rate: fast
  max_things: 1
`))
	want := []string{
		`line 10: limits.max_entries: 3 out of range 16-16777216`,
		`line 11: limits.max_cies: 0 out of range 1-4096`,
		`line 12: limits.source_rate: want a whole number, got the string "fast"`,
		`line 13: limits.max_things: unknown key "max_things" (known keys: audit_log_keep, audit_log_max_mb, max_cies, max_entries, max_hooks, max_peers, max_pending, max_sources, source_burst, source_rate)`,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("errors (-want +got):\n%s", diff)
	}
}
