package nhrp

import (
	"context"
	"testing"
	"testing/synctest"
	"time"
)

// TestRevoke: the registrations of a peer whose certificate was revoked,
// and the bindings that lead to it, end at once (cause revoked); the
// other clients stay.
func TestRevoke(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t)
		hub, spokes := l.standard(2)
		settle(time.Second)
		l.send(spokes[1], lanHost(2), lanHost(1))
		settle(time.Second)
		n, err := hub.eng.Revoke(context.Background(), spokeNBMA(1), "certificate revoked")
		if err != nil || n != 1 {
			t.Fatalf("hub: %d entries revoked (%v), want 1", n, err)
		}
		if _, ok := hub.entry(t, hostPrefix(spokeAddr(1))); ok {
			t.Error("the revoked spoke's registration is still there")
		}
		if _, ok := hub.entry(t, hostPrefix(spokeAddr(2))); !ok {
			t.Error("another spoke's registration went too")
		}
		ev := hub.eventsOf(EventExpired)
		if len(ev) != 1 || ev[0].Cause != CauseRevoked {
			t.Errorf("expiry events %+v", ev)
		}
		if n, err := spokes[1].eng.Revoke(context.Background(), spokeNBMA(1), "certificate revoked"); err != nil || n != 2 {
			t.Errorf("spoke2: %d entries revoked (%v), want its shortcut and binding", n, err)
		}
		settle(time.Millisecond) // the kernel worker applies the removal
		if nbma, err := spokes[1].dev.Forward(lanHost(1)); err == nil && nbma == spokeNBMA(1) {
			t.Error("spoke2 still goes straight to the revoked spoke")
		}
	})
}
