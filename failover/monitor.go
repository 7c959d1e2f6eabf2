package failover

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Deps are what a Monitor works with. Kernel, Probers and Host are
// required.
type Deps struct {
	Kernel  Kernel
	Probers ProberFactory
	Host    Host
	// Conntrack ends the connections of an uplink that went down; nil
	// leaves them alone.
	Conntrack Conntrack
	Observers []Observer
	Logger    *zap.Logger
}

// ErrStopped is returned by requests to a monitor that is not running.
var ErrStopped = errors.New("failover: monitor stopped")

// Monitor probes the uplinks, decides their states and has the kernel
// follow: one goroutine owns the probing state, another applies the
// desired kernel state (the newest one wins when several queue up).
type Monitor struct {
	cfg  Config
	deps Deps
	log  *zap.Logger

	reqCh   chan func()
	replyCh chan uplinkReply
	done    chan struct{}
	running chan struct{}
	// applierDone is closed when the applier has stopped.
	applierDone chan struct{}
	dropped     atomic.Uint64 // replies dropped because the loop was behind

	cfgNow atomic.Pointer[Config]

	nbma    atomic.Pointer[[]netip.Addr]
	applied atomic.Pointer[Desired]

	applyMu   sync.Mutex
	applyNext *applyReq
	applyWake chan struct{}

	// Everything below belongs to the loop goroutine.
	ups     []*uplink
	posted  Desired
	hasPost bool
	downs   []flushTarget // uplinks that went down since the last post
	gens    uint64        // probers opened
}

// uplink is one uplink as the loop keeps it.
type uplink struct {
	p       *prober
	link    Link
	gateway netip.Addr // configured, learnt, or remembered
	probe   Prober
	// gen names the prober: its replies carry it.
	gen uint64
	// opened is the link the prober was opened for.
	opened  Link
	openErr string
	sendErr uint64
	// lastAddr is the uplink's last address: its connections are
	// masqueraded to it even when it went down by losing it.
	lastAddr netip.Addr
}

type uplinkReply struct {
	gen uint64
	r   Reply
}

// flushTarget is an uplink whose connections to end.
type flushTarget struct {
	name string
	addr netip.Addr
	mark uint32
}

// applyReq is a desired state waiting to be applied.
type applyReq struct {
	d      Desired
	reason string
	downs  []flushTarget
	// done get the result of the apply (buffered: the applier does not
	// wait).
	done []chan error
}

// New returns a monitor. Run starts it.
func New(cfg Config, deps Deps) (*Monitor, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.Kernel == nil || deps.Probers == nil || deps.Host == nil {
		return nil, fmt.Errorf("%w: kernel, probers and host are required", ErrConfig)
	}
	if deps.Logger == nil {
		deps.Logger = zap.NewNop()
	}
	m := &Monitor{
		cfg: cfg, deps: deps, log: deps.Logger,
		reqCh: make(chan func()), replyCh: make(chan uplinkReply, 1024),
		done: make(chan struct{}), running: make(chan struct{}), applierDone: make(chan struct{}),
		applyWake: make(chan struct{}, 1),
	}
	m.cfgNow.Store(&cfg)
	now := time.Now()
	for _, u := range cfg.Uplinks {
		m.ups = append(m.ups, &uplink{p: newProber(u, now), gateway: u.Gateway})
	}
	return m, nil
}

// Config returns the configuration in force, with its defaults. It is
// safe to call from any goroutine.
func (m *Monitor) Config() Config { return *m.cfgNow.Load() }

// NBMA returns this node's NBMA addresses as the kernel routes them now:
// the active uplink's first, then the other usable uplinks'. It is safe to
// call from any goroutine.
func (m *Monitor) NBMA() []netip.Addr {
	if p := m.nbma.Load(); p != nil {
		return slices.Clone(*p)
	}
	return nil
}

// Done is closed when Run has returned.
func (m *Monitor) Done() <-chan struct{} { return m.done }

