package ipsec

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/opendmvpn/dmvpn/nhrp"
)

// PeerUp brings up the SA with a peer before the engine uses it, and
// returns once its CHILD_SA is installed (or ctx ends). A hub does not
// initiate toward its clients: their SA came with their registration. A
// spoke initiates toward its servers (and checks their certificate) and,
// on demand, toward shortcut peers.
func (m *Manager) PeerUp(ctx context.Context, p nhrp.Peer) error {
	if !m.isConnected() {
		m.stats.failure("charon unreachable")
		return errNotConnected
	}
	if err := m.waitReleased(ctx, p.NBMA); err != nil {
		return err
	}
	if p.Role == "client" {
		if err := m.waitUp(ctx, p.NBMA); err != nil {
			m.stats.failure("no SA from client")
			return err
		}
		return nil
	}
	spec := connSpec{name: connPeer(p.NBMA), kind: kindPeer, remote: p.NBMA}
	if p.Role == "nhs" {
		spec = connSpec{name: connNHS(p.NBMA), kind: kindNHS, remote: p.NBMA, remoteID: m.cfg.HubIdentity}
	}
	if err := m.ensureConn(ctx, spec); err != nil {
		m.stats.failure("load-conn")
		return err
	}
	if !m.peerUp(p.NBMA) {
		// Both ends of a shortcut may initiate at once; the side with the
		// higher NBMA address gives the other a moment first, and the
		// duplicate check cleans up what still doubles.
		if p.Role != "nhs" && m.localAbove(p.NBMA) {
			wait, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
			err := m.waitUp(wait, p.NBMA)
			cancel()
			if err == nil {
				return m.checkPeer(ctx, p)
			}
		}
		up, cancel := context.WithTimeout(ctx, m.cfg.UpTimeout)
		defer cancel()
		// initiate reports a failed negotiation (the peer refused our
		// proposal or our certificate, its charon not ready yet) as soon
		// as charon knows, rather than at the end of UpTimeout.
		failed := make(chan error, 1)
		if !m.connecting(p.NBMA) {
			go func() { failed <- m.initiateWait(up, spec.name) }()
		}
		waited := make(chan error, 1)
		go func() { waited <- m.waitUp(up, p.NBMA) }()
		select {
		case err := <-waited:
			if err != nil {
				m.stats.failure("timeout")
				return err
			}
		case err := <-failed:
			if err != nil {
				// charon does not set up a CHILD_SA that would duplicate
				// the one the peer has just set up from its side (both
				// ends of a shortcut initiating at once) and fails the
				// initiate: that SA serves.
				grace := time.NewTimer(duplicateGrace)
				defer grace.Stop()
				select {
				case werr := <-waited:
					if werr == nil {
						return m.checkPeer(ctx, p)
					}
				case <-grace.C:
					cancel()
					<-waited
				}
				m.stats.failure("negotiation")
				return err
			}
			if err := <-waited; err != nil {
				m.stats.failure("timeout")
				return err
			}
		}
	}
	return m.checkPeer(ctx, p)
}

// duplicateGrace is how long a failed initiate waits for an SA the peer
// set up from its side to be reported up.
const duplicateGrace = 250 * time.Millisecond

