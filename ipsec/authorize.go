package ipsec

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"go.uber.org/zap"

	"github.com/opendmvpn/dmvpn/internal/auditlimit"
	"github.com/opendmvpn/dmvpn/nhrp"
	"github.com/opendmvpn/dmvpn/nhrp/wire"
)

// Authorize decides on a registration by the certificate of the IKE SA it
// arrived over: accepted only if that certificate's OU=GRE= is the tunnel
// address the spoke claims. It fails closed: no SA from the address,
// several SAs with different identities, a certificate that cannot be
// found or read without doubt, no OU=GRE=, an expired certificate — all
// refused, the IKE SA terminated, the decision audited.
func (m *Manager) Authorize(ctx context.Context, r nhrp.Registration) nhrp.Verdict {
	v, kind, id, sa := m.decide(ctx, r)
	fields := []zap.Field{
		zap.String("nbma", r.NBMA.String()), zap.String("tunnel_address", r.Proto.Addr().String()),
	}
	if id != nil {
		fields = append(fields, zap.String("subject", id.Subject), zap.String("serial", id.Serial))
	} else if sa != nil {
		fields = append(fields, zap.String("subject", sa.RemoteID))
	}
	if sa != nil {
		fields = append(fields, zap.String("ike_id", sa.IKEID))
	}
	if v.Code == 0 {
		// Every accepted registration has its line: each needs the
		// peer's valid certificate over an SA, and a new SA or a renewed
		// certificate is what an audit must show.
		m.stats.accept()
		m.audit.Info("registration accepted", fields...)
		return v
	}
	lim := m.lineLimiter()
	defer m.linesDue(lim)
	m.stats.refuse(kind)
	// The audit line carries the certificate; the warning in the log is
	// the NHRP engine's, once a minute per client and reason, for every
	// refusal (this one, the policy's, its own). Every refusal is
	// counted; a peer repeating one within a second gets one line, within
	// the budget all refusals share.
	if lim.Allow(r.NBMA, "registration-refused-"+kind) {
		m.audit.Info("registration refused", append(fields, zap.String("reason", v.Reason), zap.String("kind", kind))...)
	}
	if sa != nil {
		m.terminateAfterReply(sa.IKEID)
	}
	return v
}

// LimitAuditWith makes the registration decision lines share lim, the
// daemon's refusal limiter, whose summaries of held-back lines the daemon
// writes; otherwise the manager limits them alone and writes its own.
func (m *Manager) LimitAuditWith(lim *auditlimit.Limiter) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.lines, m.sharedLines = lim, true
}

// lineLimiter returns the limiter of the decision lines.
func (m *Manager) lineLimiter() *auditlimit.Limiter {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.lines
}

// linesDue writes the summary of the decision lines held back, when the
// limiter is the manager's own and one is due.
func (m *Manager) linesDue(lim *auditlimit.Limiter) {
	m.mu.Lock()
	shared := m.sharedLines
	m.mu.Unlock()
	if shared {
		return
	}
	if s, ok := lim.Due(); ok {
		m.AuditRefusalsSuppressed(s)
	}
}

// refusalGrace is how long a refused spoke's SA is left up so that the
// negative Registration Reply reaches it (ending the SA at once would
// take the reply with it, and the spoke, hearing nothing, would come
// straight back).
const refusalGrace = 500 * time.Millisecond