// Run probes until ctx is done, then closes the probers and returns once
// the applier has stopped. The kernel state stays as it was last applied:
// the host-state owner removes it.
func (m *Monitor) Run(ctx context.Context) error {
	defer close(m.done)
	applyCtx, stopApply := context.WithCancel(ctx)
	go func() { defer close(m.applierDone); m.applier(applyCtx) }()
	defer func() {
		stopApply()
		<-m.applierDone
	}()

	now := time.Now()
	for _, u := range m.ups {
		m.refresh(ctx, u, now)
	}
	m.publish("starting")
	close(m.running)
	m.log.Info("uplink monitor started", zap.Int("uplinks", len(m.ups)))

	t := time.NewTimer(time.Hour)
	defer t.Stop()
	changes := m.deps.Kernel.Changes()
	for {
		t.Reset(time.Until(m.nextEvent()))
		select {
		case <-ctx.Done():
			for _, u := range m.ups {
				u.closeProbe()
			}
			return nil
		case f := <-m.reqCh:
			f()
		case r := <-m.replyCh:
			for _, u := range m.ups {
				if u.gen == r.gen && u.probe != nil {
					u.p.reply(r.r.Host, r.r.Seq, r.r.At)
				}
			}
		case <-changes:
			now := time.Now()
			changed := false
			for _, u := range m.ups {
				changed = m.refresh(ctx, u, now) || changed
			}
			if changed {
				m.publish("the kernel's links, addresses or routes changed")
			} else {
				m.publish("")
			}
		case <-t.C:
			m.tick(time.Now())
		}
	}
}

// nextEvent is when the next round starts, a retry is due or a round is
// decided.
func (m *Monitor) nextEvent() time.Time {
	var next time.Time
	for _, u := range m.ups {
		if t := u.p.nextEvent(); next.IsZero() || t.Before(next) {
			next = t
		}
	}
	if next.IsZero() {
		next = time.Now().Add(time.Hour)
	}
	return next
}

// tick sends the retries that are due, decides the rounds that are, and
// starts the next ones.
func (m *Monitor) tick(now time.Time) {
	var reasons []string
	for _, u := range m.ups {
		u.p.step(now, func(seq uint16, hosts []netip.Addr) { m.send(u, seq, hosts) }, func(from State) {
			m.transition(u, from)
			reasons = append(reasons, u.p.cfg.Name+" "+u.p.state.String())
		})
	}
	if len(reasons) > 0 {
		m.publish(fmt.Sprint(reasons))
	}
}

// send sends an echo request with sequence seq to hosts.
func (m *Monitor) send(u *uplink, seq uint16, hosts []netip.Addr) {
	if u.probe == nil {
		return
	}
	for _, h := range hosts {
		if err := u.probe.Send(h, seq); err != nil {
			u.sendErr++
			if u.sendErr == 1 || u.sendErr%1000 == 0 {
				m.log.Debug("probe not sent", zap.String("uplink", u.p.cfg.Name), zap.Stringer("host", h), zap.Uint64("errors", u.sendErr), zap.Error(err))
			}
		}
	}
}

// refresh reads an uplink's interface from the kernel, blocks or unblocks
// it, and (re)opens its prober when the interface or address changed. It
// reports whether anything the desired state depends on changed.
func (m *Monitor) refresh(ctx context.Context, u *uplink, now time.Time) bool {
	c := u.p.cfg
	l, err := m.deps.Kernel.Link(ctx, c.Interface)
	if err != nil {
		l = Link{}
		m.log.Debug("reading the uplink's interface", zap.String("uplink", c.Name), zap.Error(err))
	}
	gw := gatewayOf(c, l, u.gateway)
	changed := l != u.link || gw != u.gateway
	u.link, u.gateway = l, gw
	if l.Addr.IsValid() {
		u.lastAddr = l.Addr.Addr()
	}
	why := ""
	switch {
	case l.Index == 0:
		why = "no interface " + c.Interface
	case !l.Up:
		why = "link down"
	case !l.Addr.IsValid():
		why = "no IPv4 address on " + c.Interface
	case !gw.IsValid():
		why = "no gateway (none configured, no default route through " + c.Interface + ")"
	}
	from := u.p.state
	if u.p.block(why, now) {
		m.transition(u, from)
		changed = true
	}
	if l.Index != u.opened.Index || l.Addr != u.opened.Addr || (u.probe == nil && l.Index > 0 && l.Addr.IsValid() && u.openErr == "") {
		u.closeProbe()
		u.opened = l
		u.openErr = ""
		if l.Index > 0 && l.Addr.IsValid() {
			m.gens++
			gen := m.gens
			p, err := m.deps.Probers.Open(c, l, func(r Reply) {
				select {
				case m.replyCh <- uplinkReply{gen, r}:
				default:
					m.dropped.Add(1)
				}
			})
			if err != nil {
				u.openErr = err.Error()
				m.log.Warn("cannot probe through the uplink", zap.String("uplink", c.Name), zap.Error(err))
			} else {
				u.probe, u.gen = p, gen
			}
		}
	}
	return changed
}