// checkPeer verifies the certificate of a next hop server or a shortcut
// peer once per IKE SA and tunnel address: a server's must carry the
// configured identity or OU=GRE= equal to its tunnel address (when known);
// a shortcut peer's OU=GRE= must be the tunnel address the shortcut is
// for. A peer that fails is refused (the error wraps nhrp.ErrIdentity)
// and audited, and the SA closed when this node set it up for that
// address; an SA the peer set up, or one that proved another address
// already, stays (another node's claim about the peer must not cut it).
func (m *Manager) checkPeer(ctx context.Context, p nhrp.Peer) error {
	if p.Role != "nhs" && p.Role != "shortcut" {
		return nil
	}
	for _, sa := range m.sasTo(p.NBMA) {
		if !sa.Up() {
			continue
		}
		m.mu.Lock()
		proved, checked := m.verified[sa.IKEID]
		m.mu.Unlock()
		if checked && (!p.Proto.IsValid() || proved == p.Proto) {
			return nil
		}
		reason, kind := "", ""
		var id *Identity
		switch {
		case p.Role == "nhs" && m.cfg.HubIdentity != "":
			if sa.RemoteID != m.cfg.HubIdentity {
				reason, kind = fmt.Sprintf("server identity %q is not %q", sa.RemoteID, m.cfg.HubIdentity), RefusedWrongGRE
			}
		default:
			var err error
			id, err = m.identityOf(ctx, sa.RemoteID, sa.upSeen)
			switch {
			case errors.Is(err, errNoCert):
				reason, kind = err.Error(), RefusedNoCert
			case err != nil:
				reason, kind = err.Error(), RefusedBadIdentity
			default:
				if v, k := m.checkIdentity(id, p.Proto); k != "" {
					reason, kind = v.Reason, k
				}
			}
		}
		if reason != "" {
			what := "next hop server"
			if p.Role == "shortcut" {
				what = "shortcut peer"
			}
			m.stats.failure(p.Role + " identity")
			m.stats.refuseClaim(kind)
			fields := []zap.Field{zap.String("role", p.Role), zap.String("nbma", p.NBMA.String()),
				zap.String("tunnel_address", p.Proto.String()), zap.String("subject", sa.RemoteID),
				zap.String("ike_id", sa.IKEID), zap.String("reason", reason), zap.String("kind", kind)}
			closing := !checked && (sa.Initiator || p.Role == "nhs")
			fields = append(fields, zap.Bool("sa_closed", closing))
			if id != nil {
				fields = append(fields, zap.String("serial", id.Serial))
			}
			m.audit.Info(what+" refused", fields...)
			if m.limitLog(p.NBMA, reason) {
				m.log.Warn(what+" refused", fields...)
			}
			if closing {
				m.terminate(ctx, sa.IKEID)
			}
			return fmt.Errorf("ipsec: %s %s: %s: %w", what, p.NBMA, reason, nhrp.ErrIdentity)
		}
		got := p.Proto
		if id != nil && len(id.GRE) > 0 {
			got = id.GRE[0]
		}
		m.mu.Lock()
		m.verified[sa.IKEID] = got
		m.mu.Unlock()
		return nil
	}
	return fmt.Errorf("ipsec: no SA with %s", p.NBMA)
}

// PeerDown releases a peer: its SAs are terminated first, then its
// connection unloaded (an unloaded connection's SAs would live on). It
// does not block: the engine calls it from its own goroutine.
func (m *Manager) PeerDown(p nhrp.Peer, reason string) {
	done := make(chan struct{})
	m.mu.Lock()
	if m.releasing == nil {
		m.releasing = map[netip.Addr]chan struct{}{}
	}
	before := m.releasing[p.NBMA]
	m.releasing[p.NBMA] = done
	m.mu.Unlock()
	m.bg.Add(1)
	go func() {
		defer m.bg.Done()
		defer func() {
			m.mu.Lock()
			if m.releasing[p.NBMA] == done {
				delete(m.releasing, p.NBMA)
			}
			m.mu.Unlock()
			close(done)
		}()
		if before != nil {
			<-before
		}
		m.peerDown(p, reason)
	}()
}

