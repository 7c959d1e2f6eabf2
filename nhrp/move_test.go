package nhrp

import (
	"context"
	"net/netip"
	"testing"
	"testing/synctest"
	"time"

	"github.com/opendmvpn/dmvpn/nhrp/wire"
)

// certAuthorizer stands in for IPsec: every registration is proven by a
// certificate naming the address it registers.
var certAuthorizer = AuthorizerFunc(func(_ context.Context, r Registration) Verdict {
	return Verdict{Identity: "CN=" + r.Proto.Addr().String(), Proven: true}
})

// TestNBMAMove: spoke1's uplink fails over to another ISP. Its binding at
// the hub moves to the new address at once (proven by its certificate:
// no code 14, no wait for the holding time), its registration is fresh,
// and spoke2, which had a shortcut to spoke1's LAN at the old address, is
// purged (from the new address: spoke1's certificate proves the tunnel
// address the shortcut belongs to) and reaches the new one after the next
// redirect.
func TestNBMAMove(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t)
		hub := l.addHub(1, hubConfig(), 1, 2)
		hub.deps.Authorizer = certAuthorizer
		l.start(hub)
		moved := netip.MustParseAddr("203.0.113.65")
		certs := labCerts()
		certs.m[moved] = certs.m[spokeNBMA(1)]
		s1 := l.addSpoke(1, 1, spokeConfig(1))
		s2 := l.addSpoke(2, 1, spokeConfig(1))
		s1.deps.Verifier, s2.deps.Verifier = certs, certs
		s1.router.setLocal(spokeLAN(1))
		l.start(s1)
		l.start(s2)
		settle(time.Second)

		// spoke2 → spoke1's LAN: relayed, redirected, then direct.
		l.send(s2, lanHost(2), lanHost(1))
		settle(time.Second)
		if nbma, err := s2.dev.Forward(lanHost(1)); err != nil || nbma != spokeNBMA(1) {
			t.Fatalf("shortcut before the move goes to %v (%v)", nbma, err)
		}

		if err := s1.dev.Move(moved); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if err := s1.eng.NBMAChanged(context.Background(), spokeNBMA(1), moved, "test"); err != nil {
			t.Fatal(err)
		}
		settle(100 * time.Millisecond)
		e, ok := hub.entry(t, hostPrefix(spokeAddr(1)))
		if !ok || e.NBMA != moved || !contains(e.Flags, "unique") {
			t.Fatalf("hub's binding of spoke1 %v after the move: %+v", time.Since(start), e)
		}
		if refused := hub.eventsOf(EventRegistrationRefused); len(refused) != 0 {
			t.Errorf("refusals during the move: %+v", refused)
		}
		if n := len(hub.eventsOf(EventExpired)); n != 0 {
			t.Errorf("the binding expired %d times on its way to the new address (BGP would drop the spoke)", n)
		}
		// spoke2's shortcut at the old address was purged and, in use, at
		// once resolved again: no wait for the hub's next redirect.
		if nbma, err := s2.dev.Forward(lanHost(1)); err != nil || nbma != moved {
			t.Fatalf("shortcut %v after the move goes to %v (%v), want %v", time.Since(start), nbma, err, moved)
		}
		if n := len(s2.eventsOf(EventShortcutUp)); n != 2 {
			t.Errorf("%d shortcuts installed, want 2 (before and after the move)", n)
		}
	})
}

// Without a certificate's proof the unique binding does not move: code 14,
// as before. Once the client's protection is gone (its SA) the binding is
// freed and another address may take it.
func TestNBMAMoveUnproven(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t)
		hub, spokes := l.standard(1)
		settle(time.Second)
		moved := netip.MustParseAddr("203.0.113.65")
		if err := spokes[0].dev.Move(moved); err != nil {
			t.Fatal(err)
		}
		spokes[0].eng.NBMAChanged(context.Background(), spokeNBMA(1), moved, "test")
		settle(time.Second)
		if e, _ := hub.entry(t, hostPrefix(spokeAddr(1))); e.NBMA != spokeNBMA(1) {
			t.Fatalf("unproven move taken: %+v", e)
		}
		refused := hub.eventsOf(EventRegistrationRefused)
		if len(refused) == 0 || refused[0].Code != uint8(wire.CIEAlreadyRegistered) {
			t.Fatalf("refusals %+v, want code 14", refused)
		}
		hub.eng.PeerLost(context.Background(), spokeNBMA(1), "SA down")
		settle(10 * time.Second) // the spoke's next attempt, after its backoff
		if e, _ := hub.entry(t, hostPrefix(spokeAddr(1))); e.NBMA != moved {
			t.Fatalf("binding after its SA went away: %+v", e)
		}
	})
}
