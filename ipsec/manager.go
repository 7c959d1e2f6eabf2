package ipsec

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/opendmvpn/dmvpn/internal/auditlimit"
)

// Hooks are what the manager tells the NHRP engine.
type Hooks struct {
	// PeerLost: a peer's SA went away (its peer should be brought up
	// again on next use; a server is registered with again at once).
	PeerLost func(nbma netip.Addr, reason string)
	// Restarted: everything must be brought up and registered again
	// (charon came back after being away, or this node's certificate was
	// renewed and its SAs set up again with it).
	Restarted func(reason string)
	// Revoked: the certificate of the peer at an NBMA address was revoked
	// by a CRL now in force and its SAs ended: its registrations and
	// bindings must end too.
	Revoked func(nbma netip.Addr, reason string)
	// Aliases (userspace mode): the inner addresses of peers behind NAT,
	// by NBMA address, for the data plane (gre.PeerAliaser).
	Aliases func(map[netip.Addr]netip.Addr) error
}

// Manager drives charon for one node: credentials and connections, an SA
// per NBMA peer on demand, the certificate check of registrations. It
// implements nhrp.PeerHandler and nhrp.Authorizer.
type Manager struct {
	cfg   Config
	mode  Mode
	hub   bool
	log   *zap.Logger
	audit *zap.Logger
	// auditFile is the audit log's file (nil on standard output).
	auditFile *auditFile
	hooks     Hooks
	charon    *charon // nil when charon is not ours

	cmd *viciConn // command session; replaced on reconnect

	// lines limits the registration decision lines of the audit stream
	// (one per peer and decision a second, within a shared budget);
	// sharedLines is set when it is the daemon's, which writes its
	// summaries (LimitAuditWith).
	lines       *auditlimit.Limiter
	sharedLines bool
	// terminating are the IKE SAs of refused registrations whose ending
	// is pending (terminateAfterReply): one each, however many refusals.
	terminating map[string]bool

	mu    sync.Mutex
	creds *credSet
	sas   saTable // by IKE unique id and remote host
	// refreshMu serialises refreshShared's reads of every SA; refreshes
	// counts the reads started, refreshed is the number of the last one
	// completed (under refreshMu).
	refreshMu sync.Mutex
	refreshes atomic.Uint64
	refreshed uint64
	certs     map[string][]byte    // remote-id → DER, captured when SAs came up
	certSeen  map[string]time.Time // when each was last captured
	certFirst map[string]time.Time // DER → when it first appeared in charon's cache
	// certListed is the last certificate listing: DER → subject as
	// charon renders it (replaced whole, never changed in place).
	certListed map[string]string
	loaded     map[string]connSpec // connections loaded into charon
	waiters    map[netip.Addr][]chan struct{}
	// releasing holds, per peer, a channel closed when the PeerDown in
	// flight for it has terminated its SAs and unloaded its connection:
	// a PeerUp for it waits, or its initiate would race the unload.
	releasing map[netip.Addr]chan struct{}
	// verified maps the IKE SAs of servers and shortcut peers whose
	// certificate was checked to the tunnel address it proved.
	verified  map[string]netip.Addr
	connected bool
	local     netip.Addr // the address connections initiate from (LocalMoved)
	stats     counters

	bg     sync.WaitGroup // PeerDown calls in flight
	logMu  sync.Mutex
	logged map[string]time.Time // rate limit of refusal log lines
	// rotateErr is the last failure of the credential file watch (logged
	// once until it changes); expiryWarned the expiry warnings given, by
	// certificate (expiry.go).
	rotateErr string
	// refusedCreds is a set a reload loaded and rolled back (under mu):
	// the file watch leaves the files alone until they change again.
	refusedCreds *credSet
	crlErr       string // the last failure of the CRL file watch
	expiryWarned map[string]int

	aliasMu sync.Mutex
	aliases map[netip.Addr]netip.Addr // as the data plane has them

	wake  chan struct{}
	done  chan struct{}
	certQ chan certReq // peers whose certificate to fetch
}

