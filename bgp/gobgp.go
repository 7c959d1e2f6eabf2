package bgp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	"github.com/osrg/gobgp/v4/pkg/packet/bgp"
	"github.com/osrg/gobgp/v4/pkg/server"
	"go.uber.org/zap"
	"go.uber.org/zap/exp/zapslog"
)

// GoBGP is the Speaker: GoBGP v4 in process, with no gRPC port.
type GoBGP struct {
	log *zap.Logger

	mu     sync.Mutex
	s      *server.BgpServer
	cfg    Config
	cancel context.CancelFunc
	origin map[netip.Prefix]uuid.UUID
	nbrs   map[netip.Addr]Neighbor
	// lastErr is why each session last went down.
	lastErr map[netip.Addr]string
	// spokePol is what exists of each spoke's policy objects.
	spokePol map[netip.Addr]spokePolicy
	// stopping silences GoBGP's complaint that a stopped server is not
	// running.
	stopping atomic.Bool
}

// quietHandler drops GoBGP's "failed to stop" record once the speaker
// stops on purpose.
type quietHandler struct {
	slog.Handler
	stopping *atomic.Bool
}

func (h *quietHandler) Handle(ctx context.Context, r slog.Record) error {
	if h.stopping.Load() && r.Message == "failed to stop BGP server" {
		return nil
	}
	return h.Handler.Handle(ctx, r)
}

func (h *quietHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &quietHandler{Handler: h.Handler.WithAttrs(as), stopping: h.stopping}
}

func (h *quietHandler) WithGroup(name string) slog.Handler {
	return &quietHandler{Handler: h.Handler.WithGroup(name), stopping: h.stopping}
}

// NewGoBGP returns a speaker that logs through log.
func NewGoBGP(log *zap.Logger) *GoBGP {
	if log == nil {
		log = zap.NewNop()
	}
	return &GoBGP{log: log, origin: map[netip.Prefix]uuid.UUID{}, nbrs: map[netip.Addr]Neighbor{}, lastErr: map[netip.Addr]string{},
		spokePol: map[netip.Addr]spokePolicy{}}
}

var v4uc = &api.Family{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST}

// Start starts GoBGP: listening on the tunnel address only, multipath on,
// graceful restart as configured, and the node's policies.
func (g *GoBGP) Start(ctx context.Context, cfg Config, notify func(SpeakerEvent)) error {
	lvl := &slog.LevelVar{}
	lvl.Set(slog.LevelWarn)
	// GoBGP logs every peer configuration and state change at info; the
	// controller logs what matters, GoBGP's warnings and errors stay.
	logger := slog.New(&quietHandler{Handler: zapslog.NewHandler(g.log.WithOptions(zap.IncreaseLevel(zap.WarnLevel)).Core()), stopping: &g.stopping})
	s := server.NewBgpServer(server.LoggerOption(logger, lvl))
	go s.Serve()
	global := &api.Global{
		Asn: cfg.AS, RouterId: cfg.RouterID.String(), ListenPort: int32(cfg.Port),
		ListenAddresses: []string{cfg.Tunnel.Addr().String()}, UseMultiplePaths: cfg.Multipath,
		RouteSelectionOptions: &api.RouteSelectionOptionsConfig{ExternalCompareRouterId: true},
	}
	if cfg.RestartTime > 0 {
		global.GracefulRestart = &api.GracefulRestart{Enabled: true, RestartTime: uint32(cfg.RestartTime / time.Second)}
	}
	if err := s.StartBgp(ctx, &api.StartBgpRequest{Global: global}); err != nil {
		s.Stop()
		return fmt.Errorf("bgp: starting GoBGP: %w", err)
	}
	g.mu.Lock()
	g.s, g.cfg = s, cfg
	g.spokePol = map[netip.Addr]spokePolicy{} // a new GoBGP has none
	g.mu.Unlock()
	if err := g.setPolicies(ctx, cfg); err != nil {
		s.Stop()
		return err
	}
	wctx, cancel := context.WithCancel(context.Background())
	err := s.WatchEvent(wctx, server.WatchEventMessageCallbacks{
		OnPeerUpdate: func(ev *apiutil.WatchEventMessage_PeerEvent, _ time.Time) {
			if ev.Type != apiutil.PEER_EVENT_STATE {
				return
			}
			st := ev.Peer.State
			if st.SessionState == bgp.BGP_FSM_IDLE && st.DisconnectReason != api.PeerState_DISCONNECT_REASON_IDLE_TIMER_EXPIRED &&
				st.DisconnectMessage != "" {
				g.mu.Lock()
				g.lastErr[st.NeighborAddress] = st.DisconnectMessage
				g.mu.Unlock()
			}
			notify(SpeakerEvent{Kind: PeerState, Peer: st.NeighborAddress, State: fsmState(st.SessionState), Reason: st.DisconnectMessage})
		},
		OnBestPath: func([]*apiutil.Path, time.Time) { notify(SpeakerEvent{Kind: BestChanged}) },
		OnPathUpdate: func(ps []*apiutil.Path, _ time.Time) {
			var last netip.Addr
			for _, p := range ps {
				if p.PeerAddress.IsValid() && p.PeerAddress != last {
					last = p.PeerAddress
					notify(SpeakerEvent{Kind: Received, Peer: p.PeerAddress})
				}
			}
		},
	}, server.WatchPeer(), server.WatchBestPath(false), server.WatchUpdate(false, "", ""))
	if err != nil {
		cancel()
		s.Stop()
		return fmt.Errorf("bgp: watching GoBGP: %w", err)
	}
	g.mu.Lock()
	g.cancel = cancel
	g.mu.Unlock()
	return nil
}