// gatewayOf is an uplink's gateway: the configured one, else the one the
// kernel's default route through its interface names, else the one learnt
// before (while that route was there).
func gatewayOf(c Uplink, l Link, learnt netip.Addr) netip.Addr {
	switch {
	case c.Gateway.IsValid():
		return c.Gateway
	case l.Gateway.IsValid():
		return l.Gateway
	}
	return learnt
}

func (u *uplink) closeProbe() {
	if u.probe != nil {
		_ = u.probe.Close()
		u.probe = nil
	}
}

// transition logs and reports an uplink's change of state.
func (m *Monitor) transition(u *uplink, from State) {
	p := u.p
	t := Transition{Time: p.since, Uplink: p.cfg.Name, Interface: p.cfg.Interface, From: from, To: p.state, Reason: p.reason}
	fields := []zap.Field{zap.String("uplink", p.cfg.Name), zap.String("interface", p.cfg.Interface), zap.String("reason", p.reason)}
	if p.state == StateDown {
		m.log.Warn("uplink down", fields...)
		// The last address: gone with the link (a PPPoE session ending),
		// its connections are still there.
		m.downs = append(m.downs, flushTarget{name: p.cfg.Name, addr: u.lastAddr, mark: p.cfg.Mark})
	} else {
		m.log.Info("uplink up", fields...)
	}
	for _, o := range m.deps.Observers {
		o.Transition(t)
	}
}

// views returns the uplinks as the desired state is computed from.
func (m *Monitor) views() []view {
	vs := make([]view, len(m.ups))
	for i, u := range m.ups {
		vs[i] = view{cfg: u.p.cfg, index: u.link.Index, addr: u.link.Addr, gateway: u.gateway, state: u.p.state}
	}
	return vs
}

// publish computes the desired state and hands it to the applier when it
// differs from the last one (or connections must be ended).
func (m *Monitor) publish(reason string) { m.post(reason, nil) }

// post is publish; with done set, the state is handed over in any case and
// done gets the result of its apply.
func (m *Monitor) post(reason string, done chan error) {
	d := desired(m.cfg, m.views())
	if done == nil && m.hasPost && reflect.DeepEqual(d, m.posted) && len(m.downs) == 0 {
		return
	}
	if reason == "" {
		reason = "the kernel's links, addresses or routes changed"
	}
	m.posted, m.hasPost = d, true
	req := &applyReq{d: d, reason: reason, downs: m.downs}
	if done != nil {
		req.done = []chan error{done}
	}
	m.downs = nil
	m.applyMu.Lock()
	if m.applyNext != nil {
		req.downs = append(m.applyNext.downs, req.downs...)
		req.done = append(m.applyNext.done, req.done...)
	}
	m.applyNext = req
	m.applyMu.Unlock()
	select {
	case m.applyWake <- struct{}{}:
	default:
	}
}

// Applied returns the desired state the kernel carries now (nil before
// the first apply).
func (m *Monitor) Applied() *Desired { return m.applied.Load() }

// do runs f on the loop and waits for it.
func (m *Monitor) do(ctx context.Context, f func()) error {
	done := make(chan struct{})
	select {
	case <-m.running:
	case <-m.done:
		return ErrStopped
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case m.reqCh <- func() { f(); close(done) }:
	case <-m.done:
		return ErrStopped
	case <-ctx.Done():
		return ctx.Err()
	}
	<-done
	return nil
}