// New returns a manager. Start connects it.
func New(cfg Config, mode Mode, hub bool, log *zap.Logger, hooks Hooks) (*Manager, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if mode != ModeKernel && mode != ModeUserspace {
		return nil, fmt.Errorf("%w: mode %q must be resolved to kernel or userspace", ErrConfig, mode)
	}
	if log == nil {
		log = zap.NewNop()
	}
	m := &Manager{
		cfg: cfg, mode: mode, hub: hub, log: log, hooks: hooks,
		sas: newSATable(), certs: map[string][]byte{}, certSeen: map[string]time.Time{}, loaded: map[string]connSpec{},
		waiters: map[netip.Addr][]chan struct{}{}, verified: map[string]netip.Addr{}, logged: map[string]time.Time{},
		wake: make(chan struct{}, 1), done: make(chan struct{}), certQ: make(chan certReq, 1024),
		lines: auditlimit.New(auditlimit.Config{}), terminating: map[string]bool{},
	}
	m.stats.init()
	audit, af, err := newAuditLogger(cfg.AuditLog, cfg.AuditLogMaxSize, cfg.AuditLogKeep)
	if err != nil {
		return nil, err
	}
	m.audit, m.auditFile = audit, af
	if cfg.Managed {
		m.charon = newCharon(cfg, mode, log)
	}
	return m, nil
}

// Mode returns the ESP mode in use.
func (m *Manager) Mode() Mode { return m.mode }

// Start starts charon when it is ours, connects, loads credentials and
// connections and follows charon's events until ctx is done. It returns
// once charon answers; the event loop runs on.
func (m *Manager) Start(ctx context.Context) error {
	cs, err := readCreds(m.cfg, m.hub)
	if err != nil {
		return err
	}
	m.mu.Lock()
	m.creds = cs
	m.mu.Unlock()
	if m.charon != nil {
		if err := m.charon.start(ctx); err != nil {
			return err
		}
		go m.charon.supervise(ctx)
	}
	events, err := m.connect(ctx)
	if err != nil {
		return err
	}
	go m.run(ctx, events)
	if len(m.cfg.CRL) > 0 {
		go m.watchCRLs(ctx)
	}
	for range certWorkers {
		go m.certWorker(ctx)
	}
	return nil
}

// Done is closed when the manager has stopped.
func (m *Manager) Done() <-chan struct{} { return m.done }

// connect opens the command and event sessions and loads everything.
func (m *Manager) connect(ctx context.Context) (*eventSession, error) {
	cmd, err := dialVICI(ctx, m.cfg.Socket)
	if err != nil {
		return nil, err
	}
	ev, err := openEvents(m.cfg.Socket)
	if err != nil {
		cmd.close()
		return nil, err
	}
	m.mu.Lock()
	if m.cmd != nil {
		m.cmd.close()
	}
	m.cmd = cmd
	m.connected = true
	m.loaded = map[string]connSpec{}
	m.sas = newSATable()
	m.verified = map[string]netip.Addr{}
	m.mu.Unlock()
	if err := m.loadAll(ctx); err != nil {
		ev.close()
		return nil, err
	}
	m.refresh(ctx)
	return ev, nil
}

// loadAll loads the credentials and the standing connections.
func (m *Manager) loadAll(ctx context.Context) error {
	m.mu.Lock()
	cs := m.creds
	m.mu.Unlock()
	if err := loadCreds(ctx, m.cmd, cs); err != nil {
		return err
	}
	if m.hub {
		return m.loadConn(ctx, connSpec{name: connHub, kind: kindAccept})
	}
	return m.loadConn(ctx, connSpec{name: connAccept, kind: kindAccept})
}

// loadConn loads (or reloads) one connection with the credentials in
// force.
func (m *Manager) loadConn(ctx context.Context, spec connSpec) error {
	m.mu.Lock()
	cs := m.creds
	m.mu.Unlock()
	return m.loadConnWith(ctx, spec, cs)
}

// loadConnWith loads one connection carrying the credentials cs.
func (m *Manager) loadConnWith(ctx context.Context, spec connSpec, cs *credSet) error {
	m.mu.Lock()
	c := m.cmd
	spec.local = m.local
	m.mu.Unlock()
	in := loadConnMessage(spec, m.cfg, m.mode, creds{cert: cs.cert, cas: cs.cas})
	if _, err := c.call(ctx, 5*time.Second, "load-conn", in); err != nil {
		return err
	}
	m.mu.Lock()
	m.loaded[spec.name] = spec
	m.mu.Unlock()
	return nil
}

