package nhrp

import (
	"context"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// fakePeers is a PeerHandler that brings every peer up at once and
// records the calls.
type fakePeers struct {
	mu     sync.Mutex
	ups    []Peer
	downs  []string // "nbma reason"
	downAt []time.Time
}

func (f *fakePeers) PeerUp(ctx context.Context, p Peer) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ups = append(f.ups, p)
	return nil
}

func (f *fakePeers) PeerDown(p Peer, reason string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.downs = append(f.downs, p.NBMA.String()+" "+reason)
	f.downAt = append(f.downAt, time.Now())
}

func (f *fakePeers) counts() (int, []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.ups), append([]string(nil), f.downs...)
}

// TestSilentServerReset: a server that stops answering over a peer that
// is up (an established SA carrying nothing) gets the peer torn down
// after unreachableAfter failures and brought up afresh by the next
// registration; a server that comes back is registered with as before.
func TestSilentServerReset(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t)
		hub := l.addHub(1, hubConfig(), 1)
		l.start(hub)
		s := l.addSpoke(1, 1, spokeConfig(1))
		fp := &fakePeers{}
		s.deps.Peers = fp
		l.start(s)
		settle(100 * time.Millisecond)
		if st := s.nhsState(t, hubNBMA(1)); st.State != NHSUp {
			t.Fatalf("server %s", st.State)
		}
		ups0, downs := fp.counts()
		if ups0 != 1 || len(downs) != 0 {
			t.Fatalf("before: %d PeerUp, downs %v", ups0, downs)
		}
		hub.stop()
		// Silent: the refresh and its retries (1 s, 2 s, 4 s) go
		// unanswered; at the third failure the peer is reset.
		settle(s.cfg.HoldingTime/3 + 10*time.Second)
		ups, downs := fp.counts()
		if len(downs) == 0 || !strings.Contains(downs[0], hubNBMA(1).String()) || !strings.Contains(downs[0], "silent") {
			t.Fatalf("no reset of the silent server's peer: downs %v", downs)
		}
		if ups <= ups0 {
			t.Errorf("the peer was not brought up again after the reset (%d PeerUp)", ups)
		}
		// The server comes back: registered again.
		l.restart(hub)
		settle(20 * time.Second)
		if st := s.nhsState(t, hubNBMA(1)); st.State != NHSUp {
			t.Errorf("server %s after it came back", st.State)
		}
	})
}

// TestShutdownPurgeBeforeRelease: a spoke stopping purges its
// registration and only then, after purgeGrace, releases its peers (with
// IPsec the release tears the SA down, and the purge must get out first).
func TestShutdownPurgeBeforeRelease(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t)
		hub := l.addHub(1, hubConfig(), 1)
		l.start(hub)
		cfg := spokeConfig(1)
		cfg.PurgeOnShutdown = true
		s := l.addSpoke(1, 1, cfg)
		fp := &fakePeers{}
		s.deps.Peers = fp
		l.start(s)
		settle(100 * time.Millisecond)
		stopped := time.Now()
		s.stop()
		settle(time.Second)
		var purgedAt time.Time
		for _, e := range hub.eventsOf(EventExpired) {
			if e.Proto == hostPrefix(spokeAddr(1)) {
				purgedAt = e.Time
			}
		}
		if purgedAt.IsZero() {
			t.Fatal("the hub saw no purge")
		}
		fp.mu.Lock()
		defer fp.mu.Unlock()
		if len(fp.downAt) == 0 {
			t.Fatal("the spoke released no peer")
		}
		if d := fp.downAt[0].Sub(purgedAt); d < purgeGrace {
			t.Errorf("peer released %v after the purge arrived (stop at %v), want ≥ %v", d, purgedAt.Sub(stopped), purgeGrace)
		}
	})
}
