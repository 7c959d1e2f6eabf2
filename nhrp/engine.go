package nhrp

import (
	"context"
	crand "crypto/rand"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/btree"
	"go.uber.org/zap"

	"github.com/opendmvpn/dmvpn/gre"
	"github.com/opendmvpn/dmvpn/nhrp/wire"
)

// Resolver resolves NHS host names. *net.Resolver implements it.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// Deps are what an Engine works with. Only Tunnel is required.
type Deps struct {
	Tunnel Tunnel
	// Router answers route lookups; nil means only the tunnel address is
	// local and nothing is routed through the tunnel.
	Router Router
	// Authorizer decides on registrations (hub); nil accepts every one.
	Authorizer Authorizer
	// Verifier checks what resolution, purge and other packets claim
	// against their sender's identity (the IPsec certificate); nil
	// leaves the engine's own rule: registered from that NBMA address, or
	// vouched for by a server.
	Verifier Verifier
	// Peers brings peers up and down (IPsec); nil treats every peer as up.
	Peers PeerHandler
	// Observers receive events.
	Observers []Observer
	// State keeps the engine's bindings across a restart; nil keeps
	// nothing.
	State StateStore
	// Resolver resolves NHS host names; nil uses net.DefaultResolver.
	Resolver Resolver
	// Logger; nil logs nothing.
	Logger *zap.Logger
}

// ErrStopped is returned by requests to an engine that is not running.
var ErrStopped = errors.New("nhrp: engine stopped")

// Engine is the NHRP engine of one tunnel interface.
type Engine struct {
	deps Deps
	tun  Tunnel
	log  *zap.Logger

	reqCh   chan func()   // API requests, run on the loop
	asyncCh chan func()   // completions of hooks run elsewhere
	pktCh   chan rxPacket // received NHRP packets
	relayCh chan []byte   // relayed traffic (redirect detection)
	done    chan struct{} // closed when Run returns
	running chan struct{} // closed when Run starts

	subMu sync.Mutex
	subs  map[*subscriber]struct{}
	// wantPackets says a subscriber wants packet events.
	wantPackets atomic.Bool
	// saving says the saver is writing a snapshot; saveTook is how long
	// its last write took (ns), savedAt when it ended (Unix ns).
	saving            atomic.Bool
	saveTook, savedAt atomic.Int64
	// saveFailed says a save failed: the next one is whole.
	saveFailed atomic.Bool

	// Everything below belongs to the loop goroutine.
	cfg          Config
	info         gre.Info
	own          netip.Addr // own tunnel address
	ownPfx       netip.Prefix
	cache        *cache
	sched        sched
	now          time.Time
	ids          *mrand.ChaCha8 // request IDs (crypto/rand seeded)
	peers        map[netip.Addr]*peer
	nhs          []*nhsClient
	dns          map[string]*dnsName
	pending      map[uint32]*pendingReq
	resolves     map[netip.Addr]*resolution
	late         map[uint32]lateReq // tries of failed resolutions whose answer is still taken
	authorizing  map[authKey]bool
	verifying    int               // identity verifications in flight
	forwarded    map[fwdKey]fwdRec // Resolution Requests forwarded
	fwdOrder     []fwdKey          // forwarded, oldest first
	recent       [recentIDs]uint32 // request IDs answered lately
	recentNext   int
	restored     bool            // the kept state was restored: changes are saved
	saveTimer    *timer          // the next save of the state
	saveCh       chan *stateSnap // snapshots for the saver goroutine
	journal      journalState    // what changed since the last save (a StateJournal)
	kern         *kernel
	stats        stats
	limits       limits
	rx           wire.Packet // reused for decoding
	txBuf        []byte
	regReply     replyScratch
	stopping     bool
	movePurges   *movePurges     // purges waiting for a registration from a new NBMA address
	mcastPending bool            // a multicast list update is scheduled
	mcast        mcastSet        // clients' NBMA addresses for multicast dynamic
	ctx          context.Context // the Run context, for hook calls
	// callC is the context of Router calls from the loop (callCtx).
	callC      context.Context
	callCancel context.CancelFunc
	callUntil  time.Time
	wg         sync.WaitGroup // hook goroutines
	hooks      int            // hook goroutines running (MaxHooks)
	srcLimit   sourceLimiter  // per-source rate limit of received packets
	peerOrder  []netip.Addr   // peers, oldest first (MaxPeers)
	// peerIdx holds the peers' addresses in order for listings in chunks
	// (Peers).
	peerIdx *btree.BTreeG[netip.Addr]
	// peerStates counts the peers by state for Gauges.
	peerStates [peerFailed + 1]atomic.Int64
}

// rxPacket is a received NHRP packet.
type rxPacket struct {
	b    []byte
	from netip.Addr
}

