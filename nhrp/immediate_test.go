package nhrp

import (
	"context"
	"net/netip"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/opendmvpn/dmvpn/nhrp/wire"
)

// splitAuthorizer decides spoke 1 at once (refusing it) and leaves the
// others to Authorize (accepting them), recording what it was asked.
type splitAuthorizer struct {
	mu    sync.Mutex
	now   []netip.Prefix
	later []netip.Prefix
}

func (a *splitAuthorizer) AuthorizeNow(r Registration) (Verdict, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.now = append(a.now, r.Proto)
	if r.Proto == hostPrefix(spokeAddr(1)) {
		return Verdict{Code: uint8(wire.CIEAdminProhibited), Reason: "policy"}, true
	}
	return Verdict{}, false
}

func (a *splitAuthorizer) Authorize(_ context.Context, r Registration) Verdict {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.later = append(a.later, r.Proto)
	return Verdict{}
}

// TestImmediateAuthorizer: what an ImmediateAuthorizer decides at once is
// answered without Authorize; what it cannot is left to Authorize.
func TestImmediateAuthorizer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t)
		hub := l.addHub(1, hubConfig(), 1, 2)
		a := &splitAuthorizer{}
		hub.deps.Authorizer = a
		l.start(hub)
		for i := 1; i <= 2; i++ {
			l.start(l.addSpoke(i, 1, spokeConfig(1)))
		}
		settle(time.Second)
		if _, ok := hub.entry(t, hostPrefix(spokeAddr(1))); ok {
			t.Error("spoke 1, refused at once, is registered")
		}
		if _, ok := hub.entry(t, hostPrefix(spokeAddr(2))); !ok {
			t.Error("spoke 2, accepted by Authorize, is not registered")
		}
		if ev := hub.eventsOf(EventRegistrationRefused); len(ev) == 0 || ev[0].Reason != "policy" {
			t.Errorf("refusals %+v", ev)
		}
		a.mu.Lock()
		defer a.mu.Unlock()
		for _, p := range a.later {
			if p == hostPrefix(spokeAddr(1)) {
				t.Errorf("Authorize asked about spoke 1, which was decided at once")
			}
		}
		if len(a.later) == 0 || len(a.now) < 2 {
			t.Errorf("asked at once %v, later %v", a.now, a.later)
		}
	})
}