// Stop ends the sessions (gracefully: no NOTIFICATION to neighbours that
// agreed to graceful restart) and GoBGP.
func (g *GoBGP) Stop(ctx context.Context, graceful bool) error {
	g.mu.Lock()
	s, cancel := g.s, g.cancel
	g.s = nil
	g.mu.Unlock()
	if s == nil {
		return nil
	}
	if cancel != nil {
		cancel()
	}
	// StopBgp ends the sessions (gracefully or not); Stop then ends the
	// BFD server StartBgp started, and logs that BGP is not running
	// (dropped: it is stopped on purpose).
	err := s.StopBgp(ctx, &api.StopBgpRequest{AllowGracefulRestart: graceful})
	g.stopping.Store(true)
	s.Stop()
	return err
}

func (g *GoBGP) server() (*server.BgpServer, Config, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.s == nil {
		return nil, Config{}, errors.New("bgp: the speaker is not running")
	}
	return g.s, g.cfg, nil
}

// peer is the GoBGP configuration of a neighbour.
func (g *GoBGP) peer(cfg Config, n Neighbor) *api.Peer {
	af := &api.AfiSafi{Config: &api.AfiSafiConfig{Family: v4uc, Enabled: true}}
	if n.Kind == KindSpoke {
		// The limit is a spoke's: another hub carries every spoke's
		// routes, a server in phase 2 every spoke's specific routes.
		af.PrefixLimits = &api.PrefixLimit{Family: v4uc, MaxPrefixes: uint32(cfg.MaxPrefixes)}
	}
	p := &api.Peer{
		Conf: &api.PeerConf{NeighborAddress: n.Address.String(), PeerAsn: n.AS, Description: n.Kind.String()},
		Timers: &api.Timers{Config: &api.TimersConfig{
			ConnectRetry: uint64(cfg.ConnectRetry / time.Second), HoldTime: uint64(cfg.Hold / time.Second),
			KeepaliveInterval: uint64(cfg.Keepalive / time.Second), IdleHoldTimeAfterReset: uint64(cfg.ConnectRetry / time.Second),
		}},
		// One side dials (Neighbor.Passive). When both do, GoBGP v4.9.0
		// can hang: a side in OpenSent that gets the neighbour's OPEN on
		// its outgoing connection first (outgoingConnCh,
		// pkg/server/fsm.go:1593) resolves no collision; it goes to
		// OpenConfirm on that connection and leaves the incoming one open
		// and unread. When the other side does the same, each waits for a
		// KEEPALIVE on the connection the other no longer reads, and
		// OpenConfirm's hold timer (fsm.go:1696) and keepalive ticker
		// (:1664) use the negotiated hold time, which is only set on the
		// way to Established (stateChange, :641): 0, never firing, before
		// a first session. The lab hit it under load: a hub and a spoke
		// both in OpenConfirm through the whole 30 s of convergence.
		Transport: &api.Transport{LocalAddress: cfg.Tunnel.Addr().String(), PassiveMode: n.Passive},
		AfiSafis:  []*api.AfiSafi{af},
	}
	if cfg.Port > 0 {
		p.Transport.RemotePort = uint32(cfg.Port)
	}
	if cfg.RestartTime > 0 {
		p.GracefulRestart = &api.GracefulRestart{Enabled: true, RestartTime: uint32(cfg.RestartTime / time.Second), HelperOnly: cfg.HelperOnly}
		af.MpGracefulRestart = &api.MpGracefulRestart{Config: &api.MpGracefulRestartConfig{Enabled: true}}
	}
	if n.RRClient {
		p.RouteReflector = &api.RouteReflector{RouteReflectorClient: true, RouteReflectorClusterId: cfg.RouterID.String()}
	}
	return p
}