// waitReleased waits until no PeerDown for nbma is in flight.
func (m *Manager) waitReleased(ctx context.Context, nbma netip.Addr) error {
	m.mu.Lock()
	ch := m.releasing[nbma]
	m.mu.Unlock()
	if ch == nil {
		return nil
	}
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (m *Manager) peerDown(p nhrp.Peer, reason string) {
	if !m.isConnected() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if p.Role == "client" && m.hub {
		for _, sa := range m.sasTo(p.NBMA) {
			m.terminate(ctx, sa.IKEID)
		}
		return
	}
	name := connPeer(p.NBMA)
	if p.Role == "nhs" {
		name = connNHS(p.NBMA)
	}
	for _, sa := range m.sasTo(p.NBMA) {
		if sa.Conn == name || (sa.Conn == connAccept && p.Role != "nhs") {
			m.terminate(ctx, sa.IKEID)
		}
	}
	m.mu.Lock()
	_, loaded := m.loaded[name]
	delete(m.loaded, name)
	c := m.cmd
	m.mu.Unlock()
	if loaded {
		if _, err := c.call(ctx, 2*time.Second, "unload-conn", msg("name", name)); err != nil {
			m.log.Debug("unload-conn", zap.String("conn", name), zap.Error(err))
		}
	}
	m.log.Debug("peer released", zap.Stringer("nbma", p.NBMA), zap.String("role", p.Role), zap.String("reason", reason))
}

func (m *Manager) isConnected() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.connected
}

// ensureConn loads a connection unless it is loaded.
func (m *Manager) ensureConn(ctx context.Context, spec connSpec) error {
	m.mu.Lock()
	_, ok := m.loaded[spec.name]
	m.mu.Unlock()
	if ok {
		return nil
	}
	return m.loadConn(ctx, spec)
}

// initiateWait starts a connection's CHILD_SA and waits for charon's
// verdict, on a VICI session of its own (the command session must not be
// held for a whole negotiation). nil: established; an error: failed, or
// ctx ended.
func (m *Manager) initiateWait(ctx context.Context, conn string) error {
	c, err := dialVICI(ctx, m.cfg.Socket)
	if err != nil {
		return err
	}
	defer c.close()
	d := time.Until(deadlineOf(ctx, m.cfg.UpTimeout))
	_, err = c.call(ctx, d, "initiate", msg("child", childName, "ike", conn,
		"timeout", strconv.Itoa(int(d/time.Millisecond)), "init-limits", "no", "loglevel", "-1"))
	if err != nil && ctx.Err() == nil {
		return fmt.Errorf("ipsec: bringing up %s: %w", conn, err)
	}
	return nil
}

// deadlineOf is ctx's deadline, or d from now.
func deadlineOf(ctx context.Context, d time.Duration) time.Time {
	if t, ok := ctx.Deadline(); ok {
		return t
	}
	return time.Now().Add(d)
}

// connecting reports whether an IKE SA with nbma is being set up.
func (m *Manager) connecting(nbma netip.Addr) bool {
	for _, sa := range m.sasTo(nbma) {
		if sa.State == "CONNECTING" || sa.State == "ESTABLISHED" {
			return true
		}
	}
	return false
}

// localAbove reports whether this node's address toward nbma sorts above
// nbma (the tie-break of simultaneous initiation).
func (m *Manager) localAbove(nbma netip.Addr) bool {
	for _, sa := range m.sasTo(nbma) {
		if sa.LocalHost.IsValid() {
			return sa.LocalHost.Compare(nbma) > 0
		}
	}
	return false
}

// dedup keeps one IKE SA per peer when both ends initiated at once: the
// node with the higher address terminates the SAs it initiated when the
// peer's own is up (several of its own: all but the newest). The lower
// node never does, so exactly one survives.
func (m *Manager) dedup(ctx context.Context, nbma netip.Addr) {
	var est []SA
	for _, sa := range m.sasTo(nbma) {
		if sa.Up() {
			est = append(est, sa)
		}
	}
	if len(est) < 2 || est[0].LocalHost.Compare(nbma) <= 0 {
		return
	}
	slices.SortFunc(est, func(a, b SA) int { return a.Established.Compare(b.Established) })
	peerOwn := slices.ContainsFunc(est, func(sa SA) bool { return !sa.Initiator })
	for i, sa := range est {
		if !sa.Initiator || (!peerOwn && i == len(est)-1) {
			continue
		}
		m.log.Info("duplicate SA with a peer, terminating ours", zap.Stringer("peer", nbma), zap.String("ike_id", sa.IKEID))
		m.terminate(ctx, sa.IKEID)
	}
}
