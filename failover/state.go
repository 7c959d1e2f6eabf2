package failover

import (
	"fmt"
	"math/bits"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// State is an uplink's state.
type State uint8

// States. An uplink starts up (as pingu's hosts start online): the
// first rounds decide.
const (
	StateUp State = iota
	StateDown
)

// String names the state ("up", "down").
func (s State) String() string {
	if s == StateDown {
		return "down"
	}
	return "up"
}

// historyLen is how many rounds of each probe host the loss figure
// covers.
const historyLen = 64

// hostState is what one probe host answered through one uplink.
type hostState struct {
	addr     netip.Addr
	sent     uint64
	received uint64
	// history holds the last rounds, newest in bit 0: 1 answered.
	history   uint64
	rounds    int           // rounds in history (≤ historyLen)
	rtt       time.Duration // of the last reply, from its own request
	srtt      time.Duration // smoothed (RFC 6298 α = 1/8)
	lastReply time.Time
}

// record ends a round for the host.
func (h *hostState) record(answered bool) {
	h.history <<= 1
	if answered {
		h.history |= 1
	}
	h.rounds = min(h.rounds+1, historyLen)
}

// loss is the share of the recorded rounds without a reply, in percent.
func (h *hostState) loss() float64 {
	if h.rounds == 0 {
		return 0
	}
	mask := ^uint64(0)
	if h.rounds < 64 {
		mask = 1<<h.rounds - 1
	}
	got := bits.OnesCount64(h.history & mask)
	return 100 * float64(h.rounds-got) / float64(h.rounds)
}

// round is one probe round in flight: a request to every host, then the
// retries to the silent ones. Every request has a sequence of its own and
// counts when its reply comes within the timeout of its own sending, so
// a retry counts whatever the round trip (up to the timeout); the round
// is decided once the last request's timeout has passed (or every host
// answered).
type round struct {
	start    time.Time
	answered []bool // by host
	tries    []try  // the requests sent, first one first
	// suspect is set once the next round was started early because this
	// one lacked replies after its first timeout.
	suspect bool
}

// try is one request of a round (to every host silent when it was sent).
type try struct {
	seq  uint16
	sent time.Time
}

// count returns how many hosts answered.
func (r *round) count() int {
	n := 0
	for _, a := range r.answered {
		if a {
			n++
		}
	}
	return n
}

// prober is the probing state of one uplink: rounds of one echo request
// to every probe host (and retries to the silent ones), each round good
// when enough hosts answered. Rounds may overlap: a round lacking replies
// after its first timeout starts the next at once, while its own retries
// still run.
type prober struct {
	cfg   Uplink
	hosts []*hostState

	seq       uint16   // the last request's sequence
	open      []*round // in flight, oldest first; decided in order
	nextRound time.Time

	state  State
	since  time.Time
	reason string
	good   int // rounds in a row with enough replies
	bad    int // rounds in a row without
	rounds uint64
	// transitions counts state changes.
	transitions uint64
	// blocked holds the uplink down whatever the probes say, and why.
	blocked string
}

func newProber(cfg Uplink, now time.Time) *prober {
	p := &prober{cfg: cfg, state: StateUp, since: now, reason: "starting", nextRound: now}
	for _, a := range cfg.Probes {
		p.hosts = append(p.hosts, &hostState{addr: a})
	}
	return p
}

// sendFunc sends the request with sequence seq to hosts.
type sendFunc func(seq uint16, hosts []netip.Addr)

// step does what is due at now: the retries, the decisions of the rounds
// whose last timeout has passed (oldest first; changed is called after
// each change of state, with the state before), and the next round.
func (p *prober) step(now time.Time, send sendFunc, changed func(from State)) {
	for _, r := range p.open {
		if at := p.retryAt(r); !at.IsZero() && !now.Before(at) {
			p.retry(r, now, send)
		}
	}
	for len(p.open) > 0 && !now.Before(p.decideAt(p.open[0])) {
		from := p.state
		if p.endRound(now) {
			changed(from)
		}
	}
	if p.roundDue(now) {
		p.startRound(now, send)
	}
}

// nextEvent is when step has something to do next.
func (p *prober) nextEvent() time.Time {
	next := p.nextRound
	if n := len(p.open); n > 0 {
		if r := p.open[n-1]; !r.suspect && r.count() < p.cfg.HostsRequired {
			next = minTime(next, r.start.Add(p.suspectAfter()))
		}
		next = minTime(next, p.decideAt(p.open[0]))
	}
	for _, r := range p.open {
		if at := p.retryAt(r); !at.IsZero() {
			next = minTime(next, at)
		}
	}
	return next
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// suspectAfter is how long the newest round may lack replies before the
// next starts: twice the slowest answering host's smoothed round trip, at
// least half the timeout (when its retries are all sent) and at most the
// timeout, which it is until a host has answered (a host that never
// answers through this uplink, reached only through another, does not
// count).
func (p *prober) suspectAfter() time.Duration {
	d, heard := p.cfg.Timeout/2, false
	for _, h := range p.hosts {
		if h.srtt > 0 {
			d, heard = max(d, 2*h.srtt), true
		}
	}
	if !heard {
		return p.cfg.Timeout
	}
	return min(d, p.cfg.Timeout)
}

// roundDue reports whether the next round starts now: at the interval,
// or at once when the newest round lacks replies for longer than its
// hosts take to answer (suspectAfter: an outage is then confirmed in
// DownAfter of those, not intervals; that round's retries go on).
func (p *prober) roundDue(now time.Time) bool {
	if !now.Before(p.nextRound) {
		return true
	}
	n := len(p.open)
	if n == 0 {
		return false
	}
	r := p.open[n-1]
	if r.suspect || r.count() >= p.cfg.HostsRequired || now.Before(r.start.Add(p.suspectAfter())) {
		return false
	}
	r.suspect = true
	return true
}

// request takes the next sequence and counts a request to the hosts.
func (p *prober) request(r *round, now time.Time) (uint16, []netip.Addr) {
	p.seq++
	r.tries = append(r.tries, try{seq: p.seq, sent: now})
	var hosts []netip.Addr
	for i, h := range p.hosts {
		if !r.answered[i] {
			h.sent++
			hosts = append(hosts, h.addr)
		}
	}
	return p.seq, hosts
}

// startRound begins a round: an echo request to every host.
func (p *prober) startRound(now time.Time, send sendFunc) {
	r := &round{start: now, answered: make([]bool, len(p.hosts))}
	p.open = append(p.open, r)
	p.nextRound = now.Add(p.cfg.Interval)
	send(p.request(r, now))
}

// retryAt is when a round's next request goes to the hosts that have not
// answered yet; zero when it has sent them all or every host answered.
// The Retries requests are spread evenly over the first half of the
// timeout (25, 50, 75 and 100 ms by default): each waits a whole timeout
// for its reply, and the round is decided a timeout and a half after it
// started, which keeps an outage found within a second.
func (p *prober) retryAt(r *round) time.Time {
	if len(r.tries) > p.cfg.Retries || r.count() == len(r.answered) {
		return time.Time{}
	}
	return r.start.Add(p.retryOffset(len(r.tries)))
}

// retryOffset is when the k-th retry (from 1) goes, from the round's start.
func (p *prober) retryOffset(k int) time.Duration {
	return p.cfg.Timeout / 2 * time.Duration(k) / time.Duration(p.cfg.Retries)
}

// retry sends a round's next request to the hosts that have not answered.
func (p *prober) retry(r *round, now time.Time, send sendFunc) {
	send(p.request(r, now))
}

// decideAt is when a round is decided: once every host answered, else
// the timeout after its last request (those still to be sent included).
func (p *prober) decideAt(r *round) time.Time {
	if r.count() == len(r.answered) {
		return r.start
	}
	last := r.tries[len(r.tries)-1].sent
	if at := p.retryAt(r); !at.IsZero() {
		last = r.start.Add(p.retryOffset(p.cfg.Retries))
		last = maxTime(last, at)
	}
	return last.Add(p.cfg.Timeout)
}

func maxTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return b
	}
	return a
}

