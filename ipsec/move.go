package ipsec

import (
	"context"
	"errors"
	"net/netip"
	"time"

	"go.uber.org/zap"
)

// LocalMoved tells the manager this node's NBMA address is nbma now (its
// uplink failed over): the connections it initiates are loaded again to
// start from nbma (local_addrs), and every SA whose local address is
// another is ended at once, by force — the old path may be dead, so no
// DELETE is waited for. It returns how many IKE SAs it ended, once charon
// has dropped them: the next PeerUp sets up new SAs from nbma. The peer
// loss is not reported through Hooks.PeerLost: the caller tells the
// engine itself.
func (m *Manager) LocalMoved(ctx context.Context, nbma netip.Addr) (int, error) {
	if !m.isConnected() {
		return 0, errNotConnected
	}
	m.mu.Lock()
	m.local = nbma
	var reload []connSpec
	for _, spec := range m.loaded {
		if spec.kind != kindAccept && spec.local != nbma {
			reload = append(reload, spec)
		}
	}
	var stale []SA
	for _, sa := range m.sas.byID {
		if sa.LocalHost.IsValid() && sa.LocalHost != nbma {
			stale = append(stale, sa)
		}
	}
	for _, sa := range stale {
		m.sas.del(sa.IKEID)
	}
	m.mu.Unlock()
	var errs []error
	for _, spec := range reload {
		if err := m.loadConn(ctx, spec); err != nil {
			errs = append(errs, err)
		}
	}
	for _, sa := range stale {
		m.forceTerminate(ctx, sa.IKEID)
		m.log.Info("SA from the old address ended", zap.Stringer("peer", sa.RemoteHost), zap.Stringer("local", sa.LocalHost), zap.Stringer("now", nbma))
	}
	m.syncAliases(ctx)
	return len(stale), errors.Join(errs...)
}

// SetLocal sets the address the connections this node initiates start from
// (local_addrs), for Start to load them with: this node's NBMA address as
// its uplinks route it. Once running, LocalMoved moves it.
func (m *Manager) SetLocal(nbma netip.Addr) {
	m.mu.Lock()
	m.local = nbma
	m.mu.Unlock()
}

// Local returns the address the connections this node initiates start
// from; invalid: any (charon's pick of the kernel's source).
func (m *Manager) Local() netip.Addr {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.local
}

// forceTerminate ends an IKE SA without waiting for the peer's answer to
// the DELETE.
func (m *Manager) forceTerminate(ctx context.Context, ikeID string) {
	m.mu.Lock()
	c := m.cmd
	m.mu.Unlock()
	if _, err := c.call(ctx, 2*time.Second, "terminate", msg("ike-id", ikeID, "force", "yes")); err != nil {
		m.log.Debug("terminate", zap.String("ike_id", ikeID), zap.Error(err))
	}
}
