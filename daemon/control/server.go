package control

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/opendmvpn/dmvpn/internal/version"
	"github.com/opendmvpn/dmvpn/nhrp"
)

// requestTimeout bounds every call into the engine.
const requestTimeout = 5 * time.Second

// idleTimeout closes a client's keep-alive connection idle this long.
const idleTimeout = time.Minute

// Server serves the API. Its listeners and streams stop with Close.
type Server struct {
	d   Daemon
	log *zap.Logger
	srv *http.Server

	ctx    context.Context // cancelled by Close: ends event streams
	cancel context.CancelFunc

	mu         sync.Mutex
	listeners  []net.Listener
	wg         sync.WaitGroup
	closed     bool
	unixAccess UnixAccess
	refused    refusals // callers refused, for the log
	// streams counts the event and log streams open, up to maxStreams
	// (MaxStreams; streams.go).
	streams, maxStreams int
}

// NewServer returns a server for d; Listen* start serving.
func NewServer(d Daemon, log *zap.Logger) *Server {
	if log == nil {
		log = zap.NewNop()
	}
	s := &Server{d: d, log: log, unixAccess: UnixAccess{Group: -1}, maxStreams: MaxStreams}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+PathStatus, s.status)
	mux.HandleFunc("GET "+PathCache, s.cache)
	mux.HandleFunc("GET "+PathShortcuts, s.shortcuts)
	mux.HandleFunc("GET "+PathNHS, s.nhs)
	mux.HandleFunc("GET "+PathPeers, s.peers)
	mux.HandleFunc("GET "+PathTraffic, s.traffic)
	mux.HandleFunc("POST "+PathClear, s.clear)
	mux.HandleFunc("GET "+PathRunningConfig, s.runningConfig)
	mux.HandleFunc("GET "+PathVersion, s.version)
	mux.HandleFunc("POST "+PathReload, s.reload)
	mux.HandleFunc("GET "+PathEvents, s.events)
	mux.HandleFunc("GET "+PathCrypto, s.crypto)
	mux.HandleFunc("POST "+PathCryptoClear, s.cryptoClear)
	mux.HandleFunc("GET "+PathCryptoLog, s.cryptoLog)
	mux.HandleFunc("GET "+PathFirewall, s.firewallStatus)
	mux.HandleFunc("POST "+PathFirewallApply, s.firewallApply)
	mux.HandleFunc("POST "+PathFirewallConfirm, s.firewallConfirm)
	mux.HandleFunc("GET "+PathFirewallTranslate, s.firewallTranslate)
	mux.HandleFunc("GET "+PathUplinks, s.uplinks)
	mux.HandleFunc("GET "+PathBGPSummary, s.bgpSummary)
	mux.HandleFunc("GET "+PathBGPRoutes, s.bgpRoutes)
	mux.HandleFunc("POST "+PathBGPClear, s.bgpClear)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, fmt.Errorf("no such API call: %s %s", r.Method, r.URL.Path))
	})
	s.srv = &http.Server{
		Handler:           s.authorize(mux),
		ReadHeaderTimeout: 5 * time.Second,
		// A connection idle between requests is closed (streams are
		// not idle: they are one request, bounded by MaxStreams).
		IdleTimeout: idleTimeout,
		BaseContext: func(net.Listener) context.Context { return s.ctx },
		ConnContext: connContext,
		ErrorLog:    zap.NewStdLog(log),
	}
	return s
}

// ListenUnix serves on a unix socket at path, creating its directory. The
// socket file is created with mode 0600 (0660 and the access group when
// access names one) — set before bind, never changed after — and every
// caller's credentials are checked: root, dmvpnd's user, or a member of
// the group. A stale socket file is replaced; a live one (another
// daemon) is an error.
func (s *Server) ListenUnix(path string, access UnixAccess) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("control socket directory: %w", err)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("control socket %s: another dmvpnd is listening there", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("control socket %s: removing the stale socket: %w", path, err)
	}
	mode := os.FileMode(0o600)
	if access.Group >= 0 {
		mode = 0o660
	}
	l, err := listenUnixSocket(path, mode, access.Group)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.unixAccess = access
	s.mu.Unlock()
	return s.serve(l)
}