// New returns an engine for a tunnel. Run starts it.
func New(cfg Config, deps Deps) (*Engine, error) {
	if deps.Tunnel == nil {
		return nil, fmt.Errorf("%w: no tunnel", ErrConfig)
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.Resolver == nil {
		deps.Resolver = net.DefaultResolver
	}
	if deps.Logger == nil {
		deps.Logger = zap.NewNop()
	}
	e := &Engine{
		deps:        deps,
		tun:         deps.Tunnel,
		log:         deps.Logger,
		reqCh:       make(chan func()),
		asyncCh:     make(chan func(), 256),
		pktCh:       make(chan rxPacket, 1024),
		relayCh:     make(chan []byte, 256),
		done:        make(chan struct{}),
		running:     make(chan struct{}),
		subs:        make(map[*subscriber]struct{}),
		cfg:         cfg.withDefaults(),
		cache:       newCache(),
		peers:       make(map[netip.Addr]*peer),
		peerIdx:     btree.NewG(32, func(a, b netip.Addr) bool { return a.Less(b) }),
		dns:         make(map[string]*dnsName),
		pending:     make(map[uint32]*pendingReq),
		resolves:    make(map[netip.Addr]*resolution),
		authorizing: make(map[authKey]bool),
		forwarded:   make(map[fwdKey]fwdRec),
		saveCh:      make(chan *stateSnap, 1),
	}
	var seed [32]byte
	if _, err := crand.Read(seed[:]); err != nil {
		return nil, fmt.Errorf("nhrp: seeding request IDs: %w", err)
	}
	e.ids = mrand.NewChaCha8(seed)
	e.info = e.tun.Info()
	e.ownPfx = e.info.Prefix
	e.own = e.info.Prefix.Addr()
	if !e.own.IsValid() {
		return nil, fmt.Errorf("%w: tunnel %s has no address", ErrConfig, e.info.Name)
	}
	e.stats.init()
	e.limits.init(e.cfg.MaxSend)
	return e, nil
}

// Run runs the engine until ctx is done, then shuts it down: purges where
// configured, removes the kernel state it created (unless
// KeepKernelState) and waits for its goroutines, except the packet reader,
// which ends when the owner closes the tunnel. It returns nil after a
// clean stop.
func (e *Engine) Run(ctx context.Context) error {
	e.ctx = ctx
	e.now = time.Now()
	e.kern = newKernel(e.tun, e.log, e.asyncCh)
	// The reader ends when the tunnel is closed (ReadNHRP cannot be
	// interrupted otherwise) or, after Run, at the next packet.
	readCtx, stopRead := context.WithCancel(context.Background())
	go e.readLoop(readCtx)
	kernDone := make(chan struct{})
	go func() { defer close(kernDone); e.kern.run() }()
	stopSaver, saverDone := make(chan struct{}), make(chan struct{})
	go func() { defer close(saverDone); e.saver(stopSaver) }()

	e.start()
	close(e.running)
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	misses := e.tun.Misses()
	for {
		if when, ok := e.sched.next(); ok {
			t.Reset(time.Until(when))
		} else {
			t.Reset(time.Hour)
		}
		select {
		case <-ctx.Done():
			e.shutdown()
			stopRead()
			e.kern.close()
			// Hook goroutines finish by their deadlines; drain their
			// completions meanwhile.
			hooksDone := make(chan struct{})
			go func() { e.wg.Wait(); close(hooksDone) }()
		drain:
			for {
				select {
				case f := <-e.asyncCh:
					e.now = time.Now()
					f()
				case <-hooksDone:
					break drain
				}
			}
			<-kernDone
			close(stopSaver)
			<-saverDone
			e.closeSubscribers()
			if e.callCancel != nil {
				e.callCancel()
			}
			close(e.done)
			return nil
		case f := <-e.reqCh:
			e.now = time.Now()
			f()
		case f := <-e.asyncCh:
			e.now = time.Now()
			f()
		case p := <-e.pktCh:
			e.now = time.Now()
			e.handlePacket(p.b, p.from)
		case m, ok := <-misses:
			if !ok {
				misses = nil
				continue
			}
			e.now = time.Now()
			e.handleMiss(m)
		case b := <-e.relayCh:
			e.now = time.Now()
			e.handleRelayed(b)
		case <-t.C:
			e.now = time.Now()
			e.sched.runDue(e.now)
		}
	}
}

// readLoop reads NHRP packets from the tunnel and hands them to the loop.
func (e *Engine) readLoop(ctx context.Context) {
	buf := make([]byte, 65536)
	for {
		n, from, err := e.tun.ReadNHRP(buf)
		if err != nil {
			if errors.Is(err, gre.ErrClosed) || ctx.Err() != nil {
				return
			}
			e.log.Warn("reading NHRP from the tunnel", zap.Error(err))
			select {
			case <-ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		// Block when the loop is behind: the data plane's queue and the
		// socket buffer absorb bursts, and drop there when truly full.
		p := rxPacket{b: append([]byte(nil), buf[:n]...), from: from}
		select {
		case e.pktCh <- p:
		case <-ctx.Done():
			return
		}
	}
}

// do runs f on the engine's goroutine and waits for it.
func (e *Engine) do(ctx context.Context, f func()) error {
	done := make(chan struct{})
	select {
	case <-e.running:
	case <-e.done:
		return ErrStopped
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case e.reqCh <- func() { f(); close(done) }:
	case <-e.done:
		return ErrStopped
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-done:
		return nil
	case <-e.done:
		return ErrStopped
	}
}

// goHook runs a hook call in its own goroutine; then, on the loop, runs
// the continuation it returns. Hook goroutines are waited for on stop. At
// most Limits.MaxHooks run at once: beyond, goHook starts nothing and
// returns false (counted), and the caller takes its failure path.
func (e *Engine) goHook(timeout time.Duration, call func(ctx context.Context) func()) bool {
	if e.hooks >= e.cfg.Limits.MaxHooks {
		e.limited(LimitHooks)
		return false
	}
	e.hooks++
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		ctx, cancel := context.WithTimeout(e.ctx, timeout)
		cont := call(ctx)
		cancel()
		e.asyncCh <- func() {
			e.hooks--
			if cont != nil {
				cont()
			}
		}
	}()
	return true
}

// emit sends an event to the observers and subscribers.
func (e *Engine) emit(ev Event) {
	ev.Time = e.now
	for _, o := range e.deps.Observers {
		o.Event(ev)
	}
	e.publish(ev)
}

// nextReqID returns a fresh request ID: random (a ChaCha8 stream seeded
// from crypto/rand), so that only the nodes a request reaches know it,
// never zero and never one outstanding.
func (e *Engine) nextReqID() uint32 {
	for {
		id := uint32(e.ids.Uint64())
		if id != 0 && e.pending[id] == nil {
			return id
		}
	}
}

// recentIDs is how many answered request IDs are remembered, so that a
// late duplicate reply is told from an unmatched one.
const recentIDs = 64

// answered remembers a request ID whose answer came.
func (e *Engine) answered(id uint32) {
	e.recent[e.recentNext] = id
	e.recentNext = (e.recentNext + 1) % recentIDs
}

// wasAnswered reports whether id was answered lately.
func (e *Engine) wasAnswered(id uint32) bool {
	for _, x := range e.recent {
		if x == id && id != 0 {
			return true
		}
	}
	return false
}

// localNBMA returns the NBMA address this node uses toward dst.
func (e *Engine) localNBMA(dst netip.Addr) netip.Addr {
	if info := e.tun.Info(); len(info.NBMA) > 0 && info.NBMA[0].IsValid() {
		return info.NBMA[0]
	}
	if s, ok := e.deps.Router.(SourceRouter); ok && dst.IsValid() {
		if a, err := s.Source(e.callCtx(), dst); err == nil {
			return a
		}
	}
	return netip.Addr{}
}

// callCtx returns a context for a Router call from the loop, done within
// one to two seconds. One is made at most every second and shared by the
// calls meanwhile: a context with its own timer per call (one per reply)
// woke the runtime's poller each time, a tenth of a hub's time on the
// kernel data plane.
func (e *Engine) callCtx() context.Context {
	if e.callCancel == nil || !e.now.Before(e.callUntil) {
		if e.callCancel != nil {
			e.callCancel()
		}
		e.callUntil = e.now.Add(time.Second)
		e.callC, e.callCancel = context.WithTimeout(e.ctx, 2*time.Second)
	}
	return e.callC
}

// isOwn reports whether a is this node's tunnel address.
func (e *Engine) isOwn(a netip.Addr) bool { return a == e.own }

// route asks the Router how dst is routed.
func (e *Engine) route(dst netip.Addr) (RouteInfo, bool) {
	if e.deps.Router == nil {
		return RouteInfo{}, false
	}
	ri, err := e.deps.Router.Route(e.callCtx(), dst)
	if err != nil {
		return RouteInfo{}, false
	}
	return ri, true
}

// mtu is the MTU advertised in CIEs.
func (e *Engine) mtu() uint16 {
	if e.cfg.MTU > 0 {
		return uint16(e.cfg.MTU)
	}
	return uint16(e.info.MTU)
}

// holding is the holding time advertised, in seconds.
func (e *Engine) holding() uint16 { return uint16(e.cfg.HoldingTime / time.Second) }
