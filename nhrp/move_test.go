package nhrp

import (
	"context"
	"net/netip"
	"slices"
	"testing"
	"testing/synctest"
	"time"

	"github.com/opendmvpn/dmvpn/gre/gretest"
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
		moved := netip.MustParseAddr("203.0.113.65")
		// spoke1's certificate allows its LAN; the one its SA from the
		// new address proves allows another network too (renewed with
		// the move): the moved binding must carry the new networks.
		movedNets := []netip.Prefix{spokeLAN(1), netip.MustParsePrefix("10.99.0.0/24")}
		hub.deps.Authorizer = AuthorizerFunc(func(ctx context.Context, r Registration) Verdict {
			v := certAuthorizer(ctx, r)
			v.Networks = []netip.Prefix{spokeLAN(1)}
			if r.NBMA == moved {
				v.Networks = movedNets
			}
			return v
		})
		l.start(hub)
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
		var nets []netip.Prefix
		if err := hub.eng.do(t.Context(), func() {
			if en := hub.eng.cache.get(hostPrefix(spokeAddr(1))); en != nil {
				nets = slices.Clone(en.nets)
			}
		}); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(nets, movedNets) {
			t.Errorf("moved binding's networks %v, want %v (the new certificate's)", nets, movedNets)
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

// natFilter models a NAT router in front of public: what leaves through
// it opens a mapping to its destination, and only a destination with a
// mapping gets in (nobody reaches the node behind it first).
type natFilter struct {
	public netip.Addr
	open   map[netip.Addr]bool
}

// pass is a gretest filter (called under the internet's lock).
func (n *natFilter) pass(from, to netip.Addr, _ []byte) bool {
	switch {
	case from == n.public:
		n.open[to] = true
		return true
	case to == n.public:
		return n.open[from]
	}
	return true
}

// natMoveLab is a hub, spoke1 (which moves to another ISP) and spoke3
// behind NAT, every binding proven by a certificate.
func natMoveLab(t *testing.T) (l *lab, hub, s1, s3 *node, public, moved netip.Addr) {
	l = newLab(t)
	hub = l.addHub(1, hubConfig(), 1, 3)
	hub.deps.Authorizer = certAuthorizer
	l.start(hub)
	moved, public = netip.MustParseAddr("203.0.113.65"), netip.MustParseAddr("203.0.113.20")
	certs := labCerts()
	certs.m[moved], certs.m[public] = certs.m[spokeNBMA(1)], certs.m[spokeNBMA(3)]
	l.inet.SetFilter((&natFilter{public: public, open: map[netip.Addr]bool{}}).pass)
	s1 = l.addSpoke(1, 1, spokeConfig(1))
	s1.deps.Verifier = certs
	s1.router.setLocal(spokeLAN(1))
	l.start(s1)
	s3 = l.addSpoke(3, 1, spokeConfig(1))
	s3.dev.Close()
	dev, err := l.inet.NewDevice(gretest.Config{Name: "gre-spoke3", NBMA: public, Prefix: netip.PrefixFrom(spokeAddr(3), 24), Key: 42})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close() })
	if err := dev.ReplaceRoute(context.Background(), s3.routes[0]); err != nil {
		t.Fatal(err)
	}
	s3.dev, s3.tun = dev, natTunnel{Device: dev, private: netip.MustParseAddr("192.168.1.2")}
	s3.deps.Verifier = certs
	s3.router.setLocal(spokeLAN(3))
	l.start(s3)
	settle(time.Second)
	return l, hub, s1, s3, public, moved
}

// move moves spoke1 to the other ISP and tells its engine.
func moveSpoke1(t *testing.T, s1 *node, moved netip.Addr) {
	t.Helper()
	if err := s1.dev.Move(moved); err != nil {
		t.Fatal(err)
	}
	if err := s1.eng.NBMAChanged(context.Background(), spokeNBMA(1), moved, "test"); err != nil {
		t.Fatal(err)
	}
}

// TestNBMAMoveNATPeer: spoke1 and spoke3 (behind NAT) have shortcuts to
// each other's LAN when spoke1 moves. Its purge cannot reach spoke3 (the
// NAT has no mapping for the new address), but spoke1 resolves its own
// shortcut to spoke3 again from the new address: spoke3 answers it
// directly, which opens its NAT, and learns spoke1's new address from the
// request, so both directions go straight again. The lab's spoke3 lost
// spoke1's LAN this way (its shortcut stayed at the dead address for its
// holding time) before the moved node resolved again what it had resolved.
func TestNBMAMoveNATPeer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l, _, s1, s3, public, moved := natMoveLab(t)
		l.send(s3, lanHost(3), lanHost(1))
		l.send(s1, lanHost(1), lanHost(3))
		settle(time.Second)
		if nbma, err := s3.dev.Forward(lanHost(1)); err != nil || nbma != spokeNBMA(1) {
			t.Fatalf("spoke3's shortcut before the move goes to %v (%v)", nbma, err)
		}
		if nbma, err := s1.dev.Forward(lanHost(3)); err != nil || nbma != public {
			t.Fatalf("spoke1's shortcut before the move goes to %v (%v)", nbma, err)
		}
		moveSpoke1(t, s1, moved)
		settle(time.Second)
		if nbma, err := s1.dev.Forward(lanHost(3)); err != nil || nbma != public {
			t.Errorf("spoke1's shortcut after the move goes to %v (%v), want %v", nbma, err, public)
		}
		if nbma, err := s3.dev.Forward(lanHost(1)); err != nil || nbma != moved {
			t.Errorf("spoke3's traffic to spoke1's LAN after the move goes to %v (%v), want %v", nbma, err, moved)
		}
	})
}

// TestPeerLostResolvesAgain: spoke3 (behind NAT) sends to spoke1's LAN
// over a shortcut, spoke1 sends nothing back, when spoke1 moves: spoke1's
// purge cannot reach spoke3 and spoke1 has nothing in use to resolve
// again, so spoke3's shortcut stays at the dead address until its IPsec
// finds the SA with that address gone (PeerLost): the shortcut then goes,
// and, in use, is resolved again at spoke1's new address.
func TestPeerLostResolvesAgain(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l, _, s1, s3, _, moved := natMoveLab(t)
		l.send(s3, lanHost(3), lanHost(1))
		// spoke1's binding of spoke3 (it answered its request) idles out
		// of what spoke1 would resolve again; spoke3's shortcut is in use.
		for range 20 {
			settle(2 * time.Second)
			l.send(s3, lanHost(3), lanHost(1))
		}
		moveSpoke1(t, s1, moved)
		settle(time.Second)
		// The purge did not get through: nothing else told spoke3.
		if nbma, err := s3.dev.Forward(lanHost(1)); err != nil || nbma != spokeNBMA(1) {
			t.Fatalf("spoke3's shortcut after the move goes to %v (%v), want the old %v (no purge can reach it)", nbma, err, spokeNBMA(1))
		}
		if err := s3.eng.PeerLost(context.Background(), spokeNBMA(1), "SA down"); err != nil {
			t.Fatal(err)
		}
		settle(time.Second)
		if nbma, err := s3.dev.Forward(lanHost(1)); err != nil || nbma != moved {
			t.Errorf("spoke3's shortcut after its SA went goes to %v (%v), want %v", nbma, err, moved)
		}
		downs := s3.eventsOf(EventShortcutDown)
		if len(downs) == 0 || downs[len(downs)-1].Cause != CauseProtectionLost {
			t.Errorf("shortcut down events %+v, want the last for the lost protection", downs)
		}
	})
}
