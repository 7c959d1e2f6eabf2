package failover

import (
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

var (
	hostA = netip.MustParseAddr("192.0.2.253")
	hostB = netip.MustParseAddr("192.0.2.254")
	hostC = netip.MustParseAddr("203.0.113.253")
)

func testUplink(hosts ...netip.Addr) Uplink {
	c := Config{Uplinks: []Uplink{{Name: "isp1", Interface: "wan0", Probes: hosts}}}.WithDefaults()
	return c.Uplinks[0]
}

// sim drives a prober on a fake clock over a network that answers each
// request as net says: net gets the round's ordinal (1 for the first),
// the host and the try (0 the first request) and returns the round trip
// and whether the request and its reply both got through.
type sim struct {
	p       *prober
	now     time.Time
	net     func(round uint64, host netip.Addr, try int) (time.Duration, bool)
	pending []simReply // in flight, earliest first
	downs   int        // transitions to down
	changes int
}

type simReply struct {
	at   time.Time
	host netip.Addr
	seq  uint16
}

func newSim(u Uplink, net func(uint64, netip.Addr, int) (time.Duration, bool)) *sim {
	now := time.Unix(1000, 0)
	return &sim{p: newProber(u, now), now: now, net: net}
}

func (s *sim) send(seq uint16, hosts []netip.Addr) {
	for i, r := range s.p.open {
		ti := slices.IndexFunc(r.tries, func(t try) bool { return t.seq == seq })
		if ti < 0 {
			continue
		}
		for _, h := range hosts {
			if rtt, ok := s.net(s.p.rounds+uint64(i)+1, h, ti); ok {
				rep := simReply{at: s.now.Add(rtt), host: h, seq: seq}
				at := len(s.pending)
				for at > 0 && s.pending[at-1].at.After(rep.at) {
					at--
				}
				s.pending = slices.Insert(s.pending, at, rep)
			}
		}
		return
	}
	panic("a request of no round in flight")
}

// step runs the next event: a reply or the prober's own.
func (s *sim) step() {
	next := s.p.nextEvent()
	if len(s.pending) > 0 && !s.pending[0].at.After(next) {
		r := s.pending[0]
		s.pending = s.pending[1:]
		s.now = r.at
		s.p.reply(r.host, r.seq, r.at)
		return
	}
	s.now = next
	s.p.step(next, s.send, func(State) {
		s.changes++
		if s.p.state == StateDown {
			s.downs++
		}
	})
}

// rounds runs until n more rounds are decided and returns whether the
// state changed meanwhile.
func (s *sim) rounds(n int) bool {
	target, changes := s.p.rounds+uint64(n), s.changes
	for s.p.rounds < target {
		s.step()
	}
	return s.changes != changes
}

// until runs until the state is want or d passes; it returns when the
// state became want (false: it did not).
func (s *sim) until(want State, d time.Duration) (time.Time, bool) {
	end := s.now.Add(d)
	for s.p.state != want {
		if s.now.After(end) {
			return time.Time{}, false
		}
		s.step()
	}
	return s.p.since, true
}

// answering is a network where the hosts of answer(round) reply after
// 1 ms.
func answering(answer func(round uint64) []netip.Addr) func(uint64, netip.Addr, int) (time.Duration, bool) {
	return func(r uint64, h netip.Addr, _ int) (time.Duration, bool) {
		return time.Millisecond, slices.Contains(answer(r), h)
	}
}

func TestProberStates(t *testing.T) {
	// Rounds 1–10: host B only; 11–13 silent; 14–16 A; 17 silent; then A.
	s := newSim(testUplink(hostA, hostB), answering(func(r uint64) []netip.Addr {
		switch {
		case r <= 10:
			return []netip.Addr{hostB}
		case r <= 13, r == 17:
			return nil
		}
		return []netip.Addr{hostA}
	}))
	p := s.p
	if p.state != StateUp {
		t.Fatalf("initial state %v, want up", p.state)
	}
	// One host answering is enough (hosts_required 1).
	if s.rounds(10) {
		t.Fatalf("state changed with one host answering: %v (%s)", p.state, p.reason)
	}
	// Two silent rounds: still up; the third takes it down.
	if s.rounds(2) {
		t.Fatalf("down after fewer than %d silent rounds", DefaultDownAfter)
	}
	if !s.rounds(1) || p.state != StateDown {
		t.Fatalf("after %d silent rounds: state %v", DefaultDownAfter, p.state)
	}
	if !strings.Contains(p.reason, "3 rounds in a row") || !strings.Contains(p.reason, "silent: 192.0.2.253, 192.0.2.254") {
		t.Errorf("reason %q does not say why", p.reason)
	}
	// Hysteresis: RepliesRequired good rounds in a row, a silent one
	// starts the count again.
	if s.rounds(DefaultRepliesRequired) || p.state != StateDown {
		t.Fatalf("up after %d good rounds broken by a silent one", DefaultRepliesRequired-1)
	}
	if s.rounds(DefaultRepliesRequired - 1) {
		t.Fatalf("up after %d good rounds following a silent one", DefaultRepliesRequired-1)
	}
	if !s.rounds(1) || p.state != StateUp {
		t.Fatalf("after %d good rounds in a row: state %v", DefaultRepliesRequired, p.state)
	}
	if p.transitions != 2 {
		t.Errorf("transitions = %d, want 2", p.transitions)
	}
}

// Replies to no request in flight, from hosts not probed, after their
// request's timeout, or twice do not count.
func TestProberIgnoresStrayReplies(t *testing.T) {
	now := time.Unix(1000, 0)
	p := newProber(testUplink(hostA), now)
	var seq uint16
	p.startRound(now, func(s uint16, _ []netip.Addr) { seq = s })
	for _, r := range []struct {
		host netip.Addr
		seq  uint16
		at   time.Duration
	}{
		{hostA, seq - 1, time.Millisecond},
		{hostC, seq, time.Millisecond},
		{hostA, seq, p.cfg.Timeout + time.Millisecond},
	} {
		if p.reply(r.host, r.seq, now.Add(r.at)) {
			t.Errorf("reply from %v seq %d after %v counted", r.host, r.seq, r.at)
		}
	}
	if !p.reply(hostA, seq, now.Add(5*time.Millisecond)) {
		t.Fatal("the round's reply was not counted")
	}
	if p.reply(hostA, seq, now.Add(6*time.Millisecond)) {
		t.Error("a duplicate reply counted twice")
	}
	if h := p.hosts[0]; h.received != 1 || h.rtt != 5*time.Millisecond {
		t.Errorf("host: received %d rtt %v, want 1, 5ms", h.received, h.rtt)
	}
}

// Retries go only to the hosts that have not answered, spread over the
// first half of the timeout, each with a sequence and a timeout of its own: a retry's reply
// counts up to a timeout after the retry, and the round is decided then.
func TestProberRetries(t *testing.T) {
	now := time.Unix(1000, 0)
	u := testUplink(hostA, hostB)
	u.Retries = 2
	p := newProber(u, now)
	var sent []uint16
	var to [][]netip.Addr
	send := func(seq uint16, hosts []netip.Addr) { sent, to = append(sent, seq), append(to, hosts) }
	p.startRound(now, send)
	r := p.open[0]
	if got, want := p.retryAt(r), now.Add(u.Timeout/4); !got.Equal(want) {
		t.Fatalf("first retry at %v, want %v", got.Sub(now), want.Sub(now))
	}
	p.reply(hostA, sent[0], now.Add(time.Millisecond))
	p.step(now.Add(u.Timeout/4), send, func(State) {})
	if len(to) != 2 || !slices.Equal(to[1], []netip.Addr{hostB}) || sent[1] == sent[0] {
		t.Fatalf("requests %v to %v, want a retry with its own sequence to [%v]", sent, to, hostB)
	}
	p.step(now.Add(u.Timeout/2), send, func(State) {})
	if got := p.retryAt(r); !got.IsZero() || len(sent) != 3 {
		t.Errorf("a third retry at %v (%d requests), want none", got.Sub(now), len(sent))
	}
	want := now.Add(u.Timeout/2 + u.Timeout)
	if got := p.decideAt(r); !got.Equal(want) {
		t.Errorf("decided at %v, want the last retry's timeout %v", got.Sub(now), want.Sub(now))
	}
	// The first retry's reply, 150 ms after it (after the round's first
	// timeout): it counts, with its own round trip.
	if !p.reply(hostB, sent[1], now.Add(u.Timeout/4+150*time.Millisecond)) {
		t.Fatal("a retry's reply within its own timeout was not counted")
	}
	if h := p.hosts[1]; h.rtt != 150*time.Millisecond {
		t.Errorf("rtt %v, want 150ms (from the retry)", h.rtt)
	}
}

// A blocked uplink (link down) is down at once; unblocked, it needs the
// full count of good rounds.
func TestProberBlock(t *testing.T) {
	s := newSim(testUplink(hostA), answering(func(uint64) []netip.Addr { return []netip.Addr{hostA} }))
	p := s.p
	s.rounds(1)
	if !p.block("link down", s.now) || p.state != StateDown || p.reason != "link down" {
		t.Fatalf("link down: state %v reason %q", p.state, p.reason)
	}
	if s.rounds(10) {
		t.Fatal("came up while blocked")
	}
	p.block("", s.now)
	if s.rounds(DefaultRepliesRequired - 1) {
		t.Fatalf("up fewer than %d rounds after the link came back", DefaultRepliesRequired)
	}
	if !s.rounds(1) || p.state != StateUp {
		t.Fatal("not up after the link came back and enough good rounds")
	}
}

// No flapping at 20% loss: each request and each reply lost with
// probability 0.2, the defaults, one probe host, round trips of 1, 80 and
// 150 ms: in a simulated day the uplink never goes down, and every retry
// counts whatever the round trip (up to the timeout). The same loss
// without retries shows what they protect against. And an outage is
// still found: the uplink goes down within 750 ms of the cut (the first
// round after it within an interval, the next ones half a timeout apart,
// the third decided a timeout and a half after it started).
func TestProberNoFlapAtLoss(t *testing.T) {
	const day = 24 * time.Hour
	lossy := func(rnd *rand.Rand, rtt time.Duration) func(uint64, netip.Addr, int) (time.Duration, bool) {
		return func(uint64, netip.Addr, int) (time.Duration, bool) {
			return rtt, rnd.Float64() >= 0.2 && rnd.Float64() >= 0.2
		}
	}
	t.Run("day", func(t *testing.T) {
		for _, rtt := range []time.Duration{time.Millisecond, 80 * time.Millisecond, 150 * time.Millisecond} {
			t.Run(rtt.String(), func(t *testing.T) {
				t.Parallel()
				s := newSim(testUplink(hostA), lossy(rand.New(rand.NewPCG(20, uint64(rtt))), rtt))
				for end := s.now.Add(day); s.now.Before(end); {
					s.step()
				}
				t.Logf("one host, rtt %v, 20%% loss each way: %d rounds, %d false downs in a day", rtt, s.p.rounds, s.downs)
				if s.downs != 0 {
					t.Errorf("one host, rtt %v, 20%% loss each way: %d false downs in a day", rtt, s.downs)
				}
			})
		}
	})
	u := Config{Uplinks: []Uplink{{Name: "isp1", Interface: "wan0", Probes: []netip.Addr{hostA}, Retries: -1}}}.WithDefaults().Uplinks[0]
	s := newSim(u, lossy(rand.New(rand.NewPCG(20, 0)), time.Millisecond))
	for end := s.now.Add(day); s.now.Before(end); {
		s.step()
	}
	if s.downs == 0 {
		t.Error("without retries the same loss never took the uplink down: the simulation shows nothing")
	} else {
		t.Logf("without retries: %d false downs in a day", s.downs)
	}

	// Outages at 100 cut times spread over an interval, with a 1 ms
	// round trip (the slowest to find: the last round before the cut is
	// answered) and the same loss before the cut.
	var worst time.Duration
	for i := range 100 {
		rnd := rand.New(rand.NewPCG(21, uint64(i)))
		var cut time.Time
		s := newSim(testUplink(hostA), nil)
		s.net = func(uint64, netip.Addr, int) (time.Duration, bool) {
			return time.Millisecond, !s.now.After(cut) && rnd.Float64() >= 0.2 && rnd.Float64() >= 0.2
		}
		cut = s.now.Add(10*time.Second + time.Duration(i)*DefaultInterval/100)
		for s.now.Before(cut) {
			s.step()
		}
		if s.p.state != StateUp {
			continue // a false down before the cut: counted above
		}
		// Replies on their way at the cut are lost too.
		s.pending = slices.DeleteFunc(s.pending, func(r simReply) bool { return r.at.After(cut) })
		down, ok := s.until(StateDown, 5*time.Second)
		if !ok {
			t.Fatalf("cut %d: still up 5 s after", i)
		}
		worst = max(worst, down.Sub(cut))
	}
	t.Logf("down at most %v after a cut", worst)
	if worst > 750*time.Millisecond {
		t.Errorf("down up to %v after a cut, want within 750 ms (the default route moved ≤ 1 s)", worst)
	}
}

func TestHostLoss(t *testing.T) {
	h := &hostState{}
	for i := range 100 {
		h.record(i%5 != 0)
	}
	// The last 64 rounds: rounds 36–99, of which 40, 45, … 95 are lost
	// (12 of 64).
	if got, want := h.loss(), 100*12.0/64; got != want {
		t.Errorf("loss = %v%%, want %v%%", got, want)
	}
}