// SetNeighbor adds or changes a neighbour.
func (g *GoBGP) SetNeighbor(ctx context.Context, n Neighbor) error {
	s, cfg, err := g.server()
	if err != nil {
		return err
	}
	g.mu.Lock()
	old, had := g.nbrs[n.Address]
	g.mu.Unlock()
	if had && old.same(n) {
		return nil
	}
	if had && !old.sessionSame(n) {
		if err := g.DeleteNeighbor(ctx, n.Address); err != nil {
			return err
		}
		had = false
	}
	if err := g.setNeighborPolicy(ctx, s, cfg, n, had); err != nil {
		return err
	}
	if had {
		g.mu.Lock()
		g.nbrs[n.Address] = n
		g.mu.Unlock()
		// Only the filter changed: what the neighbour sent is still in
		// its Adj-RIB-In, judged again.
		return s.ResetPeer(ctx, &api.ResetPeerRequest{Address: n.Address.String(), Soft: true, Direction: api.ResetPeerRequest_DIRECTION_IN})
	}
	if err := s.AddPeer(ctx, &api.AddPeerRequest{Peer: g.peer(cfg, n)}); err != nil {
		return fmt.Errorf("bgp: adding neighbour %s: %w", n.Address, err)
	}
	g.mu.Lock()
	g.nbrs[n.Address] = n
	g.mu.Unlock()
	return nil
}

// DeleteNeighbor removes a neighbour, its routes and its filter.
func (g *GoBGP) DeleteNeighbor(ctx context.Context, addr netip.Addr) error {
	s, cfg, err := g.server()
	if err != nil {
		return err
	}
	g.mu.Lock()
	n, had := g.nbrs[addr]
	delete(g.nbrs, addr)
	delete(g.lastErr, addr)
	g.mu.Unlock()
	if !had {
		return nil
	}
	err = s.DeletePeer(ctx, &api.DeletePeerRequest{Address: addr.String()})
	return errors.Join(err, g.deleteNeighborPolicy(ctx, s, cfg, n))
}

// ResetNeighbor restarts a session (soft: route refresh both ways). A
// hard reset of a session held down for too many prefixes lets it come
// back, as vtysh's clear does.
func (g *GoBGP) ResetNeighbor(ctx context.Context, addr netip.Addr, soft bool) error {
	s, _, err := g.server()
	if err != nil {
		return err
	}
	if !soft {
		// A hard ResetPeer only sends a NOTIFICATION: a session shut
		// down for the prefix limit stays in that admin state (Idle
		// (PfxCt)) until enabled.
		held := false
		err := s.ListPeer(ctx, &api.ListPeerRequest{Address: addr.String()}, func(p *api.Peer) {
			held = held || p.GetState().GetAdminState() == api.PeerState_ADMIN_STATE_PFX_CT
		})
		if err != nil {
			return fmt.Errorf("bgp: reading the session of %s: %w", addr, err)
		}
		if held {
			if err := s.EnablePeer(ctx, &api.EnablePeerRequest{Address: addr.String()}); err != nil {
				return fmt.Errorf("bgp: enabling %s after the prefix limit: %w", addr, err)
			}
			g.mu.Lock()
			delete(g.lastErr, addr)
			g.mu.Unlock()
			return nil
		}
	}
	r := &api.ResetPeerRequest{Address: addr.String(), Soft: soft, Communication: "cleared by the operator"}
	if soft {
		r.Direction = api.ResetPeerRequest_DIRECTION_BOTH
	}
	return s.ResetPeer(ctx, r)
}

