package ipsec

import (
	"crypto/x509"
	"fmt"
	"time"

	"go.uber.org/zap"
)

// expiryThresholds are the days before expiry at which a certificate is
// warned about in the log, once each.
var expiryThresholds = []int{30, 7, 1}

// certExpiry is one certificate whose expiry is watched.
type certExpiry struct {
	key      string // what it is warned under
	whose    string // "this node", "CA", "peer"
	subject  string
	serial   string
	notAfter time.Time
}

// certKeep is how long the captured certificate of a peer without an SA
// is kept: a listing captures every certificate charon holds, and a
// peer's SA may come up, or a registration wait for its certificate, a
// little after.
const certKeep = 10 * time.Minute

// liveRemoteIDs are the remote identities of the SAs in the table (mu
// held).
func (m *Manager) liveRemoteIDs() map[string]struct{} {
	live := make(map[string]struct{}, m.sas.len())
	for _, sa := range m.sas.byID {
		if sa.RemoteID != "" {
			live[sa.RemoteID] = struct{}{}
		}
	}
	return live
}

// pruneCerts forgets the captured certificates of peers that have no SA
// and were last captured more than certKeep before now, with when they
// were seen and first listed (mu held): a hub's peers come and go, and
// their certificates were kept, and warned about, for ever.
func (m *Manager) pruneCerts(now time.Time, live map[string]struct{}) {
	for id, der := range m.certs {
		if _, ok := live[id]; ok || now.Sub(m.certSeen[id]) < certKeep {
			continue
		}
		if _, listed := m.certListed[string(der)]; !listed {
			delete(m.certFirst, string(der))
		}
		delete(m.certs, id)
		delete(m.certSeen, id)
	}
}

// watchedCerts lists this node's certificate, its CAs and the
// certificates of the peers that have an SA, after forgetting those of
// peers long gone (pruneCerts).
func (m *Manager) watchedCerts(now time.Time) []certExpiry {
	m.mu.Lock()
	cs := m.creds
	live := m.liveRemoteIDs()
	m.pruneCerts(now, live)
	peers := make(map[string][]byte, len(live))
	for id, der := range m.certs {
		if _, ok := live[id]; ok {
			peers[id] = der
		}
	}
	m.mu.Unlock()
	var out []certExpiry
	if cs != nil {
		for subj, t := range cs.expires {
			whose := "CA"
			if subj == cs.own.Subject {
				whose = "this node"
			}
			// Keyed by expiry too: a renewed certificate of the same
			// subject is warned about afresh.
			out = append(out, certExpiry{key: whose + "|" + subj + "|" + t.UTC().String(), whose: whose, subject: subj, notAfter: t})
		}
		for i := range out {
			if out[i].whose == "this node" {
				out[i].serial = cs.own.Serial
			}
		}
	}
	for id, der := range peers {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			continue
		}
		serial := c.SerialNumber.Text(16)
		out = append(out, certExpiry{key: "peer|" + id + "|" + serial, whose: "peer", subject: id, serial: serial, notAfter: c.NotAfter})
	}
	return out
}

// checkExpiry logs a warning when a watched certificate comes within 30,
// 7 and 1 days of its expiry (once each; a renewed certificate starts
// again), and an error once it has expired.
func (m *Manager) checkExpiry(now time.Time) {
	certs := m.watchedCerts(now)
	m.logMu.Lock()
	defer m.logMu.Unlock()
	warned := make(map[string]int, len(certs)) // only what is still watched
	for _, c := range certs {
		left := c.notAfter.Sub(now)
		level := -1 // index of the smallest threshold crossed
		for i, d := range expiryThresholds {
			if left <= time.Duration(d)*24*time.Hour {
				level = i
			}
		}
		if left <= 0 {
			level = len(expiryThresholds)
		}
		prev, seen := m.expiryWarned[c.key]
		if level < 0 || (seen && prev >= level) {
			if seen {
				warned[c.key] = prev
			}
			continue
		}
		warned[c.key] = level
		fields := []zap.Field{zap.String("certificate", c.whose), zap.String("subject", c.subject),
			zap.Time("not_after", c.notAfter)}
		if c.serial != "" {
			fields = append(fields, zap.String("serial", c.serial))
		}
		if left <= 0 {
			m.log.Error("certificate expired", fields...)
			continue
		}
		m.log.Warn(fmt.Sprintf("certificate expires in %s", DaysLeft(c.notAfter, now)), fields...)
	}
	m.expiryWarned = warned
}

// peerCertExpiry returns when the certificate a peer authenticated with
// (by its remote identity) expires, zero when it was not captured.
func (m *Manager) peerCertExpiry(remoteID string) time.Time {
	m.mu.Lock()
	der := m.certs[remoteID]
	m.mu.Unlock()
	if der == nil {
		return time.Time{}
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return time.Time{}
	}
	return c.NotAfter
}