// reply records an echo reply; replies to no request in flight, from
// hosts not asked, or after the timeout of their request are ignored
// (false).
func (p *prober) reply(host netip.Addr, seq uint16, at time.Time) bool {
	hi := slices.IndexFunc(p.hosts, func(h *hostState) bool { return h.addr == host })
	if hi < 0 {
		return false
	}
	for _, r := range p.open {
		ti := slices.IndexFunc(r.tries, func(t try) bool { return t.seq == seq })
		if ti < 0 {
			continue
		}
		rtt := at.Sub(r.tries[ti].sent)
		if r.answered[hi] || rtt < 0 || rtt > p.cfg.Timeout {
			return false
		}
		r.answered[hi] = true
		h := p.hosts[hi]
		h.received++
		h.rtt = rtt
		if h.srtt == 0 {
			h.srtt = h.rtt
		} else {
			h.srtt += (h.rtt - h.srtt) / 8
		}
		h.lastReply = at
		return true
	}
	return false
}

// endRound decides the oldest round in flight and reports whether the
// uplink's state changed.
func (p *prober) endRound(now time.Time) bool {
	if len(p.open) == 0 {
		return false
	}
	r := p.open[0]
	p.open = slices.Delete(p.open, 0, 1)
	p.rounds++
	for i, h := range p.hosts {
		h.record(r.answered[i])
	}
	if r.count() >= p.cfg.HostsRequired {
		p.good++
		p.bad = 0
	} else {
		p.bad++
		p.good = 0
	}
	switch {
	case p.state == StateUp && p.bad >= p.cfg.DownAfter:
		return p.set(StateDown, now, fmt.Sprintf("%d rounds in a row with fewer than %d of %d probe hosts answering (%s)",
			p.bad, p.cfg.HostsRequired, len(p.hosts), p.silent()))
	case p.state == StateDown && p.blocked == "" && p.good >= p.cfg.RepliesRequired:
		return p.set(StateUp, now, fmt.Sprintf("%d rounds in a row with at least %d of %d probe hosts answering",
			p.good, p.cfg.HostsRequired, len(p.hosts)))
	}
	return false
}

// silent names the hosts that did not answer the last round.
func (p *prober) silent() string {
	var s []string
	for _, h := range p.hosts {
		if h.history&1 == 0 {
			s = append(s, h.addr.String())
		}
	}
	if len(s) == 0 {
		return "none silent"
	}
	return "silent: " + strings.Join(s, ", ")
}

// block records what keeps the uplink from carrying traffic whatever the
// probes say ("link down", "no IPv4 address", "no gateway"; "" for
// nothing): blocked, it is down at once; unblocked, the probes decide
// from a fresh count of good rounds.
func (p *prober) block(why string, now time.Time) bool {
	if why == p.blocked {
		return false
	}
	was := p.blocked
	p.blocked = why
	p.good, p.bad = 0, 0
	if why != "" {
		if p.state == StateDown && was == "" {
			p.reason = why
		}
		return p.set(StateDown, now, why)
	}
	return false
}

// set changes the state and reports whether it changed.
func (p *prober) set(s State, now time.Time, reason string) bool {
	if p.state == s {
		return false
	}
	p.state, p.since, p.reason = s, now, reason
	p.transitions++
	return true
}
