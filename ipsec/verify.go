package ipsec

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"go.uber.org/zap"

	"github.com/opendmvpn/dmvpn/internal/auditlimit"
	"github.com/opendmvpn/dmvpn/nhrp"
	"github.com/opendmvpn/dmvpn/nhrp/wire"
)

// RefusedWrongNET is the kind of a claim refused because the prefix it
// advertises lies outside every OU=NET= of the certificate.
const RefusedWrongNET = "net_mismatch"

// Verify checks what an NHRP packet claims about the peer at c.NBMA
// against the certificate of that peer's SA: its OU=GRE= must be c.Proto,
// and a prefix advertised behind it must lie inside one of its OU=NET=
// when the certificate has any. It fails closed as Authorize does (no SA,
// several identities, a certificate that cannot be read without doubt,
// expired, no OU=GRE=, revoked). It implements nhrp.Verifier; the engine
// reports and audits a refusal (AuditRefusal), Verify counts it.
func (m *Manager) Verify(ctx context.Context, c nhrp.Claim) nhrp.Verdict {
	v, kind, _, _ := m.verify(ctx, c)
	if v.Code != 0 {
		m.stats.refuseClaim(kind)
	}
	return v
}

// verify returns the verdict on a claim, the kind of a refusal, the
// identity read and the SA it came from.
func (m *Manager) verify(ctx context.Context, c nhrp.Claim) (nhrp.Verdict, string, *Identity, *SA) {
	refuse := func(reason string) nhrp.Verdict {
		return nhrp.Verdict{Code: uint8(wire.CIEAdminProhibited), Reason: reason}
	}
	sas := m.upSAsSoon(ctx, c.NBMA)
	if len(sas) == 0 {
		return refuse("no IPsec SA with " + c.NBMA.String()), RefusedNoSA, nil, nil
	}
	sa := &sas[0]
	for _, other := range sas[1:] {
		if other.RemoteID != sa.RemoteID {
			return refuse("several IPsec SAs with different identities at " + c.NBMA.String()), RefusedIdentities, nil, nil
		}
	}
	id, err := m.identityOf(ctx, sa.RemoteID, sa.upSeen)
	if errors.Is(err, errNoCert) {
		return refuse(err.Error()), RefusedNoCert, nil, sa
	}
	if err != nil {
		return refuse(err.Error()), RefusedBadIdentity, nil, sa
	}
	if v, kind := m.checkIdentity(id, c.Proto); kind != "" {
		return v, kind, id, sa
	}
	if c.Prefix.IsValid() && !(c.Prefix.IsSingleIP() && c.Prefix.Addr() == c.Proto) && !inside(c.Prefix, id.NET) {
		return refuse(fmt.Sprintf("%s is outside the certificate's networks %v", c.Prefix, id.NET)), RefusedWrongNET, id, sa
	}
	return nhrp.Verdict{Identity: id.Subject, Attrs: id.Attrs(), Networks: id.NET}, "", id, sa
}

// checkIdentity applies the checks every use of a certificate shares:
// not expired, not revoked, an OU=GRE= equal to proto. kind is "" when
// they pass.
func (m *Manager) checkIdentity(id *Identity, proto netip.Addr) (nhrp.Verdict, string) {
	refuse := func(reason string) nhrp.Verdict {
		return nhrp.Verdict{Code: uint8(wire.CIEAdminProhibited), Reason: reason}
	}
	if r, ok := m.revokedCert(id.cert); ok {
		return refuse(fmt.Sprintf("certificate revoked (serial %s, on %s's CRL since %s)", id.Serial, r.crl.Issuer,
			r.at.UTC().Format(time.RFC3339))), RefusedRevoked
	}
	switch {
	case time.Now().After(id.NotAfter):
		return refuse("certificate expired"), RefusedExpired
	case len(id.GRE) == 0:
		return refuse("certificate has no OU=GRE="), RefusedNoGRE
	case proto.IsValid() && id.GRE[0] != proto:
		return refuse(fmt.Sprintf("certificate is for GRE=%s, the packet claims %s", id.GRE[0], proto)), RefusedWrongGRE
	}
	return nhrp.Verdict{}, ""
}

// inside reports whether p lies inside one of nets; a certificate without
// OU=NET= restricts nothing.
func inside(p netip.Prefix, nets []netip.Prefix) bool {
	if len(nets) == 0 {
		return true
	}
	for _, n := range nets {
		if n.Bits() <= p.Bits() && n.Contains(p.Addr()) {
			return true
		}
	}
	return false
}

// AuditPacketRefusal writes an NHRP packet the engine refused to the audit
// stream (an nhrp.EventPacketRefused): the check, the sender's NBMA
// address, what it claimed, why, and the subject and serial of the
// certificate of the sender's SA. It writes a line for every call: the
// caller limits them (the daemon's refusal audit, through an
// auditlimit.Limiter) before this work is done, and reports what it held
// back with AuditRefusalsSuppressed.
func (m *Manager) AuditPacketRefusal(ev nhrp.Event) {
	fields := []zap.Field{
		zap.String("check", ev.Refusal.String()), zap.String("nbma", ev.NBMA.String()),
		zap.String("claimed", ev.Proto.String()), zap.String("reason", ev.Reason),
	}
	for _, sa := range m.upSAsFrom(ev.NBMA) {
		fields = append(fields, zap.String("subject", sa.RemoteID), zap.String("ike_id", sa.IKEID))
		m.mu.Lock()
		der := m.certs[sa.RemoteID]
		m.mu.Unlock()
		if id, err := ParseIdentity(der); err == nil {
			fields = append(fields, zap.String("serial", id.Serial))
		}
		break
	}
	m.audit.Info("packet refused", fields...)
}

// AuditRefusalsSuppressed writes to the audit stream how many packet
// refusal lines the caller's limiter held back, by check, so that the
// audit log accounts for every refusal.
func (m *Manager) AuditRefusalsSuppressed(s auditlimit.Summary) {
	m.audit.Info("packet refusals suppressed", zap.String("summary", s.String()), zap.Uint64("suppressed", s.Total),
		zap.Duration("over", s.Over), zap.Any("by_check", s.ByCheck))
}