// terminateAfterReply ends an IKE SA once the reply to a refused
// registration has gone out over it: one pending ending per SA, however
// many registrations it carries meanwhile (a peer repeating a refused
// registration costs no goroutine and no VICI call each).
func (m *Manager) terminateAfterReply(ikeID string) {
	m.mu.Lock()
	if m.terminating[ikeID] {
		m.mu.Unlock()
		return
	}
	m.terminating[ikeID] = true
	m.mu.Unlock()
	m.bg.Add(1)
	go func() {
		defer m.bg.Done()
		defer func() {
			m.mu.Lock()
			delete(m.terminating, ikeID)
			m.mu.Unlock()
		}()
		select {
		case <-time.After(refusalGrace):
		case <-m.done:
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		m.terminate(ctx, ikeID)
	}()
}

// Kinds of refusal: the label of the refusal counter (the audit line has
// the details).
const (
	RefusedNoSA        = "no_sa"
	RefusedIdentities  = "several_identities"
	RefusedNoCert      = "certificate_unavailable"
	RefusedBadIdentity = "identity_ambiguous"
	RefusedExpired     = "certificate_expired"
	RefusedNoGRE       = "no_gre_field"
	RefusedWrongGRE    = "gre_mismatch"
)

// decide returns the verdict (with the kind of refusal), the identity
// read and the SA it came over.
func (m *Manager) decide(ctx context.Context, r nhrp.Registration) (nhrp.Verdict, string, *Identity, *SA) {
	refuse := func(reason string) nhrp.Verdict {
		return nhrp.Verdict{Code: uint8(wire.CIEAdminProhibited), Reason: reason}
	}
	sas := m.upSAsSoon(ctx, r.NBMA)
	if len(sas) == 0 {
		return refuse("no IPsec SA from " + r.NBMA.String()), RefusedNoSA, nil, nil
	}
	sa := &sas[0]
	for _, other := range sas[1:] {
		if other.RemoteID != sa.RemoteID {
			for _, s := range sas {
				m.terminate(ctx, s.IKEID)
			}
			return refuse("several IPsec SAs with different identities from " + r.NBMA.String()), RefusedIdentities, nil, nil
		}
	}
	id, err := m.identityOf(ctx, sa.RemoteID, sa.upSeen)
	if errors.Is(err, errNoCert) {
		return refuse(err.Error()), RefusedNoCert, nil, sa
	}
	if err != nil {
		return refuse(err.Error()), RefusedBadIdentity, nil, sa
	}
	if v, kind := m.checkIdentity(id, netip.Addr{}); kind != "" {
		return v, kind, id, sa
	}
	if !r.Proto.IsSingleIP() || id.GRE[0] != r.Proto.Addr() {
		return refuse(fmt.Sprintf("certificate is for GRE=%s, registration claims %s", id.GRE[0], r.Proto)), RefusedWrongGRE, id, sa
	}
	return nhrp.Verdict{Identity: id.Subject, Attrs: id.Attrs(), Proven: true, Networks: id.NET}, "", id, sa
}

// eventWait is how long a packet from a peer without an SA up in the
// table waits for the event of its SA (the packet came over it, so the
// event is on its way) before the SAs are read from charon.
const eventWait = time.Second

// upSAsSoon returns the established SAs from a peer address, waiting for
// their event (eventWait), then reading charon's SAs, when the table has
// none: a burst of peers coming up sends registrations ahead of their
// events, and a read of every SA for each of them would be quadratic.
func (m *Manager) upSAsSoon(ctx context.Context, nbma netip.Addr) []SA {
	if sas := m.upSAsFrom(nbma); len(sas) > 0 || !m.isConnected() {
		return sas
	}
	wctx, cancel := context.WithTimeout(ctx, eventWait)
	m.awaitUp(wctx, nbma)
	cancel()
	if sas := m.upSAsFrom(nbma); len(sas) > 0 {
		return sas
	}
	m.refreshShared(ctx)
	return m.upSAsFrom(nbma)
}

// upSAsFrom returns the established SAs from a peer address.
func (m *Manager) upSAsFrom(nbma netip.Addr) []SA {
	var out []SA
	for _, sa := range m.sasTo(nbma) {
		if sa.Up() {
			out = append(out, sa)
		}
	}
	return out
}

// errNoCert says a peer's certificate is not in charon's cache (it holds
// 32): the SA is terminated so the peer authenticates again and its
// certificate comes back.
var errNoCert = errors.New("certificate not available, re-authenticating")

// captureWait bounds how long a registration waits for its peer's
// certificate to be captured.
const captureWait = time.Second

// identityOf reads the identity of an SA's peer from its certificate's
// DER: the one captured when the SA came up, else charon's cache.
func (m *Manager) identityOf(ctx context.Context, remoteID string, since time.Time) (*Identity, error) {
	// fresh: captured after the SA came up (a peer may have renewed its
	// certificate: same subject, new serial and dates).
	captured := func() (der []byte, fresh bool) {
		m.mu.Lock()
		defer m.mu.Unlock()
		return m.certs[remoteID], !m.certSeen[remoteID].Before(since)
	}
	der, fresh := captured()
	if der == nil || !fresh {
		if d := m.fetchCert(ctx, remoteID); d != nil {
			der, fresh = d, true
		}
	}
	// A registration can overtake the capture when many peers come up
	// at once (the capture follows charon's events): wait a little for
	// it before sending the peer round again.
	for deadline := time.Now().Add(captureWait); der == nil && time.Now().Before(deadline); {
		select {
		case <-ctx.Done():
			return nil, errNoCert
		case <-time.After(20 * time.Millisecond):
		}
		der, _ = captured()
	}
	if der == nil {
		return nil, errNoCert
	}
	if bytes.Equal(der, ambiguousCert) {
		return nil, fmt.Errorf("ipsec: two certificate subjects render as %q: the peer cannot be told apart", remoteID)
	}
	id, err := ParseIdentity(der)
	if err != nil {
		return nil, err
	}
	return id, nil
}

// fetchCert finds the certificate whose subject charon renders as
// remoteID: by subject first, else by scanning every certificate charon
// holds (a subject that does not re-parse, such as one with a comma in a
// value, is not found by the first).
func (m *Manager) fetchCert(ctx context.Context, remoteID string) []byte {
	m.mu.Lock()
	c := m.cmd
	m.mu.Unlock()
	return m.fetchCertOn(ctx, c, remoteID)
}

// fetchCertOn is fetchCert on a given session. It lists every
// certificate charon holds and keeps them all (by the subject as charon
// renders it, when only one renders so): charon caches the last 32 peer
// certificates only, and one listing captures a whole burst of peers.
func (m *Manager) fetchCertOn(ctx context.Context, c *viciConn, remoteID string) []byte {
	if c == nil || remoteID == "" {
		return nil
	}
	// A certificate listed is seen as of the start of the listing: a
	// listing that started before an SA came up may hold the certificate
	// its peer had before.
	start := time.Now()
	msgs, err := c.stream(ctx, 5*time.Second, "list-certs", "list-cert", msg("type", "X509"))
	if err != nil {
		return nil
	}
	// The subjects of the certificates the last listing held, rendered
	// then: most of a listing is the one before (charon's cache turns
	// over slowly), and parsing every certificate of every listing was a
	// fifth of dmvpnd's CPU with 1,000 SAs coming up.
	m.mu.Lock()
	prev := m.certListed
	m.mu.Unlock()
	listed := make(map[string]string, len(msgs)) // DER → subject as charon renders it
	bySubject := map[string][][]byte{}
	for _, mm := range msgs {
		var der []byte
		switch d := mm.Get("data").(type) {
		case string:
			der = []byte(d)
		case []byte:
			der = d
		}
		if len(der) == 0 {
			continue
		}
		s, ok := prev[string(der)]
		if !ok {
			var err error
			if s, err = renderLikeCharon(der); err != nil {
				continue
			}
		}
		listed[string(der)] = s
		bySubject[s] = append(bySubject[s], der)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := time.Now()
	// When each certificate first appeared in charon's cache: of two with
	// the same subject and dates (renewed within a second), the one that
	// appeared last is the one a peer just authenticated with. Kept for
	// the certificates listed and those kept in certs, and updated with
	// what changed since the last listing only: going over every kept
	// certificate on each listing made each peer that came up cost all of
	// them.
	if m.certFirst == nil {
		m.certFirst = map[string]time.Time{}
	}
	for k := range listed {
		if _, ok := m.certFirst[k]; !ok {
			m.certFirst[k] = now
		}
	}
	dropped := map[string]string{} // DER → subject: no longer listed, or no longer kept
	for k, s := range m.certListed {
		if _, ok := listed[k]; !ok {
			dropped[k] = s
		}
	}
	for s, ders := range bySubject {
		for _, der := range ders {
			had := m.certs[s]
			m.certs[s] = mergeCert(had, der, m.certFirst)
			if had != nil && !bytes.Equal(had, m.certs[s]) {
				dropped[string(had)] = s
			}
		}
		m.certSeen[s] = start
	}
	for k, s := range dropped {
		if _, ok := listed[k]; !ok && string(m.certs[s]) != k {
			delete(m.certFirst, k)
		}
	}
	m.certListed = listed
	if der := m.certs[remoteID]; der != nil && !bytes.Equal(der, ambiguousCert) {
		return der
	}
	return nil
}

// ambiguousCert marks a subject rendering that two different subjects
// share.
var ambiguousCert = []byte("ambiguous")

// mergeCert returns what to keep for a subject rendering that has have
// and now also der: the newer certificate when both carry the same
// subject (a renewed certificate: the later notBefore, else the one that
// first appeared later in charon's cache), ambiguousCert when the
// subjects differ yet render alike (no SA naming that text can be tied to
// either).
func mergeCert(have, der []byte, firstSeen map[string]time.Time) []byte {
	if have == nil || bytes.Equal(have, der) {
		return der
	}
	if bytes.Equal(have, ambiguousCert) {
		return have
	}
	a, err1 := x509.ParseCertificate(have)
	b, err2 := x509.ParseCertificate(der)
	if err1 != nil || err2 != nil || !bytes.Equal(a.RawSubject, b.RawSubject) {
		return ambiguousCert
	}
	switch {
	case b.NotBefore.Before(a.NotBefore):
		return have
	case a.NotBefore.Before(b.NotBefore):
		return der
	case firstSeen[string(have)].After(firstSeen[string(der)]):
		return have
	}
	return der // appeared later, or the one charon lists last
}

// certWorkers is how many sessions capture certificates in parallel.
const certWorkers = 4

// certWorker fetches the certificate of every peer as its SA comes up,
// while charon still has it cached: charon keeps the last 32 peer
// certificates only, so when many peers come up at once the capture must
// keep pace. Each worker has a VICI session of its own (the command
// session may be busy).
func (m *Manager) certWorker(ctx context.Context) {
	var c *viciConn
	defer func() {
		if c != nil {
			c.close()
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case q := <-m.certQ:
			// Captured again on every SA (the peer may have renewed its
			// certificate), unless a listing that started since its SA
			// came up has it: one listing holds the 32 certificates of
			// charon's cache, and when many peers come up at once the
			// queue must not cost a listing each, or it falls behind
			// the cache.
			m.mu.Lock()
			done := m.certs[q.id] != nil && !m.certSeen[q.id].Before(q.at)
			m.mu.Unlock()
			if done {
				continue
			}
			id := q.id
			if c == nil {
				var err error
				if c, err = dialVICI(ctx, m.cfg.Socket); err != nil {
					c = nil
					m.fetchCert(ctx, id) // the command session, then
					continue
				}
			}
			if m.fetchCertOn(ctx, c, id) == nil {
				c.close() // charon may have gone away: dial again next time
				c = nil
			}
		}
	}
}

// limitLog allows one log line per peer and reason a minute (SA
// refusals and aliases).
func (m *Manager) limitLog(nbma netip.Addr, reason string) bool {
	m.logMu.Lock()
	defer m.logMu.Unlock()
	k := nbma.String() + "|" + reason
	if t, ok := m.logged[k]; ok && time.Since(t) < time.Minute {
		return false
	}
	if len(m.logged) > 10000 {
		m.logged = map[string]time.Time{}
	}
	m.logged[k] = time.Now()
	return true
}
