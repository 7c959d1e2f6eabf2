package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"time"

	"go.uber.org/zap"

	"github.com/opendmvpn/dmvpn/bgp"
)

// BGP endpoints.
const (
	// PathBGPSummary answers a BGPSummary.
	PathBGPSummary = "/v1/bgp/summary"
	// PathBGPRoutes answers []bgp.Route: the RIB, or with neighbor= and
	// table=received|advertised a neighbour's; prefix= selects one prefix.
	PathBGPRoutes = "/v1/bgp/routes"
	// PathBGPClear takes a BGPClearRequest.
	PathBGPClear = "/v1/bgp/clear"
)

// Routing is the BGP speaker of a node. *bgp.Controller implements it.
type Routing interface {
	Summary(ctx context.Context) (bgp.Summary, error)
	Routes(ctx context.Context, q bgp.RouteQuery) ([]bgp.Route, error)
	Clear(ctx context.Context, addr netip.Addr, soft bool) (int, error)
	Stats() bgp.Stats
}

// RoutingSource is implemented by a Daemon that may run BGP; BGP returns
// nil when it does not.
type RoutingSource interface {
	BGP() Routing
}

// BGPSummary is the answer of GET /v1/bgp/summary.
type BGPSummary struct {
	Enabled bool `json:"enabled"`
	bgp.Summary
}

// BGPClearRequest is the body of POST /v1/bgp/clear: one neighbour, or
// All of them; Soft asks for the routes again instead of restarting the
// session.
type BGPClearRequest struct {
	Neighbor netip.Addr `json:"neighbor,omitzero"`
	All      bool       `json:"all,omitempty"`
	Soft     bool       `json:"soft,omitempty"`
}

var errNoBGP = errors.New("BGP is not configured on this node")

func (s *Server) routingOf() Routing {
	if rs, ok := s.d.(RoutingSource); ok {
		return rs.BGP()
	}
	return nil
}

func (s *Server) bgpSummary(w http.ResponseWriter, r *http.Request) {
	b := s.routingOf()
	if b == nil {
		writeJSON(w, BGPSummary{})
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	sum, err := b.Summary(ctx)
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, err)
		return
	}
	writeJSON(w, BGPSummary{Enabled: true, Summary: sum})
}

func (s *Server) bgpRoutes(w http.ResponseWriter, r *http.Request) {
	b := s.routingOf()
	if b == nil {
		writeError(w, http.StatusConflict, errNoBGP)
		return
	}
	var q bgp.RouteQuery
	v := r.URL.Query()
	if p := v.Get("prefix"); p != "" {
		pfx, a, err := parsePrefixOrAddr(p)
		if err != nil {
			writeError(w, http.StatusBadRequest, err)
			return
		}
		q.Prefix, q.Address = pfx, a
	}
	if n := v.Get("neighbor"); n != "" {
		a, err := netip.ParseAddr(n)
		if err != nil {
			writeError(w, http.StatusBadRequest, fmt.Errorf("neighbor: %w", err))
			return
		}
		q.Neighbor = a
		switch v.Get("table") {
		case "received":
			q.Table = bgp.TableReceived
		case "advertised":
			q.Table = bgp.TableAdvertised
		default:
			writeError(w, http.StatusBadRequest, errors.New("table must be received or advertised with a neighbor"))
			return
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	rs, err := b.Routes(ctx, q)
	switch {
	case errors.Is(err, bgp.ErrNoNeighbor):
		writeError(w, http.StatusNotFound, err)
	case err != nil:
		writeError(w, http.StatusServiceUnavailable, err)
	default:
		writeJSON(w, rs)
	}
}

// parsePrefixOrAddr reads a prefix (looked up exactly), or an address
// (looked up by longest match, as vtysh does).
func parsePrefixOrAddr(s string) (netip.Prefix, netip.Addr, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked(), netip.Addr{}, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, netip.Addr{}, fmt.Errorf("prefix: %q is neither a prefix nor an address", s)
	}
	return netip.Prefix{}, a.Unmap(), nil
}

func (s *Server) bgpClear(w http.ResponseWriter, r *http.Request) {
	b := s.routingOf()
	if b == nil {
		writeError(w, http.StatusConflict, errNoBGP)
		return
	}
	var req BGPClearRequest
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<16))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil || req.All == req.Neighbor.IsValid() {
		writeError(w, http.StatusBadRequest, fmt.Errorf("clear ip bgp: a neighbour address or all is required (%v)", err))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	n, err := b.Clear(ctx, req.Neighbor, req.Soft)
	if errors.Is(err, bgp.ErrNoNeighbor) {
		writeError(w, http.StatusNotFound, err)
		return
	}
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, err)
		return
	}
	s.log.Info("BGP sessions cleared through the control API", zap.Stringer("neighbor", req.Neighbor),
		zap.Bool("soft", req.Soft), zap.Int("sessions", n))
	writeJSON(w, ClearResponse{Cleared: n})
}