// run follows charon's events; when charon goes away it redials, reloads
// and tells the engine to bring everything up again.
func (m *Manager) run(ctx context.Context, ev *eventSession) {
	defer close(m.done)
	certTick := time.NewTicker(5 * time.Second)
	defer certTick.Stop()
	expiryTick := time.NewTicker(time.Hour)
	defer expiryTick.Stop()
	m.checkExpiry(time.Now())
	for {
		gone := false
		for !gone {
			select {
			case <-ctx.Done():
				ev.close()
				m.shutdown()
				return
			case e, ok := <-ev.ch:
				if !ok {
					gone = true
					break
				}
				m.handleEvent(ctx, e)
			case <-certTick.C:
				m.reloadCredsIfChanged(ctx)
			case now := <-expiryTick.C:
				m.checkExpiry(now)
			}
		}
		ev.close()
		m.lostCharon()
		for {
			select {
			case <-ctx.Done():
				m.shutdown()
				return
			case <-time.After(100 * time.Millisecond):
			}
			var err error
			if ev, err = m.connect(ctx); err == nil {
				break
			}
		}
		m.log.Info("charon is back: credentials and connections reloaded")
		m.stats.restarts.Add(1)
		if m.hooks.Restarted != nil {
			m.hooks.Restarted("charon restarted")
		}
	}
}

// lostCharon forgets every SA and tells the engine its peers are down.
func (m *Manager) lostCharon() {
	m.mu.Lock()
	m.connected = false
	peers := map[netip.Addr]bool{}
	for _, sa := range m.sas.byID {
		peers[sa.RemoteHost] = true
	}
	m.sas = newSATable()
	m.mu.Unlock()
	m.setAliases(nil)
	m.log.Warn("charon went away: every SA is down")
	for p := range peers {
		if m.hooks.PeerLost != nil {
			m.hooks.PeerLost(p, "charon went away")
		}
	}
}

// shutdown stops a charon of ours (it deletes its SAs at the peers).
func (m *Manager) shutdown() {
	m.bg.Wait()
	m.mu.Lock()
	if m.cmd != nil {
		m.cmd.close()
	}
	m.mu.Unlock()
	if m.charon != nil {
		m.charon.stop()
	}
}

// refresh reads every SA from charon and returns the peers that had an
// SA up before and have none now.
func (m *Manager) refresh(ctx context.Context) (lost []netip.Addr) {
	m.mu.Lock()
	c := m.cmd
	m.mu.Unlock()
	msgs, err := c.stream(ctx, 5*time.Second, "list-sas", "list-sa", msg("noblock", "yes"))
	if err != nil {
		m.log.Warn("listing SAs", zap.Error(err))
		return nil
	}
	now := time.Now()
	sas := map[string]SA{}
	for _, mm := range msgs {
		for _, sa := range parseSAs(mm, now) {
			sas[sa.IKEID] = sa
		}
	}
	m.mu.Lock()
	t := newSATable()
	for id, sa := range sas {
		prev, _ := m.sas.get(id)
		sa.upSeen = prev.upSeen
		t.put(sa)
	}
	for _, sa := range m.sas.byID {
		if sa.Up() && !t.up(sa.RemoteHost) && !slices.Contains(lost, sa.RemoteHost) {
			lost = append(lost, sa.RemoteHost)
		}
	}
	m.sas = t
	m.mu.Unlock()
	m.syncAliases(ctx)
	m.wakeWaiters()
	return lost
}

// certReq asks the certificate workers for the certificate of the peer
// that authenticated as id, whose IKE SA came up at at.
type certReq struct {
	id string
	at time.Time
}

