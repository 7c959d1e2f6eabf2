package failover

import (
	"math/rand/v2"
	"net/netip"
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

// round runs one round in which the listed hosts answer, and returns
// whether the state changed.
func round(p *prober, now *time.Time, answer ...netip.Addr) bool {
	seq := p.startRound(*now)
	for _, h := range answer {
		p.reply(h, seq, now.Add(time.Millisecond))
	}
	*now = now.Add(p.cfg.Timeout)
	changed := p.endRound(*now)
	*now = p.nextRound
	return changed
}

func TestProberStates(t *testing.T) {
	now := time.Unix(1000, 0)
	p := newProber(testUplink(hostA, hostB), now)
	if p.state != StateUp {
		t.Fatalf("initial state %v, want up", p.state)
	}
	// One host answering is enough (hosts_required 1).
	for range 10 {
		if round(p, &now, hostB) {
			t.Fatalf("state changed with one host answering: %v (%s)", p.state, p.reason)
		}
	}
	// Two silent rounds: still up; the third takes it down.
	for i := range 2 {
		if round(p, &now) {
			t.Fatalf("down after %d silent rounds, want %d", i+1, DefaultDownAfter)
		}
	}
	if !round(p, &now) || p.state != StateDown {
		t.Fatalf("after %d silent rounds: state %v", DefaultDownAfter, p.state)
	}
	if !strings.Contains(p.reason, "3 rounds in a row") || !strings.Contains(p.reason, "silent: 192.0.2.253, 192.0.2.254") {
		t.Errorf("reason %q does not say why", p.reason)
	}
	// Hysteresis: RepliesRequired good rounds in a row, a silent one
	// starts the count again.
	for range DefaultRepliesRequired - 1 {
		round(p, &now, hostA)
	}
	round(p, &now)
	for i := range DefaultRepliesRequired - 1 {
		if round(p, &now, hostA) {
			t.Fatalf("up after %d good rounds following a silent one", i+1)
		}
	}
	if !round(p, &now, hostA) || p.state != StateUp {
		t.Fatalf("after %d good rounds in a row: state %v", DefaultRepliesRequired, p.state)
	}
	if p.transitions != 2 {
		t.Errorf("transitions = %d, want 2", p.transitions)
	}
}

// Replies of another round, from hosts not probed, or after the timeout
// do not count.
func TestProberIgnoresStrayReplies(t *testing.T) {
	now := time.Unix(1000, 0)
	p := newProber(testUplink(hostA), now)
	seq := p.startRound(now)
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
// timeout.
func TestProberRetries(t *testing.T) {
	now := time.Unix(1000, 0)
	u := testUplink(hostA, hostB)
	u.Retries = 2
	p := newProber(u, now)
	p.startRound(now)
	want := now.Add(u.Timeout / 3)
	if got := p.retryAt(); !got.Equal(want) {
		t.Fatalf("first retry at %v, want %v", got.Sub(now), want.Sub(now))
	}
	p.reply(hostA, p.seq, now.Add(time.Millisecond))
	if got := p.retry(); len(got) != 1 || got[0] != hostB {
		t.Errorf("retry goes to %v, want [%v]", got, hostB)
	}
	if got := p.retryAt(); !got.Equal(now.Add(2 * u.Timeout / 3)) {
		t.Errorf("second retry at %v", got.Sub(now))
	}
	p.retry()
	if got := p.retryAt(); !got.IsZero() {
		t.Errorf("a third retry at %v, want none", got.Sub(now))
	}
}

// A blocked uplink (link down) is down at once; unblocked, it needs the
// full count of good rounds.
func TestProberBlock(t *testing.T) {
	now := time.Unix(1000, 0)
	p := newProber(testUplink(hostA), now)
	round(p, &now, hostA)
	if !p.block("link down", now) || p.state != StateDown || p.reason != "link down" {
		t.Fatalf("link down: state %v reason %q", p.state, p.reason)
	}
	for range 10 {
		if round(p, &now, hostA) {
			t.Fatal("came up while blocked")
		}
	}
	p.block("", now)
	for i := range DefaultRepliesRequired - 1 {
		if round(p, &now, hostA) {
			t.Fatalf("up %d rounds after the link came back", i+1)
		}
	}
	if !round(p, &now, hostA) || p.state != StateUp {
		t.Fatal("not up after the link came back and enough good rounds")
	}
}

// No flapping at 20% loss: each request or reply lost with probability
// 0.2 each way, two probe hosts, the defaults (two retries a round): in a simulated
// day the uplink never goes down. The same loss without the retry shows
// what it protects against.
func TestProberNoFlapAtLoss(t *testing.T) {
	const rounds = 24 * 3600 * 4 // a day at 250 ms
	run := func(retries int) (downs int) {
		rnd := rand.New(rand.NewPCG(20, 0))
		u := testUplink(hostA, hostB)
		u.Retries = retries
		now := time.Unix(1000, 0)
		p := newProber(u, now)
		for range rounds {
			var ans []netip.Addr
			for _, h := range u.Probes {
				for range retries + 1 {
					// A try succeeds when the request and its reply both
					// get through: 20% loss each way is 36% per try.
					if rnd.Float64() >= 0.2 && rnd.Float64() >= 0.2 {
						ans = append(ans, h)
						break
					}
				}
			}
			if round(p, &now, ans...) && p.state == StateDown {
				downs++
			}
		}
		return downs
	}
	if d := run(DefaultRetries); d != 0 {
		t.Errorf("20%% loss each way, %d retry: %d false downs in a day", DefaultRetries, d)
	}
	if d := run(0); d == 0 {
		t.Errorf("without retries the same loss took the uplink down %d times: the simulation shows nothing", d)
	} else {
		t.Logf("without retries: %d false downs in a day", d)
	}
	// And a real outage is still found in DownAfter rounds.
	now := time.Unix(1000, 0)
	p := newProber(testUplink(hostA, hostB), now)
	for i := 1; i <= DefaultDownAfter; i++ {
		if round(p, &now) != (i == DefaultDownAfter) {
			t.Fatalf("outage: state %v after %d silent rounds", p.state, i)
		}
	}
}

func TestHostLoss(t *testing.T) {
	h := &hostState{}
	for i := range 100 {
		h.answered = i%5 != 0
		h.record()
	}
	// The last 64 rounds: rounds 36–99, of which 40, 45, … 95 are lost
	// (12 of 64).
	if got, want := h.loss(), 100*12.0/64; got != want {
		t.Errorf("loss = %v%%, want %v%%", got, want)
	}
}
