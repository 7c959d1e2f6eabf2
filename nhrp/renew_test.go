package nhrp

import (
	"context"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestRenewedIdentity: a refresh proved by a renewed certificate with
// other fields emits EventRegistered with CauseRenewed at once (BGP
// updates the neighbour's AS and filter); a refresh with the same
// identity and fields emits nothing.
func TestRenewedIdentity(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t)
		hub := l.addHub(1, hubConfig(), 1)
		var mu sync.Mutex
		ident, attrs := "CN=spoke1", map[string][]string{"AS": {"65001"}, "NET": {"10.11.0.0/24"}}
		hub.deps.Authorizer = AuthorizerFunc(func(ctx context.Context, r Registration) Verdict {
			mu.Lock()
			defer mu.Unlock()
			return Verdict{Identity: ident, Attrs: attrs}
		})
		l.start(hub)
		s := l.addSpoke(1, 1, spokeConfig(1))
		l.start(s)
		settle(time.Second)
		if n := len(hub.eventsOf(EventRegistered)); n != 1 {
			t.Fatalf("%d registrations at first, want 1", n)
		}
		refresh := func() {
			t.Helper()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := s.eng.Reregister(ctx, "test"); err != nil {
				t.Fatal(err)
			}
			settle(time.Second)
		}

		// The same certificate: a plain refresh, no event.
		refresh()
		if n := len(hub.eventsOf(EventRegistered)); n != 1 {
			t.Fatalf("%d registration events after a plain refresh, want 1", n)
		}

		// A renewed certificate: another AS and network.
		mu.Lock()
		ident, attrs = "CN=spoke1,serial=2", map[string][]string{"AS": {"65011"}, "NET": {"10.11.0.0/24", "10.21.0.0/24"}}
		mu.Unlock()
		refresh()
		evs := hub.eventsOf(EventRegistered)
		if len(evs) != 2 {
			t.Fatalf("%d registration events after the renewal, want 2: %+v", len(evs), evs)
		}
		got := evs[1]
		if got.Cause != CauseRenewed || got.Proto != hostPrefix(spokeAddr(1)) || got.NBMA != spokeNBMA(1) || got.Identity != "CN=spoke1,serial=2" {
			t.Errorf("renewal event %+v", got)
		}
		if diff := cmp.Diff(map[string][]string{"AS": {"65011"}, "NET": {"10.11.0.0/24", "10.21.0.0/24"}}, got.Attrs); diff != "" {
			t.Errorf("renewal event's fields (-want +got):\n%s", diff)
		}
		if len(hub.eventsOf(EventExpired)) != 0 {
			t.Errorf("the renewal removed the registration: %+v", hub.eventsOf(EventExpired))
		}
		if e, ok := hub.entry(t, hostPrefix(spokeAddr(1))); !ok || e.Identity != "CN=spoke1,serial=2" {
			t.Errorf("binding after the renewal: %+v", e)
		}

		// Renewed once: the next refresh is plain again.
		refresh()
		if n := len(hub.eventsOf(EventRegistered)); n != 2 {
			t.Errorf("%d registration events after a refresh with the renewed certificate, want 2", n)
		}
	})
}