// refreshShared reads every SA from charon, as refresh, unless a read
// that started after the call did so meanwhile: concurrent callers (many
// registrations ahead of their events) share one read instead of one
// each. The peers a read finds gone are reported to the engine.
func (m *Manager) refreshShared(ctx context.Context) {
	asked := m.refreshes.Load()
	m.refreshMu.Lock()
	defer m.refreshMu.Unlock()
	if m.refreshed > asked {
		return // a read that started after the call has completed
	}
	gen := m.refreshes.Add(1)
	for _, p := range m.refresh(ctx) {
		m.saDown(p, "", "read")
	}
	m.refreshed = gen
}

// awaitUp waits until an SA with nbma is up (in the table) or ctx ends.
func (m *Manager) awaitUp(ctx context.Context, nbma netip.Addr) {
	m.mu.Lock()
	if m.sas.up(nbma) {
		m.mu.Unlock()
		return
	}
	w := make(chan struct{})
	m.waiters[nbma] = append(m.waiters[nbma], w)
	m.mu.Unlock()
	select {
	case <-w:
	case <-ctx.Done():
		m.dropWaiter(nbma, w)
	}
}

// peerUp reports whether an SA to nbma is up.
func (m *Manager) peerUp(nbma netip.Addr) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.sas.up(nbma)
}

// sasTo returns the SAs with a peer.
func (m *Manager) sasTo(nbma netip.Addr) []SA {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.sas.to(nbma)
}

// wakeWaiters wakes every PeerUp waiting for an SA.
func (m *Manager) wakeWaiters() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for nbma, ws := range m.waiters {
		if m.sas.up(nbma) {
			for _, w := range ws {
				close(w)
			}
			delete(m.waiters, nbma)
		}
	}
}

// responderGuard is how long a CHILD_SA we answered for is left alone
// after it came up: the responder installs its SAs before it sends the
// last IKE_AUTH message, and a packet it sends at once would reach the
// initiator before the initiator has the SA to decrypt it (a lost
// Resolution Reply costs the requester its one-second retry).
const responderGuard = 50 * time.Millisecond

// waitUp waits until an SA with nbma is up or ctx ends.
func (m *Manager) waitUp(ctx context.Context, nbma netip.Addr) error {
	for {
		m.mu.Lock()
		var wait time.Duration
		up := false
		for _, sa := range m.sas.to(nbma) {
			if sa.Up() {
				if d := responderGuard - time.Since(sa.upSeen); !sa.Initiator && d > 0 {
					wait = d
					continue
				}
				up = true
			}
		}
		if up {
			m.mu.Unlock()
			return nil
		}
		var w chan struct{}
		if wait == 0 {
			w = make(chan struct{})
			m.waiters[nbma] = append(m.waiters[nbma], w)
		}
		m.mu.Unlock()
		if wait > 0 {
			select {
			case <-time.After(wait):
				continue
			case <-ctx.Done():
				return fmt.Errorf("ipsec: no SA with %s: %w", nbma, ctx.Err())
			}
		}
		select {
		case <-w:
			continue
		case <-ctx.Done():
			m.dropWaiter(nbma, w)
			return fmt.Errorf("ipsec: no SA with %s: %w", nbma, ctx.Err())
		}
	}
}

// dropWaiter forgets the waiter of a waitUp that gave up: a peer whose SA
// never came up left one behind for each PeerUp that timed out.
func (m *Manager) dropWaiter(nbma netip.Addr, w chan struct{}) {
	m.mu.Lock()
	defer m.mu.Unlock()
	ws := m.waiters[nbma]
	for i, x := range ws {
		if x == w {
			ws = append(ws[:i:i], ws[i+1:]...)
			break
		}
	}
	if len(ws) == 0 {
		delete(m.waiters, nbma)
	} else {
		m.waiters[nbma] = ws
	}
}

// terminate ends an IKE SA (asynchronously in charon).
func (m *Manager) terminate(ctx context.Context, ikeID string) {
	m.mu.Lock()
	c := m.cmd
	m.mu.Unlock()
	if c == nil {
		return
	}
	if _, err := c.call(ctx, 2*time.Second, "terminate", msg("ike-id", ikeID, "timeout", "-1")); err != nil {
		m.log.Debug("terminate", zap.String("ike_id", ikeID), zap.Error(err))
	}
}

var errNotConnected = errors.New("ipsec: charon is not reachable")
