package control

import (
	"context"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
)

// Who may call the API. On the unix socket, the peer's credentials
// (SO_PEERCRED): root, dmvpnd's own user, or a member of the configured
// group. On TCP (only when configured), TLS always, and either a client
// certificate signed by the configured CA (mTLS) or the bearer token.

// TCPAuth configures the TCP listener: its TLS certificate and how a
// caller proves who it is. At least one of ClientCAs and Token is needed.
type TCPAuth struct {
	// Certificate is the server's TLS certificate.
	Certificate tls.Certificate
	// ClientCAs verify client certificates: a caller with one they sign
	// is let in (mTLS).
	ClientCAs *x509.CertPool
	// Token is the bearer token (Authorization: Bearer …) a caller
	// without a client certificate must send.
	Token []byte
}

// ErrNoAuth is returned by ListenTCP without any way to authenticate.
var ErrNoAuth = errors.New("the control API on TCP needs authentication: a token file or client certificates (mTLS)")

type peerKey struct{}
type peerErr struct{ error }

// tcpConn marks the connections of a TCP listener with its auth.
type tcpConn struct {
	net.Conn
	auth *TCPAuth
}

// tcpListener tags every accepted connection.
type tcpListener struct {
	net.Listener
	auth *TCPAuth
}

func (l tcpListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return tcpConn{Conn: c, auth: l.auth}, nil
}

type tcpKey struct{}

// connContext records who is at the other end of a connection: a unix
// peer's credentials, or the TCP listener's auth.
func connContext(ctx context.Context, c net.Conn) context.Context {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	if tc, ok := c.(tcpConn); ok {
		return context.WithValue(ctx, tcpKey{}, tc.auth)
	}
	return peerContext(ctx, c)
}

// UnixAccess says who may use the unix socket besides root and dmvpnd's
// own user: the members of Group (a gid; negative: nobody else).
type UnixAccess struct {
	Group int
}

// OwnerOnly lets root and dmvpnd's user in, nobody else: socket mode
// 0600.
var OwnerOnly = UnixAccess{Group: -1}

// allowedPeer reports whether a unix peer may call the API.
func (a UnixAccess) allowedPeer(p Peer) bool {
	return p.UID == 0 || p.UID == os.Geteuid() || (a.Group >= 0 && p.inGroup(a.Group))
}

// refusals rate-limits the log lines of refused callers: one a minute.
type refusals struct {
	mu   sync.Mutex
	last time.Time
	n    int
}

func (r *refusals) note(log *zap.Logger, who, why string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.n++
	if time.Since(r.last) < time.Minute {
		return
	}
	r.last = time.Now()
	log.Warn("control API call refused", zap.String("caller", who), zap.String("reason", why), zap.Int("refused_since_last_line", r.n))
	r.n = 0
}

// authorize lets a request through only from a caller the API accepts.
func (s *Server) authorize(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch v := r.Context().Value(peerKey{}).(type) {
		case Peer:
			s.mu.Lock()
			acc := s.unixAccess
			s.mu.Unlock()
			if !acc.allowedPeer(v) {
				why := fmt.Sprintf("uid %d (pid %d) is neither root, dmvpnd's user, nor in the control group", v.UID, v.PID)
				s.refused.note(s.log, fmt.Sprintf("pid %d uid %d", v.PID, v.UID), why)
				writeError(w, http.StatusForbidden, errors.New("permission denied: "+why))
				return
			}
			next.ServeHTTP(w, r)
			return
		case peerErr:
			writeError(w, http.StatusForbidden, fmt.Errorf("permission denied: the caller's credentials: %w", v.error))
			return
		}
		auth, _ := r.Context().Value(tcpKey{}).(*TCPAuth)
		if auth == nil {
			writeError(w, http.StatusForbidden, errors.New("permission denied: a connection dmvpnd cannot authenticate"))
			return
		}
		if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 {
			next.ServeHTTP(w, r)
			return
		}
		if len(auth.Token) > 0 {
			if tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok &&
				subtle.ConstantTimeCompare([]byte(tok), auth.Token) == 1 {
				next.ServeHTTP(w, r)
				return
			}
		}
		s.refused.note(s.log, r.RemoteAddr, "no valid token or client certificate")
		w.Header().Set("WWW-Authenticate", `Bearer realm="dmvpnd"`)
		writeError(w, http.StatusUnauthorized, errors.New("authentication required: a valid bearer token or client certificate"))
	})
}
