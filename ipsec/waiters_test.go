package ipsec

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/zap"
)

// TestWaitUpTimeoutLeavesNothing: a PeerUp that gives up waiting for an
// SA that never comes leaves no waiter behind (a peer that never answers
// left one per attempt, for ever); a waiter still waiting is kept and
// woken when the SA comes up.
func TestWaitUpTimeoutLeavesNothing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		peer := netip.MustParseAddr("192.0.2.7")
		m := &Manager{mode: ModeKernel, log: zap.NewNop(), sas: newSATable(), waiters: map[netip.Addr][]chan struct{}{}}
		m.stats.init()
		long, cancelLong := context.WithCancel(context.Background())
		defer cancelLong()
		longDone := make(chan error, 1)
		go func() { longDone <- m.waitUp(long, peer) }()
		for range 100 {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			if err := m.waitUp(ctx, peer); !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("waitUp without an SA: %v", err)
			}
			cancel()
		}
		synctest.Wait()
		m.mu.Lock()
		n, peers := len(m.waiters[peer]), len(m.waiters)
		m.mu.Unlock()
		if n != 1 || peers != 1 {
			t.Fatalf("after 100 timed-out waits: %d waiters for the peer (%d peers), want only the one still waiting", n, peers)
		}
		m.mu.Lock()
		m.sas.put(SA{IKEID: "1", RemoteHost: peer, State: "ESTABLISHED", Initiator: true,
			Children: []ChildSA{{State: "INSTALLED"}}})
		m.mu.Unlock()
		m.wakeWaiters()
		if err := <-longDone; err != nil {
			t.Errorf("the waiting PeerUp: %v", err)
		}
		m.mu.Lock()
		defer m.mu.Unlock()
		if len(m.waiters) != 0 {
			t.Errorf("waiters left: %v", m.waiters)
		}
	})
}
