package config

import (
	"go.yaml.in/yaml/v4"

	"github.com/opendmvpn/dmvpn/ipsec"
	"github.com/opendmvpn/dmvpn/nhrp"
)

// Limits is the limits section: bounds on the state the node keeps and
// the work a sender can make it do. A zero field takes the default, sized
// for a hub of 100,000 spokes (nhrp.Default*, ipsec.DefaultAuditLog*).
type Limits struct {
	// MaxEntries bounds the NHRP cache; registrations beyond it are
	// refused (code 5), never evicted.
	MaxEntries int
	// MaxPeers bounds the NBMA peers the engine keeps.
	MaxPeers int
	// MaxPending bounds each kind of NHRP request in flight.
	MaxPending int
	// SourceRate (packets a second) and SourceBurst are each NBMA
	// source's token bucket; MaxSources bounds the sources tracked.
	SourceRate, SourceBurst, MaxSources int
	// MaxCIEs refuses an NHRP packet with more CIEs whole.
	MaxCIEs int
	// MaxHooks bounds the authorisation, verification and peer bring-up
	// calls running at once.
	MaxHooks int
	// AuditLogMaxMB rotates the audit log's file at this size (MiB),
	// keeping AuditLogKeep rotated files.
	AuditLogMaxMB, AuditLogKeep int
}

// limitKey is one key of the section: its field and range.
type limitKey struct {
	key    string
	v      *int
	lo, hi int
}

// keys are the section's keys, in the order they are rendered.
func (l *Limits) keys() []limitKey {
	return []limitKey{
		{"max_entries", &l.MaxEntries, 16, 1 << 24},
		{"max_peers", &l.MaxPeers, 16, 1 << 24},
		{"max_pending", &l.MaxPending, 1, 1 << 20},
		{"source_rate", &l.SourceRate, 1, 1 << 20},
		{"source_burst", &l.SourceBurst, 1, 1 << 20},
		{"max_sources", &l.MaxSources, 16, 1 << 24},
		{"max_cies", &l.MaxCIEs, 1, 4096},
		{"max_hooks", &l.MaxHooks, 1, 1 << 16},
		{"audit_log_max_mb", &l.AuditLogMaxMB, 1, 1 << 20},
		{"audit_log_keep", &l.AuditLogKeep, 1, 1000},
	}
}

// limitsSection decodes the limits section.
func (d *decoder) limitsSection(n *yaml.Node, p string, c *Config) {
	f := fields{}
	for _, k := range c.Limits.keys() {
		f[k.key] = func(n *yaml.Node, p string) { d.intField(n, p, k.lo, k.hi, k.v) }
	}
	d.mapping(n, p, f)
}

// renderLimits renders the keys the file sets; nil when it sets none.
func renderLimits(l Limits) *yaml.Node {
	m := mapNode()
	for _, k := range l.keys() {
		if *k.v != 0 {
			m.add(k.key, num(*k.v))
		}
	}
	if len(m.Content) == 0 {
		return nil
	}
	return m.Node
}

// nhrpLimits are the engine's limits.
func (l Limits) nhrpLimits() nhrp.Limits {
	return nhrp.Limits{
		MaxEntries: l.MaxEntries, MaxPeers: l.MaxPeers, MaxPending: l.MaxPending,
		SourceRate: float64(l.SourceRate), SourceBurst: l.SourceBurst, MaxSources: l.MaxSources,
		MaxCIEs: l.MaxCIEs, MaxHooks: l.MaxHooks,
	}
}

// applyIPsec puts the audit log's rotation in an ipsec configuration, and
// max_peers, which sizes a managed charon's IKE SA limit.
func (l Limits) applyIPsec(c *ipsec.Config) {
	if c == nil {
		return
	}
	c.AuditLogMaxSize = int64(l.AuditLogMaxMB) << 20
	c.AuditLogKeep = l.AuditLogKeep
	c.MaxPeers = l.MaxPeers
}
