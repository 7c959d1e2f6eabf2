package ipsec

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"time"
)

// SAs lists every SA charon holds, fresh, sorted by peer address.
func (m *Manager) SAs(ctx context.Context) ([]SA, error) {
	m.mu.Lock()
	c := m.cmd
	connected := m.connected
	m.mu.Unlock()
	if !connected || c == nil {
		return nil, errNotConnected
	}
	msgs, err := c.stream(ctx, 5*time.Second, "list-sas", "list-sa", msg("noblock", "yes"))
	if err != nil {
		return nil, err
	}
	now := time.Now()
	var out []SA
	for _, mm := range msgs {
		out = append(out, parseSAs(mm, now)...)
	}
	for i := range out {
		out[i].RemoteCertExpires = m.peerCertExpiry(out[i].RemoteID)
	}
	slices.SortFunc(out, func(a, b SA) int {
		if c := a.RemoteHost.Compare(b.RemoteHost); c != 0 {
			return c
		}
		return a.Established.Compare(b.Established)
	})
	return out, nil
}

// Clear terminates the SAs with a peer (its NBMA address) and returns how
// many. A peer that needs them (a server, a client that registers again)
// brings them up again.
func (m *Manager) Clear(ctx context.Context, peer netip.Addr) (int, error) {
	if !m.isConnected() {
		return 0, errNotConnected
	}
	sas := m.sasTo(peer)
	if len(sas) == 0 {
		m.refreshShared(ctx)
		sas = m.sasTo(peer)
	}
	if len(sas) == 0 {
		return 0, fmt.Errorf("ipsec: no SA with %s", peer)
	}
	for _, sa := range sas {
		m.terminate(ctx, sa.IKEID)
	}
	return len(sas), nil
}

// PeerSA returns the established SA with a peer, for `show dmvpn detail`.
func (m *Manager) PeerSA(peer netip.Addr) (SA, bool) {
	for _, sa := range m.sasTo(peer) {
		if sa.Up() {
			return sa, true
		}
	}
	return SA{}, false
}