// ListenTCP serves on a TCP address as well (only when configured), over
// TLS only, to callers with a client certificate auth's CAs signed or
// auth's bearer token.
func (s *Server) ListenTCP(addr string, auth TCPAuth) error {
	if auth.ClientCAs == nil && len(auth.Token) == 0 {
		return ErrNoAuth
	}
	if len(auth.Certificate.Certificate) == 0 {
		return errors.New("the control API on TCP needs a TLS certificate")
	}
	tc := &tls.Config{Certificates: []tls.Certificate{auth.Certificate}, MinVersion: tls.VersionTLS12}
	if auth.ClientCAs != nil {
		tc.ClientCAs, tc.ClientAuth = auth.ClientCAs, tls.VerifyClientCertIfGiven
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("control API on %s: %w", addr, err)
	}
	a := auth
	return s.serve(tls.NewListener(tcpListener{Listener: l, auth: &a}, tc))
}

// Serve serves on a unix socket listener the caller opened (tests):
// its callers' credentials are checked as on ListenUnix's. Connections
// of any other kind are refused (they cannot be authenticated).
func (s *Server) Serve(l net.Listener) error { return s.serve(l) }

func (s *Server) serve(l net.Listener) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		l.Close()
		return errors.New("control: server closed")
	}
	s.listeners = append(s.listeners, l)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := s.srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Warn("control API stopped serving", zap.String("listener", l.Addr().String()), zap.Error(err))
		}
	}()
	return nil
}

// Addrs returns the addresses served (a TCP listener's port chosen by the
// kernel, for tests).
func (s *Server) Addrs() []net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]net.Addr, len(s.listeners))
	for i, l := range s.listeners {
		out[i] = l.Addr()
	}
	return out
}

// Close ends event streams, stops serving (waiting up to 5 s for requests
// in progress) and removes the socket file.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	s.wg.Wait()
	return err
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, code int, err error) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(ErrorResponse{Error: err.Error()})
}

// decodeRequest reads a call's JSON body into v (64 KiB at most, no
// unknown fields; an empty body leaves v as it is when emptyOK) and
// answers 400 naming the call when it cannot: it returns false then.
func decodeRequest(w http.ResponseWriter, r *http.Request, call string, v any, emptyOK bool) bool {
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<16))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil && !(emptyOK && errors.Is(err, io.EOF)) {
		writeError(w, http.StatusBadRequest, fmt.Errorf("%s: bad request: %w", call, err))
		return false
	}
	return true
}

// errStarting answers while the node is not up yet.
var errStarting = errors.New("dmvpnd is starting: the tunnel is not up yet")

// engine returns the engine and a context bounded by requestTimeout, or
// answers 503.
func (s *Server) engine(w http.ResponseWriter, r *http.Request) (Engine, context.Context, context.CancelFunc, bool) {
	e := s.d.Engine()
	if e == nil {
		writeError(w, http.StatusServiceUnavailable, errStarting)
		return nil, nil, nil, false
	}
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	return e, ctx, cancel, true
}

// engineError answers a failed engine call.
func engineError(w http.ResponseWriter, err error) {
	code := http.StatusInternalServerError
	if errors.Is(err, nhrp.ErrStopped) {
		code = http.StatusServiceUnavailable
	} else if errors.Is(err, context.DeadlineExceeded) {
		code = http.StatusGatewayTimeout
	}
	writeError(w, code, err)
}

// answer serves a read of the engine: it asks the engine for its status
// (the interface's name) and get's value, and writes what respond makes
// of both.
func answer[T any](s *Server, w http.ResponseWriter, r *http.Request, get func(Engine, context.Context) (T, error), respond func(nhrp.Status, T) any) {
	if st, v, ok := read(s, w, r, get); ok {
		writeJSON(w, respond(st, v))
	}
}

