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

// watchedCerts lists this node's certificate, its CAs and the peers'
// certificates captured from their SAs.
func (m *Manager) watchedCerts() []certExpiry {
	m.mu.Lock()
	cs := m.creds
	peers := make(map[string][]byte, len(m.certs))
	for id, der := range m.certs {
		peers[id] = der
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
	certs := m.watchedCerts()
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
