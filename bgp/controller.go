package bgp

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/opendmvpn/dmvpn/nhrp"
)

// Registrations is what the controller reads of the NHRP engine
// (*nhrp.Engine): the registered spokes (hub) and the servers (spoke), to
// start from and to resynchronise with.
type Registrations interface {
	Cache(ctx context.Context) ([]nhrp.CacheEntry, error)
	Lookup(ctx context.Context, p netip.Prefix) (nhrp.CacheEntry, bool, error)
	NHS(ctx context.Context) ([]nhrp.NHSStatus, error)
}

// LocalRoutes lists the node's own routes of some kinds ("connected",
// "static") for redistribution.
type LocalRoutes interface {
	LocalRoutes(ctx context.Context, kinds []string) ([]netip.Prefix, error)
}

// Deps are the controller's collaborators.
type Deps struct {
	Speaker Speaker
	// Routes receives the kernel routes (required).
	Routes RouteSink
	// NHRP is read at start and on resynchronisation (required).
	NHRP Registrations
	// Local is needed only with redistribution.
	Local LocalRoutes
	// Reregister, on a spoke, asks NHRP to register again when a session
	// to a server that is up went down (the server may have restarted
	// and lost its registrations).
	Reregister func(reason string)
	Log        *zap.Logger
	// Audit receives the refusals (neighbours and prefixes), with the
	// certificate that refused them.
	Audit *zap.Logger
}

// change is what an event asks of one neighbour.
type change struct {
	present bool
	kind    Kind
	nbma    netip.Addr
	ident   string
	attrs   map[string][]string
	reason  string
	// linger keeps a spoke neighbour through a graceful restart (its
	// registration was purged).
	linger bool
	// recheck asks the engine what binds the address now (its
	// registration was replaced).
	recheck bool
}

// Controller keeps the speaker's neighbours equal to the authorised
// registrations (hub) or the servers that are up (spoke), the speaker's
// own routes equal to the configured networks, and the kernel's BGP routes
// equal to the best paths. It is an nhrp.Observer.
type Controller struct {
	cfg  Config
	deps Deps
	log  *zap.Logger

	mu      sync.Mutex
	pending map[netip.Addr]change
	resync  bool
	dirty   map[netip.Addr]bool // neighbours whose UPDATEs must be judged
	have    map[netip.Addr]Neighbor
	// spokes counts the spoke neighbours of have (Config.MaxNeighbors).
	spokes  int
	refNbr  map[netip.Addr]refusedNeighbor
	refused map[netip.Addr]map[netip.Prefix]string
	states  map[netip.Addr]string // the sessions' last states
	stats   Stats
	wake    chan struct{}
	fibWake chan struct{}
	started chan struct{}
	done    chan struct{}

	fib      *fib
	staleNow []netip.Prefix // the previous run's routes the kernel keeps

	// protect are servers' NBMA addresses learned from the engine's
	// events and not yet refused in the speaker; protected those that
	// are (beside the configuration's).
	protect   []netip.Addr
	protected map[netip.Addr]bool
	// lingering are spokes that purged their registration, kept as
	// neighbours until then (graceful restart).
	lingering map[netip.Addr]*time.Timer
	// nets are the spoke neighbours' networks (those of have), for the
	// overlaps between spokes (Neighbor.Excluded); the goroutine of Run
	// owns it.
	nets netIndex
}

// refusedNeighbor is a registered spoke that did not become a neighbour.
type refusedNeighbor struct {
	Identity string
	Reason   string
	Time     time.Time
}

// Stats counts what the controller decided.
type Stats struct {
	// NeighborsRefused counts registrations that did not become a
	// neighbour (certificate fields); PrefixesRefused counts refused
	// prefixes by neighbour (audited once each until withdrawn).
	NeighborsRefused uint64
	PrefixesRefused  map[netip.Addr]uint64
	// FIBUpdates counts route sets handed to the kernel, FIBErrors the
	// failed ones; FIBRoutes is the size of the last set.
	FIBUpdates, FIBErrors uint64
	FIBRoutes             int
}

