package ipsec

import (
	"go.uber.org/zap"

	"github.com/opendmvpn/dmvpn/nhrp"
)

// AuditRefusal writes a registration refused before the certificate check
// (by the hub's registration policy: an address outside the tunnel network
// or the allow list) to the audit stream, with the kind of refusal, so
// that every refusal is in the audit log, not only the certificate's.
func (m *Manager) AuditRefusal(r nhrp.Registration, kind, reason string) {
	m.audit.Info("registration refused",
		zap.String("nbma", r.NBMA.String()), zap.String("tunnel_address", r.Proto.String()),
		zap.String("reason", reason), zap.String("kind", kind))
}
