package failover

import (
	"fmt"
	"math/bits"
	"net/netip"
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
	rounds    int // rounds in history (≤ historyLen)
	answered  bool
	rtt       time.Duration // of the last reply
	srtt      time.Duration // smoothed (RFC 6298 α = 1/8)
	lastReply time.Time
}

// record ends a round for the host.
func (h *hostState) record() {
	h.history <<= 1
	if h.answered {
		h.history |= 1
	}
	h.rounds = min(h.rounds+1, historyLen)
	h.answered = false
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

// prober is the probing state of one uplink: rounds of one echo request
// to every probe host, each round good when enough hosts answered within
// the timeout.
type prober struct {
	cfg   Uplink
	hosts []*hostState

	seq        uint16
	inRound    bool
	roundStart time.Time
	nextRound  time.Time
	tries      int // requests sent to the silent hosts this round

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

// startRound begins a round: the caller sends an echo request with
// sequence p.seq to every host. It returns the sequence.
func (p *prober) startRound(now time.Time) uint16 {
	p.seq++
	p.inRound = true
	p.roundStart = now
	p.nextRound = now.Add(p.cfg.Interval)
	p.tries = 1
	for _, h := range p.hosts {
		h.sent++
		h.answered = false
	}
	return p.seq
}

// retryAt is when the round's next request goes to the hosts that have
// not answered yet; zero when the round has sent them all. The Retries
// requests are spread evenly over the timeout.
func (p *prober) retryAt() time.Time {
	if !p.inRound || p.tries > p.cfg.Retries {
		return time.Time{}
	}
	return p.roundStart.Add(p.cfg.Timeout * time.Duration(p.tries) / time.Duration(p.cfg.Retries+1))
}

// retry counts another request of the round and returns the hosts to send
// it to: those that have not answered.
func (p *prober) retry() []netip.Addr {
	p.tries++
	var out []netip.Addr
	for _, h := range p.hosts {
		if !h.answered {
			h.sent++
			out = append(out, h.addr)
		}
	}
	return out
}

// reply records an echo reply; replies of another round, from unknown
// hosts or after the timeout are ignored (false).
func (p *prober) reply(host netip.Addr, seq uint16, at time.Time) bool {
	if !p.inRound || seq != p.seq || at.Sub(p.roundStart) > p.cfg.Timeout {
		return false
	}
	for _, h := range p.hosts {
		if h.addr != host || h.answered {
			continue
		}
		h.answered = true
		h.received++
		h.rtt = at.Sub(p.roundStart)
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

// roundEnd is when the current round is decided.
func (p *prober) roundEnd() time.Time { return p.roundStart.Add(p.cfg.Timeout) }

// endRound decides the current round and reports whether the uplink's
// state changed.
func (p *prober) endRound(now time.Time) bool {
	if !p.inRound {
		return false
	}
	p.inRound = false
	p.rounds++
	answered := 0
	for _, h := range p.hosts {
		if h.answered {
			answered++
		}
		h.record()
	}
	if answered >= p.cfg.HostsRequired {
		p.good++
		p.bad = 0
	} else {
		p.bad++
		p.good = 0
		// A round without enough replies is followed at once by the next
		// (its timeout is spent): an outage is confirmed in DownAfter
		// timeouts rather than intervals.
		p.nextRound = now
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
