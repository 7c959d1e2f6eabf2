// Package failovertest holds in-memory stand-ins for what the failover
// monitor works with: a kernel whose links the test sets, a network of
// probe hosts reachable through chosen uplinks with chosen loss and round
// trip, a host-state owner and a connection table that record what they
// are asked. They use the time package, so tests run them under
// testing/synctest.
package failovertest

import (
	"context"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/opendmvpn/dmvpn/failover"
)

// Kernel is a kernel whose links the test sets.
type Kernel struct {
	mu    sync.Mutex
	links map[string]failover.Link
	ch    chan struct{}
}

// NewKernel returns a kernel with no links.
func NewKernel() *Kernel {
	return &Kernel{links: map[string]failover.Link{}, ch: make(chan struct{}, 1)}
}

// SetLink sets an interface's state and signals a change.
func (k *Kernel) SetLink(ifname string, l failover.Link) {
	k.mu.Lock()
	k.links[ifname] = l
	k.mu.Unlock()
	select {
	case k.ch <- struct{}{}:
	default:
	}
}

// Link implements failover.Kernel.
func (k *Kernel) Link(_ context.Context, ifname string) (failover.Link, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.links[ifname], nil
}

// Changes implements failover.Kernel.
func (k *Kernel) Changes() <-chan struct{} { return k.ch }

// Path is how a probe host answers through one uplink.
type Path struct {
	// Reachable: the host answers through the uplink at all.
	Reachable bool
	// Loss is the probability (0–1) that a request or its reply is lost.
	Loss float64
	// RTT is the round trip.
	RTT time.Duration
}

// Net is the network behind the uplinks: for every uplink (by name) and
// probe host, a Path. Probes of an unknown pair are lost.
type Net struct {
	mu    sync.Mutex
	paths map[string]map[netip.Addr]Path
	rnd   *rand.Rand
	sent  map[string]int
}

// NewNet returns a network whose random losses come from seed.
func NewNet(seed uint64) *Net {
	return &Net{paths: map[string]map[netip.Addr]Path{}, rnd: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), sent: map[string]int{}}
}

// SetPath sets how host answers through uplink.
func (n *Net) SetPath(uplink string, host netip.Addr, p Path) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.paths[uplink] == nil {
		n.paths[uplink] = map[netip.Addr]Path{}
	}
	n.paths[uplink][host] = p
}

// Cut makes every host unreachable through uplink (the ISP dropping
// everything with the link up); Restore makes them reachable again with
// rtt.
func (n *Net) Cut(uplink string) { n.setAll(uplink, false) }

// Restore makes every host of uplink reachable again.
func (n *Net) Restore(uplink string) { n.setAll(uplink, true) }

func (n *Net) setAll(uplink string, on bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for h, p := range n.paths[uplink] {
		p.Reachable = on
		n.paths[uplink][h] = p
	}
}

// Sent returns how many echo requests went out through uplink.
func (n *Net) Sent(uplink string) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.sent[uplink]
}

// Open implements failover.ProberFactory.
func (n *Net) Open(u failover.Uplink, _ failover.Link, deliver func(failover.Reply)) (failover.Prober, error) {
	return &prober{net: n, uplink: u.Name, deliver: deliver}, nil
}

type prober struct {
	net     *Net
	uplink  string
	deliver func(failover.Reply)
	mu      sync.Mutex
	closed  bool
	timers  []*time.Timer
}

// Send implements failover.Prober: the reply comes back after the path's
// round trip unless the path loses it.
func (p *prober) Send(host netip.Addr, seq uint16) error {
	n := p.net
	n.mu.Lock()
	n.sent[p.uplink]++
	path, ok := n.paths[p.uplink][host]
	lost := !ok || !path.Reachable || n.rnd.Float64() < path.Loss
	n.mu.Unlock()
	if lost {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	p.timers = append(p.timers, time.AfterFunc(path.RTT, func() {
		p.mu.Lock()
		closed := p.closed
		p.mu.Unlock()
		if !closed {
			p.deliver(failover.Reply{Host: host, Seq: seq, At: time.Now()})
		}
	}))
	if len(p.timers) > 64 {
		p.timers = slices.Delete(p.timers, 0, 32)
	}
	return nil
}

// Close implements failover.Prober.
func (p *prober) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	for _, t := range p.timers {
		t.Stop()
	}
	return nil
}

// Host records the desired states it is asked to apply.
type Host struct {
	mu     sync.Mutex
	all    []failover.Desired
	fail   error
	refuse func(failover.Desired) error
}

// SetUplinks implements failover.Host.
func (h *Host) SetUplinks(_ context.Context, d failover.Desired) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.fail != nil {
		return h.fail
	}
	if h.refuse != nil {
		if err := h.refuse(d); err != nil {
			return err
		}
	}
	h.all = append(h.all, d)
	return nil
}

// Refuse makes SetUplinks fail for the states f returns an error for, as
// a kernel refusing one route or rule would (nil: take every state).
func (h *Host) Refuse(f func(failover.Desired) error) {
	h.mu.Lock()
	h.refuse = f
	h.mu.Unlock()
}

// Fail makes SetUplinks fail with err (nil: succeed again).
func (h *Host) Fail(err error) {
	h.mu.Lock()
	h.fail = err
	h.mu.Unlock()
}

// Applied returns every state applied, oldest first.
func (h *Host) Applied() []failover.Desired {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.all)
}

// Last returns the state applied last, and false before any.
func (h *Host) Last() (failover.Desired, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.all) == 0 {
		return failover.Desired{}, false
	}
	return h.all[len(h.all)-1], true
}

// Conntrack records the flushes it is asked for.
type Conntrack struct {
	mu      sync.Mutex
	flushes []Flush
}

// Flush is one call of Conntrack.Flush.
type Flush struct {
	Addr       netip.Addr
	Mark, Mask uint32
}

// Flush implements failover.Conntrack.
func (c *Conntrack) Flush(_ context.Context, addr netip.Addr, mark, mask uint32) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.flushes = append(c.flushes, Flush{addr, mark, mask})
	return 1, nil
}

// Flushes returns the calls so far.
func (c *Conntrack) Flushes() []Flush {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.flushes)
}

// Recorder is an Observer that keeps every event.
type Recorder struct {
	mu          sync.Mutex
	transitions []failover.Transition
	applied     []failover.Applied
}

// Transition implements failover.Observer.
func (r *Recorder) Transition(t failover.Transition) {
	r.mu.Lock()
	r.transitions = append(r.transitions, t)
	r.mu.Unlock()
}

// Applied implements failover.Observer.
func (r *Recorder) Applied(a failover.Applied) {
	r.mu.Lock()
	r.applied = append(r.applied, a)
	r.mu.Unlock()
}

// Transitions returns the transitions so far.
func (r *Recorder) Transitions() []failover.Transition {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.transitions)
}

// AppliedEvents returns the applied events so far.
func (r *Recorder) AppliedEvents() []failover.Applied {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.applied)
}
