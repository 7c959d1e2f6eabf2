package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"time"

	"go.uber.org/zap"

	"github.com/opendmvpn/dmvpn/ipsec"
)

// IPsec endpoints.
const (
	PathCrypto      = "/v1/crypto"
	PathCryptoClear = "/v1/crypto/clear"
	PathCryptoLog   = "/v1/crypto/log"
)

// Crypto is the IPsec part of a node. *ipsec.Manager implements it.
type Crypto interface {
	SAs(ctx context.Context) ([]ipsec.SA, error)
	Stats() ipsec.Stats
	Clear(ctx context.Context, peer netip.Addr) (int, error)
	// Log streams charon's IKE log (the lines about peer, when valid)
	// until ctx ends.
	Log(ctx context.Context, peer netip.Addr, fn func(ipsec.LogLine) error) error
}

// CryptoSource is implemented by a Daemon that may run IPsec; Crypto
// returns nil when IPsec is off.
type CryptoSource interface {
	Crypto() Crypto
}

// CryptoResponse is the answer of GET /v1/crypto.
type CryptoResponse struct {
	Enabled bool         `json:"enabled"`
	Stats   *ipsec.Stats `json:"stats,omitempty"`
	SAs     []ipsec.SA   `json:"sas"`
	// Error says why the SAs could not be listed (charon away or
	// restarting); the statistics are there all the same.
	Error string `json:"error,omitempty"`
}

// CryptoClearRequest is the body of POST /v1/crypto/clear.
type CryptoClearRequest struct {
	Peer netip.Addr `json:"peer"`
}

func (s *Server) crypto(w http.ResponseWriter, r *http.Request) {
	c := s.cryptoOf()
	if c == nil {
		writeJSON(w, CryptoResponse{SAs: []ipsec.SA{}})
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	st := c.Stats()
	resp := CryptoResponse{Enabled: true, Stats: &st, SAs: []ipsec.SA{}}
	if sas, err := c.SAs(ctx); err != nil {
		resp.Error = err.Error()
	} else if sas != nil {
		resp.SAs = sas
	}
	writeJSON(w, resp)
}

func (s *Server) cryptoClear(w http.ResponseWriter, r *http.Request) {
	c := s.cryptoOf()
	if c == nil {
		writeError(w, http.StatusConflict, errors.New("IPsec is not configured on this node"))
		return
	}
	var req CryptoClearRequest
	if !decodeRequest(w, r, "clear crypto", &req, false) {
		return
	}
	if !req.Peer.IsValid() {
		writeError(w, http.StatusBadRequest, errors.New("clear crypto: a peer address is required"))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	n, err := c.Clear(ctx, req.Peer)
	if err != nil {
		writeError(w, http.StatusNotFound, err)
		return
	}
	s.log.Info("IPsec SAs cleared through the control API", zap.Stringer("peer", req.Peer), zap.Int("sas", n))
	writeJSON(w, ClearResponse{Cleared: n})
}

// cryptoLog streams charon's log as JSON lines until the client goes
// away or the server closes; ?peer=ADDRESS keeps the lines about that
// peer.
func (s *Server) cryptoLog(w http.ResponseWriter, r *http.Request) {
	c := s.cryptoOf()
	if c == nil {
		writeError(w, http.StatusConflict, errors.New("IPsec is not configured on this node"))
		return
	}
	var peer netip.Addr
	if p := r.URL.Query().Get("peer"); p != "" {
		a, err := netip.ParseAddr(p)
		if err != nil {
			writeError(w, http.StatusBadRequest, fmt.Errorf("debug crypto: %q is not an IP address", p))
			return
		}
		peer = a.Unmap()
	}
	fl, ok := w.(http.Flusher)
	if !ok {
		writeError(w, http.StatusInternalServerError, errors.New("streaming unsupported"))
		return
	}
	done, ok := s.openStream(w)
	if !ok {
		return
	}
	defer done()
	ctx := r.Context() // ends when the client goes or the server closes
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	fl.Flush()
	enc := json.NewEncoder(w)
	err := c.Log(ctx, peer, func(l ipsec.LogLine) error {
		if err := enc.Encode(l); err != nil {
			return err
		}
		fl.Flush()
		return nil
	})
	if err != nil && ctx.Err() == nil {
		s.log.Debug("crypto log stream ended", zap.Error(err))
	}
}

// cryptoOf returns the node's IPsec, or nil.
func (s *Server) cryptoOf() Crypto {
	if cs, ok := s.d.(CryptoSource); ok {
		return cs.Crypto()
	}
	return nil
}
