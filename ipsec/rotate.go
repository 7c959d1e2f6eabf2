package ipsec

import (
	"context"
	"time"

	"go.uber.org/zap"
)

// reauthenticate moves this node's SAs onto its renewed certificate. An
// established IKE SA keeps the configuration it was set up with, so the
// old certificate, for its whole life (rekeys included): the hub, which
// reads a registration's certificate from its SA, would see the old one
// until it expired, then refuse. For every connection this node initiates
// (servers, shortcut peers) with SAs it set up before the reload, a new SA
// is set up with the connection as loaded now, the old ones are ended
// (make before break), and the engine registers again with every server.
func (m *Manager) reauthenticate(specs []connSpec) {
	ctx, cancel := context.WithTimeout(context.Background(), m.cfg.UpTimeout+5*time.Second)
	defer cancel()
	moved := 0
	for _, s := range specs {
		if s.kind == kindAccept || !s.remote.IsValid() {
			continue
		}
		var old []string
		for _, sa := range m.sasTo(s.remote) {
			if sa.Conn == s.name && sa.Initiator && sa.Up() {
				old = append(old, sa.IKEID)
			}
		}
		if len(old) == 0 {
			continue
		}
		if err := m.initiateWait(ctx, s.name); err != nil {
			// The old SA stays: the certificate it carries is still
			// valid, and the next SA will carry the new one.
			m.log.Warn("renewed certificate: a new SA failed, the old one stays", zap.String("conn", s.name), zap.Error(err))
			continue
		}
		for _, id := range old {
			m.terminate(ctx, id)
		}
		moved++
	}
	if moved == 0 {
		return
	}
	m.log.Info("renewed certificate: SAs set up again with it", zap.Int("connections", moved))
	if m.hooks.Restarted != nil {
		m.hooks.Restarted("certificate renewed")
	}
}