// read asks the engine for its status and get's value; on failure it has
// written the error and returns false.
func read[T any](s *Server, w http.ResponseWriter, r *http.Request, get func(Engine, context.Context) (T, error)) (nhrp.Status, T, bool) {
	var zero T
	e, ctx, cancel, ok := s.engine(w, r)
	if !ok {
		return nhrp.Status{}, zero, false
	}
	defer cancel()
	st, err := e.Status(ctx)
	if err != nil {
		engineError(w, err)
		return nhrp.Status{}, zero, false
	}
	v, err := get(e, ctx)
	if err != nil {
		engineError(w, err)
		return nhrp.Status{}, zero, false
	}
	return st, v, true
}

func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	answer(s, w, r, func(Engine, context.Context) (struct{}, error) { return struct{}{}, nil },
		func(st nhrp.Status, _ struct{}) any { return Status{Info: s.d.Info(), NHRP: st} })
}

func (s *Server) cacheEntries(w http.ResponseWriter, r *http.Request, keep func(nhrp.CacheEntry) bool) {
	streamList(s, w, r, "entries", func(e Engine, ctx context.Context, fn func([]nhrp.CacheEntry) error) error {
		return e.CacheEach(ctx, func(c []nhrp.CacheEntry) error {
			kept := c[:0]
			for _, en := range c {
				if keep(en) {
					kept = append(kept, en)
				}
			}
			return fn(kept)
		})
	})
}

// listTimeout bounds a listing streamed from the engine (the engine is
// read in chunks while the client reads the answer).
const listTimeout = 2 * time.Minute

// listRest and maxListRest pace a streamed listing: the rest after each
// chunk, as a multiple of the time the chunk took, and at most.
const (
	listRest    = 4
	maxListRest = 40 * time.Millisecond
)

// streamList writes {"interface": ..., field: [...]}, the list read from
// the engine chunk by chunk (each, see nhrp.Engine.CacheEach) and encoded
// element by element as it goes out (through a 64 KiB buffer): a list of
// 100,000 is never held whole, neither as values nor as JSON, and a
// client can decode it element by element (Client.CacheEach). A failure
// before the first element is answered as an error; after, the answer is
// cut short (the client sees a truncated list).
func streamList[T any](s *Server, w http.ResponseWriter, r *http.Request, field string, each func(Engine, context.Context, func([]T) error) error) {
	st, _, ok := read(s, w, r, func(Engine, context.Context) (struct{}, error) { return struct{}{}, nil })
	if !ok {
		return
	}
	e := s.d.Engine()
	if e == nil {
		writeError(w, http.StatusServiceUnavailable, errStarting)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), listTimeout)
	defer cancel()
	var bw *bufio.Writer
	var enc *json.Encoder
	n := 0
	start := func() {
		w.Header().Set("Content-Type", "application/json")
		bw = bufio.NewWriterSize(w, 64<<10)
		name, _ := json.Marshal(st.Interface)
		fmt.Fprintf(bw, "{\n  \"interface\": %s,\n  %q: [", name, field)
		enc = json.NewEncoder(bw)
		enc.SetIndent("    ", "  ")
	}
	errWrite := errors.New("client gone")
	last := time.Now()
	err := each(e, ctx, func(c []T) error {
		if bw == nil {
			start()
		}
		defer func() {
			// The listing rests listRest times as long as reading and
			// encoding the chunk took before it asks for the next one: it
			// takes at most about a fifth of a processor from the engine
			// answering registrations meanwhile (and paces the client
			// decoding it, often on the same machine).
			took := time.Since(last)
			time.Sleep(min(listRest*took, maxListRest))
			last = time.Now()
		}()
		for _, v := range c {
			if n > 0 {
				bw.WriteByte(',')
			}
			bw.WriteString("\n    ")
			if enc.Encode(v) != nil {
				return errWrite
			}
			n++
		}
		return nil
	})
	if err != nil && bw == nil {
		engineError(w, err)
		return
	}
	if err != nil {
		return // cut short
	}
	if bw == nil {
		start()
	}
	if n > 0 {
		bw.WriteString("  ")
	}
	bw.WriteString("]\n}\n")
	_ = bw.Flush()
}

