package ipsec

import (
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// counters are the manager's metrics.
type counters struct {
	ikeUp, saDown, restarts atomic.Uint64
	revoked                 atomic.Uint64 // SAs ended because a CRL revoked the peer's certificate
	mu                      sync.Mutex
	refused                 map[string]uint64 // registrations refused, by reason
	claimsRefused           map[string]uint64 // packet claims refused, by reason
	accepted                uint64
	ikeFailures             map[string]uint64 // SA bring-up failures, by reason
}

func (c *counters) init() {
	c.refused = map[string]uint64{}
	c.claimsRefused = map[string]uint64{}
	c.ikeFailures = map[string]uint64{}
}

func (c *counters) refuse(reason string) {
	c.mu.Lock()
	c.refused[reason]++
	c.mu.Unlock()
}

func (c *counters) refuseClaim(reason string) {
	c.mu.Lock()
	c.claimsRefused[reason]++
	c.mu.Unlock()
}

func (c *counters) accept() {
	c.mu.Lock()
	c.accepted++
	c.mu.Unlock()
}

func (c *counters) failure(reason string) {
	c.mu.Lock()
	c.ikeFailures[reason]++
	c.mu.Unlock()
}

// Stats is a snapshot of the manager's state for metrics and the shell.
type Stats struct {
	Mode      Mode   `json:"mode"`
	Connected bool   `json:"connected"`
	CharonPID int    `json:"charon_pid,omitempty"`
	Restarts  uint64 `json:"charon_restarts"`
	// SAsByState counts IKE SAs by state.
	SAsByState map[string]int `json:"sas_by_state"`
	// Refused counts registrations refused, by reason; Accepted those
	// accepted.
	Refused  map[string]uint64 `json:"refused"`
	Accepted uint64            `json:"accepted"`
	// ClaimsRefused counts what NHRP packets claimed about a peer (a
	// requester, a responder, a prefix) that its certificate did not
	// prove, by reason.
	ClaimsRefused map[string]uint64 `json:"claims_refused"`
	// IKEFailures counts SA bring-ups that failed, by reason.
	IKEFailures map[string]uint64 `json:"ike_failures"`
	SADowns     uint64            `json:"sa_downs"`
	// Certificate is this node's certificate in force; CertExpires the
	// expiry of every loaded certificate (its own and the CAs') by
	// subject.
	Certificate *CertInfo            `json:"certificate,omitempty"`
	CertExpires map[string]time.Time `json:"cert_expires"`
	// CRLs are the certificate revocation lists in force (ipsec.crl),
	// each marked stale once its next update is past; Revoked counts the
	// SAs ended because a list revoked the peer's certificate.
	CRLs    []CRLInfo `json:"crls,omitempty"`
	Revoked uint64    `json:"revoked_ended"`
}

// Stats returns a snapshot.
func (m *Manager) Stats() Stats {
	st := Stats{Mode: m.mode, SAsByState: map[string]int{}, Refused: map[string]uint64{}, ClaimsRefused: map[string]uint64{},
		IKEFailures: map[string]uint64{}, CertExpires: map[string]time.Time{}}
	m.mu.Lock()
	if m.creds != nil {
		st.CRLs = m.creds.crls.infos(time.Now())
	}
	m.mu.Unlock()
	st.Revoked = m.stats.revoked.Load()
	m.mu.Lock()
	st.Connected = m.connected
	for _, sa := range m.sas.byID {
		st.SAsByState[sa.State]++
	}
	if m.creds != nil {
		for subj, t := range m.creds.expires {
			st.CertExpires[subj] = t
		}
		own := m.creds.own
		st.Certificate = &own
	}
	m.mu.Unlock()
	m.stats.mu.Lock()
	for k, v := range m.stats.refused {
		st.Refused[k] = v
	}
	for k, v := range m.stats.claimsRefused {
		st.ClaimsRefused[k] = v
	}
	for k, v := range m.stats.ikeFailures {
		st.IKEFailures[k] = v
	}
	st.Accepted = m.stats.accepted
	m.stats.mu.Unlock()
	st.Restarts = m.stats.restarts.Load()
	st.SADowns = m.stats.saDown.Load()
	if m.charon != nil {
		st.CharonPID = m.charon.pid()
	}
	return st
}

// sortedKeys returns a map's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