// NewController returns a controller; Run starts it.
func NewController(cfg Config, deps Deps) (*Controller, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.Speaker == nil || deps.Routes == nil || deps.NHRP == nil {
		return nil, errors.New("bgp: the controller needs a speaker, a route sink and the NHRP engine")
	}
	if deps.Log == nil {
		deps.Log = zap.NewNop()
	}
	if deps.Audit == nil {
		deps.Audit = deps.Log.Named("audit")
	}
	c := &Controller{
		cfg: cfg, deps: deps, log: deps.Log,
		pending: map[netip.Addr]change{}, dirty: map[netip.Addr]bool{},
		have: map[netip.Addr]Neighbor{}, refNbr: map[netip.Addr]refusedNeighbor{},
		refused: map[netip.Addr]map[netip.Prefix]string{}, states: map[netip.Addr]string{},
		protected: map[netip.Addr]bool{}, lingering: map[netip.Addr]*time.Timer{},
		stats: Stats{PrefixesRefused: map[netip.Addr]uint64{}},
		wake:  make(chan struct{}, 1), fibWake: make(chan struct{}, 1),
		started: make(chan struct{}), done: make(chan struct{}),
	}
	c.fib = newFIB(c)
	return c, nil
}

// Config returns the configuration in force (defaults filled).
func (c *Controller) Config() Config { return c.cfg }