func (s *Server) cache(w http.ResponseWriter, r *http.Request) {
	s.cacheEntries(w, r, func(nhrp.CacheEntry) bool { return true })
}

func (s *Server) shortcuts(w http.ResponseWriter, r *http.Request) {
	s.cacheEntries(w, r, func(e nhrp.CacheEntry) bool { return e.Type == nhrp.TypeShortcut })
}

func (s *Server) nhs(w http.ResponseWriter, r *http.Request) {
	answer(s, w, r, Engine.NHS, func(st nhrp.Status, servers []nhrp.NHSStatus) any {
		if servers == nil {
			servers = []nhrp.NHSStatus{}
		}
		return NHSResponse{Interface: st.Interface, Servers: servers}
	})
}

func (s *Server) peers(w http.ResponseWriter, r *http.Request) {
	streamList(s, w, r, "peers", Engine.PeersEach)
}

func (s *Server) traffic(w http.ResponseWriter, r *http.Request) {
	answer(s, w, r, Engine.Traffic, func(st nhrp.Status, t nhrp.Traffic) any {
		out := TrafficResponse{Interface: st.Interface, NHRP: t}
		if c, ok := s.d.Counters(); ok {
			out.Dataplane = &c
		}
		return out
	})
}

func (s *Server) clear(w http.ResponseWriter, r *http.Request) {
	var req ClearRequest
	if !decodeRequest(w, r, "clear", &req, false) {
		return
	}
	e, ctx, cancel, ok := s.engine(w, r)
	if !ok {
		return
	}
	defer cancel()
	n, err := e.Clear(ctx, nhrp.ClearRequest{Dynamic: req.Dynamic, Shortcut: req.Shortcut, Peer: req.Peer})
	if err != nil {
		if errors.Is(err, nhrp.ErrStopped) || ctx.Err() != nil {
			engineError(w, err)
		} else {
			writeError(w, http.StatusBadRequest, err)
		}
		return
	}
	s.log.Info("NHRP cache cleared through the control API", zap.Int("entries", n),
		zap.Bool("dynamic", req.Dynamic), zap.Bool("shortcut", req.Shortcut), zap.Stringer("peer", req.Peer))
	writeJSON(w, ClearResponse{Cleared: n})
}

func (s *Server) runningConfig(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, RunningConfigResponse{File: s.d.Info().ConfigFile, YAML: string(s.d.RunningConfig())})
}

func (s *Server) version(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, VersionResponse{Daemon: version.Get(), Started: s.d.Info().Started})
}

func (s *Server) reload(w http.ResponseWriter, r *http.Request) {
	var req ReloadRequest
	if !decodeRequest(w, r, "reload", &req, true) {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	changes, err := s.d.Reload(ctx, req.DryRun)
	if err != nil {
		resp := ErrorResponse{Error: err.Error()}
		var re interface{ Reasons() []string }
		if errors.As(err, &re) {
			resp.Reasons = re.Reasons()
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusConflict)
		_ = json.NewEncoder(w).Encode(resp)
		return
	}
	if changes == nil {
		changes = []string{}
	}
	if !req.DryRun {
		s.log.Info("configuration reloaded through the control API", zap.Strings("changes", changes))
	}
	writeJSON(w, ReloadResponse{DryRun: req.DryRun, Changes: changes})
}

// events streams engine events as JSON lines until the client goes away
// or the server closes. ?packets=true adds every NHRP packet.
func (s *Server) events(w http.ResponseWriter, r *http.Request) {
	e := s.d.Engine()
	if e == nil {
		writeError(w, http.StatusServiceUnavailable, errStarting)
		return
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
	ch, cancel := e.Subscribe(256, r.URL.Query().Get("packets") == "true")
	defer cancel()
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	fl.Flush()
	enc := json.NewEncoder(w)
	for {
		select {
		case <-r.Context().Done():
			return
		case ev, ok := <-ch:
			if !ok {
				return // the engine stopped
			}
			if err := enc.Encode(ev); err != nil {
				return
			}
			fl.Flush()
		}
	}
}
