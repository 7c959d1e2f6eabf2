package firewall

import (
	"context"
	"strings"
	"time"
)

// Status is the policy in force with every rule's counter: what show
// firewall prints.
type Status struct {
	// Active is false before the first apply (and after Close).
	Active bool `json:"active"`
	// ConfirmBy is when a pending apply rolls back unless confirmed.
	ConfirmBy time.Time     `json:"confirm_by,omitzero"`
	AppliedAt time.Time     `json:"applied_at,omitzero"`
	ApplyTook time.Duration `json:"apply_took_ns"`
	// The facts the policy was built with.
	Tunnel    string    `json:"tunnel"`
	TunnelMTU int       `json:"tunnel_mtu"`
	IPsec     IPsecMode `json:"ipsec"`
	IPsecTUN  string    `json:"ipsec_tun,omitempty"`
	Internet  []string  `json:"internet"`
	// LAN is the LAN zone; empty means every other interface.
	LAN []string `json:"lan"`
	// Baseline is true when the node runs the baseline (no firewall
	// section): no zones of its own, every other packet accepted.
	Baseline bool          `json:"baseline,omitempty"`
	Chains   []ChainStatus `json:"chains"`
	Stats    Stats         `json:"stats"`
	// CountersError says why the counters could not be read.
	CountersError string `json:"counters_error,omitempty"`
}

// ChainStatus is a chain with its rules' counters.
type ChainStatus struct {
	Name     string       `json:"name"`
	Type     string       `json:"type"`
	Hook     string       `json:"hook"`
	Priority int          `json:"priority"`
	Policy   string       `json:"policy"`
	Rules    []RuleStatus `json:"rules"`
}

// RuleStatus is a rule and its counter (since the last apply).
type RuleStatus struct {
	Name    string `json:"name"`
	Rule    string `json:"rule"`
	Comment string `json:"comment"`
	Counter
}

// Status returns the policy in force with its counters. The counters are
// read from the kernel without holding the manager's lock, so that a slow
// read never delays an apply or a rollback.
func (m *Manager) Status(ctx context.Context) Status {
	m.mu.Lock()
	p := Policy{Facts: m.facts}
	st := Status{Tunnel: p.Tunnel, TunnelMTU: p.TunnelMTU, IPsec: p.IPsec, IPsecTUN: p.IPsecTUN,
		Stats: m.stats, Chains: []ChainStatus{}, ConfirmBy: m.deadline}
	cur := m.cur
	m.mu.Unlock()
	if cur == nil {
		st.Internet = p.internet()
		return st
	}
	p.Config = cur.cfg
	st.Internet, st.LAN, st.Baseline = p.internet(), p.LAN, p.Baseline
	st.Active, st.AppliedAt, st.ApplyTook = true, cur.at, cur.took
	cs, err := m.table.Counters(ctx)
	if err != nil {
		st.CountersError = err.Error()
	}
	for _, c := range cur.rs.Chains {
		cst := ChainStatus{Name: c.Name, Type: c.Type, Hook: c.Hook, Priority: c.Priority, Policy: "accept", Rules: []RuleStatus{}}
		if c.Drop {
			cst.Policy = "drop"
		}
		for _, r := range c.Rules {
			cst.Rules = append(cst.Rules, RuleStatus{Name: r.Name, Rule: r.Short(), Comment: r.Comment, Counter: cs[r.Name]})
		}
		st.Chains = append(st.Chains, cst)
	}
	return st
}

// Short is the rule without its counter and comment: its matches and
// action as nft spells them.
func (r *Rule) Short() string {
	parts := make([]string, 0, len(r.Match)+1)
	for _, m := range r.Match {
		parts = append(parts, m.Text())
	}
	if a := r.Action.Text(); a != "" {
		parts = append(parts, a)
	}
	return strings.Join(parts, " ")
}