// SetOrigin makes this node's own routes exactly prefixes, next hop its
// tunnel address.
func (g *GoBGP) SetOrigin(ctx context.Context, prefixes []netip.Prefix) error {
	s, cfg, err := g.server()
	if err != nil {
		return err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	var del []uuid.UUID
	for p, id := range g.origin {
		if !slices.Contains(prefixes, p) {
			del = append(del, id)
			delete(g.origin, p)
		}
	}
	if len(del) > 0 {
		if err := s.DeletePath(apiutil.DeletePathRequest{UUIDs: del}); err != nil {
			return fmt.Errorf("bgp: withdrawing our routes: %w", err)
		}
	}
	nh, err := bgp.NewPathAttributeNextHop(cfg.Tunnel.Addr())
	if err != nil {
		return err
	}
	var errs []error
	for _, p := range prefixes {
		if _, ok := g.origin[p]; ok {
			continue
		}
		nlri, err := bgp.NewIPAddrPrefix(p)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		res, err := s.AddPath(apiutil.AddPathRequest{Paths: []*apiutil.Path{{
			Family: bgp.RF_IPv4_UC, Nlri: nlri,
			Attrs: []bgp.PathAttributeInterface{bgp.NewPathAttributeOrigin(bgp.BGP_ORIGIN_ATTR_TYPE_IGP), nh},
		}}})
		if err == nil && len(res) == 1 {
			err = res[0].Error
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("bgp: announcing %s: %w", p, err))
			continue
		}
		g.origin[p] = res[0].UUID
	}
	return errors.Join(errs...)
}

// Neighbors returns every session's state.
func (g *GoBGP) Neighbors(ctx context.Context) ([]SessionState, error) {
	s, _, err := g.server()
	if err != nil {
		return nil, err
	}
	var out []SessionState
	err = s.ListPeer(ctx, &api.ListPeerRequest{}, func(p *api.Peer) {
		if p.State == nil {
			return
		}
		addr, _ := netip.ParseAddr(p.State.NeighborAddress)
		st := SessionState{Address: addr, AS: p.State.PeerAsn, State: apiState(p.State.SessionState), Flaps: uint64(p.State.Flops)}
		if m := p.State.Messages; m != nil {
			if m.Received != nil {
				st.UpdatesIn = m.Received.Update
			}
			if m.Sent != nil {
				st.UpdatesOut = m.Sent.Update
			}
		}
		if t := p.Timers; t != nil && t.State != nil {
			if st.State == StateEstablished && t.State.Uptime != nil {
				st.Since = t.State.Uptime.AsTime()
			} else if t.State.Downtime != nil && t.State.Downtime.Seconds > 0 {
				st.Since = t.State.Downtime.AsTime()
			}
		}
		for _, af := range p.AfiSafis {
			if af.State != nil {
				st.Received += int(af.State.Received)
			}
		}
		g.mu.Lock()
		st.LastError = g.lastErr[addr]
		g.mu.Unlock()
		if p.State.AdminState == api.PeerState_ADMIN_STATE_PFX_CT {
			st.State = StateIdle
			st.PrefixLimit = true
			st.LastError = "maximum prefixes exceeded"
		}
		out = append(out, st)
	})
	if err != nil || len(out) == 0 {
		return out, err
	}
	// GoBGP's own accepted count (AfiSafiState.Accepted) leaves out only
	// what a per-neighbour policy refused; our filters are in the global
	// import policy, so what a neighbour got accepted is what of it is in
	// the RIB.
	accepted := map[netip.Addr]int{}
	err = s.ListPath(apiutil.ListPathRequest{Family: bgp.RF_IPv4_UC, TableType: api.TableType_TABLE_TYPE_GLOBAL},
		func(_ bgp.NLRI, paths []*apiutil.Path) {
			for _, p := range paths {
				if p.PeerAddress.IsValid() && !p.Withdrawal {
					accepted[p.PeerAddress]++
				}
			}
		})
	if err != nil {
		return out, fmt.Errorf("bgp: counting accepted routes: %w", err)
	}
	for i := range out {
		out[i].Accepted = accepted[out[i].Address]
	}
	return out, nil
}

func fsmState(s bgp.FSMState) string {
	switch s {
	case bgp.BGP_FSM_CONNECT:
		return StateConnect
	case bgp.BGP_FSM_ACTIVE:
		return StateActive
	case bgp.BGP_FSM_OPENSENT:
		return StateOpenSent
	case bgp.BGP_FSM_OPENCONFIRM:
		return StateOpenConfirm
	case bgp.BGP_FSM_ESTABLISHED:
		return StateEstablished
	}
	return StateIdle
}

func apiState(s api.PeerState_SessionState) string {
	switch s {
	case api.PeerState_SESSION_STATE_CONNECT:
		return StateConnect
	case api.PeerState_SESSION_STATE_ACTIVE:
		return StateActive
	case api.PeerState_SESSION_STATE_OPENSENT:
		return StateOpenSent
	case api.PeerState_SESSION_STATE_OPENCONFIRM:
		return StateOpenConfirm
	case api.PeerState_SESSION_STATE_ESTABLISHED:
		return StateEstablished
	}
	return StateIdle
}
