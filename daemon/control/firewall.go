package control

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/opendmvpn/dmvpn/firewall"
)

// Firewall endpoints.
const (
	PathFirewall          = "/v1/firewall"
	PathFirewallApply     = "/v1/firewall/apply"
	PathFirewallConfirm   = "/v1/firewall/confirm"
	PathFirewallTranslate = "/v1/firewall/translate"
)

// Firewall is the firewall part of a node: the policy in force, and the
// configuration file's firewall section applied (awall's activate),
// confirmed and translated.
type Firewall interface {
	// Status is the policy in force with its counters.
	Status(ctx context.Context) firewall.Status
	// Apply reads the configuration file and puts its firewall section in
	// force; with confirm > 0 it rolls back unless confirmed in time.
	Apply(ctx context.Context, confirm time.Duration) (FirewallApplyResponse, error)
	// Confirm keeps a pending apply.
	Confirm() error
	// Translate renders the file's firewall section (running: the one in
	// force) as the nft text the kernel will list.
	Translate(ctx context.Context, running bool) (string, error)
}

// FirewallSource is implemented by a Daemon that may run the firewall;
// Firewall returns nil when the node has no firewall section.
type FirewallSource interface {
	Firewall() Firewall
}

// FirewallResponse is the answer of GET /v1/firewall: the policy with
// its counters and, beside it, the data plane's own drops of GRE (a fast
// path that forwards outer GRE past netfilter counts them itself).
type FirewallResponse struct {
	Enabled bool             `json:"enabled"`
	Policy  *firewall.Status `json:"policy,omitempty"`
	// Dataplane is what the data plane dropped itself.
	Dataplane *FirewallDataplane `json:"dataplane,omitempty"`
}

// FirewallDataplane is the data plane's side of the firewall.
type FirewallDataplane struct {
	Backend string `json:"backend"`
	// FastPath is true when outer GRE is forwarded past netfilter (the
	// ebpf data plane): the policy never sees it, and the data plane's
	// counters below are where GRE in clear is dropped.
	FastPath bool `json:"fast_path"`
	// IngressRefused is GRE refused because it did not come under IPsec
	// (gre.Counters.Drops["ingress"]).
	IngressRefused uint64 `json:"ingress_refused"`
	// Counters are the fast path's own counters (gre.Counters.FastPath).
	Counters map[string]uint64 `json:"counters,omitempty"`
	// Drops are every drop of the data plane by reason.
	Drops map[string]uint64 `json:"drops,omitempty"`
}

// FirewallApplyRequest is the body of POST /v1/firewall/apply.
type FirewallApplyRequest struct {
	// Confirm is the confirmation time in nanoseconds; 0 applies for good.
	Confirm time.Duration `json:"confirm_ns,omitempty"`
}

// FirewallApplyResponse is the answer of POST /v1/firewall/apply.
type FirewallApplyResponse struct {
	firewall.Result
	// Ignored lists what else differs in the file (not applied: reload
	// does that).
	Ignored []string `json:"ignored,omitempty"`
}

// FirewallTranslateResponse is the answer of GET /v1/firewall/translate.
type FirewallTranslateResponse struct {
	Text string `json:"text"`
}

// errNoFirewall answers the firewall calls of a node without one.
var errNoFirewall = errors.New("the firewall is off on this node (no firewall section in its configuration)")

// firewallOf returns the node's firewall, or nil.
func (s *Server) firewallOf() Firewall {
	if fs, ok := s.d.(FirewallSource); ok {
		return fs.Firewall()
	}
	return nil
}

func (s *Server) firewallStatus(w http.ResponseWriter, r *http.Request) {
	fw := s.firewallOf()
	if fw == nil {
		writeJSON(w, FirewallResponse{})
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	st := fw.Status(ctx)
	resp := FirewallResponse{Enabled: true, Policy: &st}
	if c, ok := s.d.Counters(); ok {
		resp.Dataplane = &FirewallDataplane{Backend: s.d.Info().Dataplane, FastPath: c.FastPath != nil,
			IngressRefused: c.Drops["ingress"], Counters: c.FastPath, Drops: c.Drops}
	}
	writeJSON(w, resp)
}

func (s *Server) firewallApply(w http.ResponseWriter, r *http.Request) {
	fw := s.firewallOf()
	if fw == nil {
		writeError(w, http.StatusConflict, errNoFirewall)
		return
	}
	var req FirewallApplyRequest
	if !decodeRequest(w, r, "firewall apply", &req, true) {
		return
	}
	if req.Confirm < 0 || req.Confirm > 24*time.Hour {
		writeError(w, http.StatusBadRequest, fmt.Errorf("firewall apply: confirmation time %v out of range (up to 24h)", req.Confirm))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	res, err := fw.Apply(ctx, req.Confirm)
	if err != nil {
		writeError(w, http.StatusConflict, err)
		return
	}
	s.log.Info("firewall applied through the control API", zap.Int("rules", res.Rules),
		zap.Duration("took", res.Took), zap.Duration("confirm", req.Confirm))
	writeJSON(w, res)
}

func (s *Server) firewallConfirm(w http.ResponseWriter, r *http.Request) {
	fw := s.firewallOf()
	if fw == nil {
		writeError(w, http.StatusConflict, errNoFirewall)
		return
	}
	if err := fw.Confirm(); err != nil {
		writeError(w, http.StatusConflict, err)
		return
	}
	s.log.Info("firewall confirmed through the control API")
	writeJSON(w, struct{}{})
}

func (s *Server) firewallTranslate(w http.ResponseWriter, r *http.Request) {
	fw := s.firewallOf()
	if fw == nil {
		writeError(w, http.StatusConflict, errNoFirewall)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	text, err := fw.Translate(ctx, r.URL.Query().Get("running") == "true")
	if err != nil {
		writeError(w, http.StatusConflict, err)
		return
	}
	writeJSON(w, FirewallTranslateResponse{Text: text})
}
