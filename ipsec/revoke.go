package ipsec

import (
	"context"
	"crypto/x509"
	"net/netip"
	"time"

	"go.uber.org/zap"
)

// RefusedRevoked is the kind of a refusal of a certificate a CRL in force
// revokes.
const RefusedRevoked = "certificate_revoked"

// revokedCert returns the revocation of a certificate by a CRL in force.
func (m *Manager) revokedCert(c *x509.Certificate) (revocation, bool) {
	m.mu.Lock()
	cs := m.creds
	m.mu.Unlock()
	if cs == nil {
		return revocation{}, false
	}
	return cs.crls.lookup(c)
}

// crlCheck is how often the CRL files are looked at: a new list is in
// force, and the peers it revokes cut off, within a second or two.
const crlCheck = time.Second

// watchCRLs looks at the CRL files every crlCheck until ctx ends, in a
// goroutine of its own so that charon's events never delay a revocation.
func (m *Manager) watchCRLs(ctx context.Context) {
	t := time.NewTicker(crlCheck)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			m.reloadCRLsIfChanged(ctx)
		}
	}
}

// reloadCRLsIfChanged is the CRL file watch: when a list changed it is
// read, verified and loaded into charon, and every peer it revokes is cut
// off (revokeSweep). A list that does not read or verify (half written,
// signed by another CA) is not taken; the failure is logged once until it
// changes, and the next look tries again.
func (m *Manager) reloadCRLsIfChanged(ctx context.Context) {
	m.mu.Lock()
	cur, cmd, connected := m.creds, m.cmd, m.connected
	m.mu.Unlock()
	if cur == nil || cur.crls == nil || !cur.crls.changed() || !connected {
		return
	}
	crls, err := readCRLs(m.cfg.CRL, cur.cas)
	if err != nil {
		if err.Error() != m.crlErr {
			m.log.Warn("the CRLs do not read; the lists in force stay", zap.Error(err))
			m.crlErr = err.Error()
		}
		return
	}
	m.crlErr = ""
	next := *cur
	next.crls = crls
	if !sameCRLs(crls, cur.crls) {
		if err := loadCRLs(ctx, cmd, crls); err != nil {
			m.log.Warn("loading the CRLs into charon", zap.Error(err))
			return
		}
	}
	m.mu.Lock()
	if m.creds == cur {
		m.creds = &next
	}
	m.mu.Unlock()
	if sameCRLs(crls, cur.crls) {
		return // touched, not changed
	}
	for _, l := range crls.infos(time.Now()) {
		m.log.Info("CRL in force", zap.String("file", l.File), zap.String("issuer", l.Issuer), zap.String("number", l.Number),
			zap.Int("revoked", l.Revoked), zap.Time("next_update", l.NextUpdate))
	}
	m.revokeSweep(ctx)
}

// revokeSweep ends the SAs of every peer whose certificate a CRL in force
// revokes, audits each with its serial, and tells the engine (Hooks.Revoked)
// to end the peer's registrations and bindings.
func (m *Manager) revokeSweep(ctx context.Context) {
	m.mu.Lock()
	sas := make([]SA, 0, m.sas.len())
	for _, sa := range m.sas.byID {
		sas = append(sas, sa)
	}
	m.mu.Unlock()
	ended := map[netip.Addr]string{}
	for _, sa := range sas {
		if sa.RemoteID == "" {
			continue
		}
		m.mu.Lock()
		der := m.certs[sa.RemoteID]
		m.mu.Unlock()
		if der == nil {
			der = m.fetchCert(ctx, sa.RemoteID)
		}
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			continue
		}
		r, ok := m.revokedCert(cert)
		if !ok {
			continue
		}
		reason := "certificate revoked (serial " + cert.SerialNumber.Text(16) + ", on " + r.crl.Issuer + "'s CRL)"
		m.audit.Info("certificate revoked: SA ended",
			zap.String("nbma", sa.RemoteHost.String()), zap.String("subject", sa.RemoteID), zap.String("serial", cert.SerialNumber.Text(16)),
			zap.String("ike_id", sa.IKEID), zap.String("crl_issuer", r.crl.Issuer), zap.String("crl_number", r.crl.Number),
			zap.Time("revoked_at", r.at))
		m.log.Warn("peer's certificate revoked: its SA ended", zap.Stringer("nbma", sa.RemoteHost), zap.String("subject", sa.RemoteID),
			zap.String("serial", cert.SerialNumber.Text(16)))
		m.stats.revoked.Add(1)
		m.mu.Lock()
		delete(m.verified, sa.IKEID)
		m.mu.Unlock()
		m.terminate(ctx, sa.IKEID)
		ended[sa.RemoteHost] = reason
	}
	for nbma, reason := range ended {
		if m.hooks.Revoked != nil {
			m.hooks.Revoked(nbma, reason)
		}
	}
}