func poke(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// Event takes the NHRP engine's events (nhrp.Observer): it only records
// them; the controller's goroutine acts.
func (c *Controller) Event(ev nhrp.Event) {
	if ev.Kind == nhrp.EventNHSUp {
		c.learnNBMA(ev.NBMA)
	}
	addr := ev.Proto.Addr()
	var ch change
	switch {
	case c.cfg.Role == RoleHub && (ev.Kind == nhrp.EventRegistered || ev.Kind == nhrp.EventExpired) && !c.spokeAddress(ev.Proto):
		// A registration at a configured hub's address or this node's
		// own never makes (or unmakes) a spoke neighbour.
		return
	case c.cfg.Role == RoleHub && ev.Kind == nhrp.EventRegistered:
		ch = change{present: true, kind: KindSpoke, nbma: ev.NBMA, ident: ev.Identity, attrs: ev.Attrs}
	case c.cfg.Role == RoleHub && ev.Kind == nhrp.EventExpired && ev.Cause == nhrp.CauseShutdown:
		// The node stops (graceful restart keeps the routes).
		return
	case c.cfg.Role == RoleHub && ev.Kind == nhrp.EventExpired && ev.Cause == nhrp.CauseReplaced:
		// A registration from a new NBMA address (the session is over
		// the tunnel address, it need not move; the registration's event
		// follows), or a static map or local entry took its place (no
		// registration follows): the engine's binding of that one
		// address tells which — not the whole cache: two NBMA addresses
		// registering one address in turn must not cost a cache read
		// each.
		ch = change{kind: KindSpoke, recheck: true}
	case c.cfg.Role == RoleHub && ev.Kind == nhrp.EventExpired:
		// A spoke that stops purges its registration (purge_on_shutdown)
		// even when it comes back at once: with graceful restart the
		// neighbour stays for the restart time (GoBGP keeps its routes,
		// stale, if the session negotiated it), and goes then unless it
		// registered again.
		ch = change{kind: KindSpoke, reason: ev.Reason, linger: ev.Cause == nhrp.CausePurged && c.cfg.RestartTime > 0}
	case c.cfg.Role == RoleSpoke && ev.Kind == nhrp.EventNHSUp:
		ch = change{present: true, kind: KindServer, nbma: ev.NBMA}
	case c.cfg.Role == RoleSpoke && ev.Kind == nhrp.EventNHSDown:
		ch = change{kind: KindServer, reason: ev.Reason}
	default:
		return
	}
	if !addr.IsValid() {
		return
	}
	c.mu.Lock()
	c.pending[addr] = ch
	c.mu.Unlock()
	poke(c.wake)
}

// learnNBMA protects a server's NBMA address the configuration does not
// name (a server named by DNS, one that answered from another address):
// a prefix covering it would route the tunnel into itself.
func (c *Controller) learnNBMA(a netip.Addr) {
	if !a.Is4() || slices.Contains(c.cfg.ProtectedNBMA, a) {
		return
	}
	c.mu.Lock()
	if c.protected[a] || slices.Contains(c.protect, a) {
		c.mu.Unlock()
		return
	}
	c.protect = append(c.protect, a)
	c.mu.Unlock()
	poke(c.wake)
}

// applyProtect hands the learned NBMA addresses to the speaker; what the
// neighbours sent is judged again under the larger refusal.
func (c *Controller) applyProtect(ctx context.Context) {
	c.mu.Lock()
	addrs := c.protect
	c.protect = nil
	c.mu.Unlock()
	if len(addrs) == 0 {
		return
	}
	if err := c.deps.Speaker.Protect(ctx, addrs); err != nil {
		c.log.Warn("refusing prefixes covering servers' NBMA addresses", zap.Stringers("nbma", addrs), zap.Error(err))
		c.mu.Lock()
		c.protect = append(c.protect, addrs...)
		c.mu.Unlock()
		return
	}
	c.mu.Lock()
	for _, a := range addrs {
		c.protected[a] = true
	}
	for a := range c.have {
		c.dirty[a] = true
	}
	c.mu.Unlock()
	poke(c.wake)
	c.log.Info("refusing prefixes covering servers' NBMA addresses", zap.Stringers("nbma", addrs))
}

// spokeAddress reports whether a registration at p can be a spoke
// neighbour's: one address (a /24 registered is no neighbour at its
// network address), neither a configured hub's nor this node's own.
func (c *Controller) spokeAddress(p netip.Prefix) bool {
	if !p.IsValid() || !p.IsSingleIP() {
		return false
	}
	a := p.Addr()
	return a != c.cfg.Tunnel.Addr() && !slices.Contains(c.cfg.Hubs, a)
}

// notify takes the speaker's events.
func (c *Controller) notify(ev SpeakerEvent) {
	switch ev.Kind {
	case BestChanged:
		poke(c.fibWake)
	case Received:
		c.mu.Lock()
		c.dirty[ev.Peer] = true
		c.mu.Unlock()
		poke(c.wake)
	case PeerState:
		c.peerState(ev)
	}
}

// peerState reacts to a session's state: a spoke whose session to a
// server went down asks NHRP to register again.
func (c *Controller) peerState(ev SpeakerEvent) {
	c.mu.Lock()
	n, ok := c.have[ev.Peer]
	was := c.states[ev.Peer]
	c.states[ev.Peer] = ev.State
	c.mu.Unlock()
	switch {
	case ev.State == StateEstablished:
		c.log.Info("BGP session established", zap.Stringer("peer", ev.Peer), zap.String("kind", n.Kind.String()), zap.Uint32("as", n.AS))
		return
	case was == StateEstablished:
		c.log.Info("BGP session down", zap.Stringer("peer", ev.Peer), zap.String("kind", n.Kind.String()), zap.String("reason", ev.Reason))
	}
	if ok && was == StateEstablished && n.Kind == KindServer && c.deps.Reregister != nil {
		c.deps.Reregister("BGP session to " + ev.Peer.String() + " went down: " + ev.Reason)
	}
}

// resyncEvery bounds how long a neighbour set can differ from the engine's
// (a missed event, redistribution).
const resyncEvery = 30 * time.Second

// Run starts the speaker and keeps everything in step until ctx is done;
// then it stops the speaker gracefully (the neighbours keep our routes for
// the restart time, the kernel keeps theirs).
func (c *Controller) Run(ctx context.Context) error {
	defer close(c.done)
	if err := c.deps.Speaker.Start(ctx, c.cfg, c.notify); err != nil {
		return err
	}
	var wg sync.WaitGroup
	wg.Add(1)
	fctx, fcancel := context.WithCancel(context.WithoutCancel(ctx))
	go func() { defer wg.Done(); c.fib.run(fctx) }()
	c.resync = true
	close(c.started)
	tick := time.NewTicker(resyncEvery)
	defer tick.Stop()
	for {
		c.step(ctx)
		select {
		case <-ctx.Done():
			fcancel()
			wg.Wait()
			c.mu.Lock()
			for a := range c.lingering {
				c.stopLinger(a)
			}
			c.mu.Unlock()
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			return c.deps.Speaker.Stop(sctx, c.cfg.RestartTime > 0)
		case <-c.wake:
		case <-tick.C:
			c.mu.Lock()
			c.resync = true
			c.mu.Unlock()
		}
	}
}

// Started is closed once the speaker runs.
func (c *Controller) Started() <-chan struct{} { return c.started }

// step applies what is pending.
func (c *Controller) step(ctx context.Context) {
	c.mu.Lock()
	pending, resync, dirty := c.pending, c.resync, c.dirty
	c.pending, c.resync, c.dirty = map[netip.Addr]change{}, false, map[netip.Addr]bool{}
	c.mu.Unlock()
	c.applyProtect(ctx)
	if resync {
		c.resyncAll(ctx, pending)
	}
	addrs := make([]netip.Addr, 0, len(pending))
	for a := range pending {
		addrs = append(addrs, a)
	}
	slices.SortFunc(addrs, netip.Addr.Compare)
	for _, a := range addrs {
		ch := pending[a]
		if ch.recheck {
			var ok bool
			if ch, ok = c.recheck(ctx, a); !ok {
				continue
			}
		}
		c.apply(ctx, a, ch)
	}
	// Neighbour changes come first: judging what a neighbour sent (a
	// request to the speaker each) waits while registrations are
	// pending, and runs a few at a time between them.
	c.mu.Lock()
	busy := len(c.pending) > 0
	c.mu.Unlock()
	judged := 0
	for a := range dirty {
		if busy || judged == judgeBatch {
			c.mu.Lock()
			c.dirty[a] = true
			c.mu.Unlock()
			poke(c.wake)
			continue
		}
		c.judge(ctx, a)
		judged++
	}
}

// judgeBatch is how many neighbours' UPDATEs one step judges.
const judgeBatch = 32

// resyncAll rebuilds the wanted neighbours from the engine and the
// configuration (the events still pending win: they are newer), and the
// routes this node originates.
func (c *Controller) resyncAll(ctx context.Context, pending map[netip.Addr]change) {
	want := map[netip.Addr]change{}
	if c.cfg.Role == RoleHub {
		for _, h := range c.cfg.Hubs {
			want[h] = change{present: true, kind: KindHub}
		}
		entries, err := c.deps.NHRP.Cache(ctx)
		if err != nil {
			c.log.Warn("reading the NHRP cache", zap.Error(err))
			return
		}
		for _, e := range entries {
			if e.Type == nhrp.TypeDynamic && slices.Contains(e.Flags, "registered") && c.spokeAddress(e.Proto) {
				want[e.Proto.Addr()] = change{present: true, kind: KindSpoke, nbma: e.NBMA, ident: e.Identity, attrs: e.Attrs}
			}
		}
	} else {
		servers, err := c.deps.NHRP.NHS(ctx)
		if err != nil {
			c.log.Warn("reading the NHRP servers", zap.Error(err))
			return
		}
		for _, s := range servers {
			if s.State == nhrp.NHSUp && s.Proto.IsValid() {
				want[s.Proto] = change{present: true, kind: KindServer, nbma: s.NBMA}
			}
			if s.State == nhrp.NHSUp {
				c.learnNBMA(s.NBMA)
			}
		}
	}
	c.mu.Lock()
	for a := range c.have {
		if _, ok := want[a]; !ok {
			if _, ok := c.lingering[a]; ok {
				continue // its restart time runs
			}
			want[a] = change{reason: "no longer registered"}
		}
	}
	for a := range c.refNbr {
		if _, ok := want[a]; !ok {
			want[a] = change{kind: KindSpoke, reason: "no longer registered"}
		}
	}
	c.mu.Unlock()
	for a, ch := range want {
		if _, ok := pending[a]; !ok {
			pending[a] = ch
		}
	}
	c.originate(ctx)
}

// originate sets the routes this node announces.
func (c *Controller) originate(ctx context.Context) {
	prefixes := slices.Clone(c.cfg.Networks)
	if c.cfg.Role == RoleHub && !c.cfg.Phase2 {
		prefixes = append(prefixes, c.cfg.Summary...)
	}
	if len(c.cfg.Redistribute) > 0 && c.deps.Local != nil {
		local, err := c.deps.Local.LocalRoutes(ctx, c.cfg.Redistribute)
		if err != nil {
			c.log.Warn("reading the routes to redistribute", zap.Error(err))
		}
		for _, p := range local {
			if c.redistributable(p) && !slices.Contains(prefixes, p) {
				prefixes = append(prefixes, p)
			}
		}
	}
	slices.SortFunc(prefixes, comparePrefix)
	if err := c.deps.Speaker.SetOrigin(ctx, prefixes); err != nil {
		c.log.Warn("announcing this node's networks", zap.Error(err))
	}
}

// redistributable: inside the redistribution filter and not refused from
// anyone.
func (c *Controller) redistributable(p netip.Prefix) bool {
	if c.cfg.bogon(p) != "" {
		return false
	}
	c.mu.Lock()
	for a := range c.protected {
		if p.Contains(a) {
			c.mu.Unlock()
			return false
		}
	}
	c.mu.Unlock()
	for _, w := range c.cfg.RedistributeWithin {
		if w.Contains(p.Addr()) && p.Bits() >= w.Bits() {
			return true
		}
	}
	return false
}

// recheck reads what binds one address after its registration was
// replaced: a registration (from its new NBMA address) keeps or makes the
// neighbour, anything else (a static map, a local or server entry, none)
// removes it. When the engine cannot answer, the next step resyncs from
// the whole cache instead (false).
func (c *Controller) recheck(ctx context.Context, a netip.Addr) (change, bool) {
	e, ok, err := c.deps.NHRP.Lookup(ctx, netip.PrefixFrom(a, a.BitLen()))
	if err != nil {
		c.log.Warn("reading the NHRP binding of a replaced registration", zap.Stringer("peer", a), zap.Error(err))
		c.mu.Lock()
		c.resync = true
		c.mu.Unlock()
		poke(c.wake)
		return change{}, false
	}
	if ok && e.Type == nhrp.TypeDynamic && slices.Contains(e.Flags, "registered") && c.spokeAddress(e.Proto) {
		return change{present: true, kind: KindSpoke, nbma: e.NBMA, ident: e.Identity, attrs: e.Attrs}, true
	}
	return change{kind: KindSpoke, reason: "replaced by a binding that is not a registration"}, true
}

// apply makes one neighbour what a change asks.
func (c *Controller) apply(ctx context.Context, addr netip.Addr, ch change) {
	c.mu.Lock()
	cur, had := c.have[addr]
	_, wasRefused := c.refNbr[addr]
	c.mu.Unlock()
	c.mu.Lock()
	c.stopLinger(addr)
	c.mu.Unlock()
	if !ch.present {
		if wasRefused {
			c.mu.Lock()
			delete(c.refNbr, addr)
			c.mu.Unlock()
		}
		if !had {
			return
		}
		if ch.linger && cur.Kind == KindSpoke {
			c.linger(addr, ch.reason)
			return
		}
		if err := c.deps.Speaker.DeleteNeighbor(ctx, addr); err != nil {
			c.log.Warn("removing a neighbour", zap.Stringer("peer", addr), zap.Error(err))
		}
		c.mu.Lock()
		c.forget(addr)
		delete(c.refused, addr)
		c.mu.Unlock()
		c.log.Info("neighbour removed", zap.Stringer("peer", addr), zap.String("kind", cur.Kind.String()), zap.String("reason", ch.reason))
		c.spokeNetworks(ctx, addr, cur, Neighbor{})
		return
	}
	var n Neighbor
	switch ch.kind {
	case KindSpoke:
		var err error
		n, err = c.cfg.spokeNeighbor(addr, ch.nbma, ch.ident, ch.attrs)
		if err != nil {
			c.refuseNeighbor(ctx, addr, ch, err, had)
			if had {
				c.spokeNetworks(ctx, addr, cur, Neighbor{})
			}
			return
		}
		c.mu.Lock()
		full := !had && c.spokes >= c.cfg.MaxNeighbors
		c.mu.Unlock()
		if full {
			c.refuseNeighbor(ctx, addr, ch, fmt.Errorf("the hub has %d spoke neighbours already (bgp.max_neighbors); tried again as others go", c.cfg.MaxNeighbors), false)
			return
		}
		n.Excluded = c.excludedFor(addr, n.Networks)
	default:
		n = c.cfg.hubNeighbor(addr, ch.nbma, ch.kind)
	}
	if had && cur.same(n) && !wasRefused {
		c.mu.Lock()
		c.have[addr] = n // NBMA or identity may have changed
		c.mu.Unlock()
		return
	}
	if err := c.deps.Speaker.SetNeighbor(ctx, n); err != nil {
		c.log.Warn("setting a neighbour", zap.Stringer("peer", addr), zap.Error(err))
		c.mu.Lock()
		c.resync = true // try again at the next resynchronisation
		c.mu.Unlock()
		return
	}
	c.mu.Lock()
	if !had && n.Kind == KindSpoke {
		c.spokes++
	}
	c.have[addr] = n
	delete(c.refNbr, addr)
	c.mu.Unlock()
	var before Neighbor
	if had {
		before = cur
	}
	c.spokeNetworks(ctx, addr, before, n)
	what := "neighbour added"
	if had {
		what = "neighbour updated"
		c.mu.Lock()
		c.dirty[addr] = true // judged again under the new filter
		c.mu.Unlock()
		poke(c.wake)
	}
	c.log.Info(what, zap.Stringer("peer", addr), zap.Uint32("as", n.AS), zap.String("kind", n.Kind.String()),
		zap.Stringers("networks", n.Networks), zap.Stringers("excluded", n.Excluded), zap.String("identity", n.Identity))
}

// linger keeps a purged spoke neighbour for the graceful restart time;
// then it goes unless it registered again.
func (c *Controller) linger(addr netip.Addr, reason string) {
	c.mu.Lock()
	c.stopLinger(addr)
	var t *time.Timer
	t = time.AfterFunc(c.cfg.RestartTime, func() {
		c.mu.Lock()
		if c.lingering[addr] == t {
			delete(c.lingering, addr)
			if _, ok := c.pending[addr]; !ok {
				c.pending[addr] = change{kind: KindSpoke, reason: reason + ", not registered again within the graceful restart time"}
			}
		}
		c.mu.Unlock()
		poke(c.wake)
	})
	c.lingering[addr] = t
	c.mu.Unlock()
	c.log.Info("neighbour kept through a graceful restart", zap.Stringer("peer", addr), zap.String("reason", reason),
		zap.Duration("restart_time", c.cfg.RestartTime))
}

// stopLinger ends a spoke's restart time, if it has one (c.mu held).
func (c *Controller) stopLinger(addr netip.Addr) {
	if t, ok := c.lingering[addr]; ok {
		t.Stop()
		delete(c.lingering, addr)
	}
}

// forget takes a neighbour out of have (c.mu held).
func (c *Controller) forget(addr netip.Addr) {
	if n, ok := c.have[addr]; ok {
		if n.Kind == KindSpoke {
			c.spokes--
		}
		delete(c.have, addr)
	}
}

// refuseNeighbor keeps a registered spoke whose fields do not make a
// neighbour out (and removes it if it was one: a renewed certificate
// with two AS fields).
func (c *Controller) refuseNeighbor(ctx context.Context, addr netip.Addr, ch change, why error, had bool) {
	if had {
		if err := c.deps.Speaker.DeleteNeighbor(ctx, addr); err != nil {
			c.log.Warn("removing a neighbour", zap.Stringer("peer", addr), zap.Error(err))
		}
	}
	c.mu.Lock()
	prev, seen := c.refNbr[addr]
	c.forget(addr)
	c.refNbr[addr] = refusedNeighbor{Identity: ch.ident, Reason: why.Error(), Time: time.Now()}
	if !seen || prev.Reason != why.Error() || prev.Identity != ch.ident {
		c.stats.NeighborsRefused++
	}
	c.mu.Unlock()
	if seen && prev.Reason == why.Error() && prev.Identity == ch.ident {
		return
	}
	c.deps.Audit.Info("bgp neighbour refused", zap.String("peer", addr.String()), zap.String("nbma", ch.nbma.String()),
		zap.String("subject", ch.ident), zap.Any("certificate_fields", ch.attrs), zap.String("reason", why.Error()))
	c.log.Warn("registered spoke not made a neighbour", zap.Stringer("peer", addr), zap.Error(why))
}

// judge looks at what a neighbour sent: every newly refused prefix is
// counted and audited with the certificate that refused it.
func (c *Controller) judge(ctx context.Context, addr netip.Addr) {
	c.mu.Lock()
	n, ok := c.have[addr]
	c.mu.Unlock()
	if !ok {
		return
	}
	routes, err := c.deps.Speaker.Routes(ctx, RouteQuery{Table: TableReceived, Neighbor: addr})
	if err != nil {
		return
	}
	now := map[netip.Prefix]string{}
	for _, r := range routes {
		if r.Refused {
			now[r.Prefix] = r.Why
		}
	}
	c.mu.Lock()
	before := c.refused[addr]
	c.refused[addr] = now
	var fresh []netip.Prefix
	for p := range now {
		if _, ok := before[p]; !ok {
			fresh = append(fresh, p)
			c.stats.PrefixesRefused[addr]++
		}
	}
	c.mu.Unlock()
	slices.SortFunc(fresh, comparePrefix)
	for _, p := range fresh {
		c.deps.Audit.Info("bgp prefix refused", zap.String("peer", addr.String()), zap.Uint32("as", n.AS),
			zap.String("prefix", p.String()), zap.String("reason", now[p]), zap.String("subject", n.Identity),
			zap.String("source", n.Source), zap.Stringers("networks", n.Networks), zap.Stringers("excluded", n.Excluded), zap.Int("max_length", n.MaxLen))
	}
}

// Stats returns a copy of the counters.
func (c *Controller) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.stats
	s.PrefixesRefused = make(map[netip.Addr]uint64, len(c.stats.PrefixesRefused))
	for k, v := range c.stats.PrefixesRefused {
		s.PrefixesRefused[k] = v
	}
	return s
}

// String describes a change for logs.
func (ch change) String() string {
	return fmt.Sprintf("present=%v kind=%v nbma=%v", ch.present, ch.kind, ch.nbma)
}
