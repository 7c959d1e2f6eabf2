package nhrp

import (
	"context"
	"net/netip"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/opendmvpn/dmvpn/gre/gretest"
	"github.com/opendmvpn/dmvpn/nhrp/wire"
)

// TestUniqueConflict: another NBMA address claiming a unique binding is
// refused with code 14 and the binding stays; a re-registration from the
// same address refreshes it.
func TestUniqueConflict(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t)
		hub, spokes := l.standard(1)
		settle(time.Second)

		rogueNBMA := netip.MustParseAddr("203.0.113.66")
		rogue := l.add("rogue", spokeAddr(1), rogueNBMA, spokeConfig(1), &labRouter{})
		l.start(rogue)
		settle(5 * time.Second)

		e, ok := hub.entry(t, hostPrefix(spokeAddr(1)))
		if !ok || e.NBMA != spokeNBMA(1) {
			t.Fatalf("binding after the conflict: %+v", e)
		}
		refused := hub.eventsOf(EventRegistrationRefused)
		if len(refused) == 0 || refused[0].Code != uint8(wire.CIEAlreadyRegistered) || refused[0].NBMA != rogueNBMA {
			t.Fatalf("refusals %+v", refused)
		}
		st := rogue.nhsState(t, hubNBMA(1))
		if st.State == NHSUp || st.LastError == "" {
			t.Errorf("rogue server state %+v", st)
		}
		// The owner's refreshes keep working.
		before := spokes[0].nhsState(t, hubNBMA(1)).Replies
		settle(250 * time.Second)
		if st := spokes[0].nhsState(t, hubNBMA(1)); st.State != NHSUp || st.Replies <= before {
			t.Errorf("owner after the conflict: %+v", st)
		}
	})
}

// TestNoUnique: without the unique flag a new NBMA address takes over
// the binding (a spoke whose address changed).
func TestNoUnique(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t)
		hub := l.addHub(1, hubConfig(), 1)
		l.start(hub)
		cfg := spokeConfig(1)
		cfg.NoUnique = true
		s := l.addSpoke(1, 1, cfg)
		l.start(s)
		settle(time.Second)
		if e, _ := hub.entry(t, hostPrefix(spokeAddr(1))); e.NBMA != spokeNBMA(1) || len(e.Flags) != 1 {
			t.Fatalf("first binding %+v", e)
		}
		moved := l.add("moved", spokeAddr(1), netip.MustParseAddr("203.0.113.77"), cfg, &labRouter{})
		l.start(moved)
		settle(time.Second)
		if e, _ := hub.entry(t, hostPrefix(spokeAddr(1))); e.NBMA != netip.MustParseAddr("203.0.113.77") {
			t.Fatalf("binding after the move %+v", e)
		}
	})
}

// TestNAT: a spoke behind NAT registers; the hub keeps both addresses,
// uses the outer one and tells the spoke its public address, which the
// spoke then advertises; another spoke builds a shortcut to it.
func TestNAT(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t)
		hub := l.addHub(1, hubConfig(), 1, 2)
		l.start(hub)
		s1 := l.addSpoke(1, 1, spokeConfig(1))
		l.start(s1)
		public := netip.MustParseAddr("203.0.113.20") // the NAT router's address
		private := netip.MustParseAddr("192.168.1.2")
		s2 := l.addSpoke(2, 1, spokeConfig(1))
		s2.dev.Close()
		dev, err := l.inet.NewDevice(gretest.Config{Name: "gre-spoke2", NBMA: public, Prefix: netip.PrefixFrom(spokeAddr(2), 24), Key: 42})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { dev.Close() })
		s2.dev, s2.tun = dev, natTunnel{Device: dev, private: private}
		l.start(s2)
		settle(time.Second)

		e, ok := hub.entry(t, hostPrefix(spokeAddr(2)))
		if !ok || e.NBMA != public || e.ClaimedNBMA != private || !contains(e.Flags, "nat") {
			t.Fatalf("hub binding of the NATed spoke: %+v", e)
		}
		if st := s2.nhsState(t, hubNBMA(1)); st.PublicNBMA != public {
			t.Fatalf("NATed spoke did not learn its public address: %+v", st)
		}
		// Shortcut from spoke1 to the NATed spoke's LAN.
		l.send(s1, lanHost(1), lanHost(2))
		settle(time.Second)
		if nbma, err := s1.dev.Forward(lanHost(2)); err != nil || nbma != public {
			t.Fatalf("shortcut to the NATed spoke goes to %v (%v), want %v", nbma, err, public)
		}
	})
}

// TestAuthentication: a spoke with the wrong password gets an Error
// Indication (authentication failure) and no binding.
func TestAuthentication(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t)
		hc := hubConfig()
		hc.AuthPassword = []byte("secret")
		hub := l.addHub(1, hc, 1, 2)
		l.start(hub)
		good := spokeConfig(1)
		good.AuthPassword = []byte("secret")
		s1 := l.addSpoke(1, 1, good)
		l.start(s1)
		bad := spokeConfig(1)
		bad.AuthPassword = []byte("wrong")
		s2 := l.addSpoke(2, 1, bad)
		l.start(s2)
		settle(2 * time.Second)

		if _, ok := hub.entry(t, hostPrefix(spokeAddr(1))); !ok {
			t.Error("spoke with the right password not registered")
		}
		if _, ok := hub.entry(t, hostPrefix(spokeAddr(2))); ok {
			t.Error("spoke with the wrong password registered")
		}
		ht, _ := hub.eng.Traffic(context.Background())
		if ht.ErrorsSent[wire.ErrorAuthenticationFailure.String()] == 0 || ht.Dropped["auth"] == 0 {
			t.Errorf("hub traffic %+v", ht)
		}
		st, _ := s2.eng.Traffic(context.Background())
		if st.ErrorsReceived[wire.ErrorAuthenticationFailure.String()] == 0 {
			t.Errorf("spoke did not receive the error indication: %+v", st.ErrorsReceived)
		}
		if ns := s2.nhsState(t, hubNBMA(1)); ns.State == NHSUp {
			t.Error("spoke with the wrong password thinks it is registered")
		}
	})
}

// TestMalformed: garbage, truncated and corrupted packets are counted and
// dropped; the hub keeps serving.
func TestMalformed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t)
		hub, spokes := l.standard(1)
		settle(time.Second)
		attacker, err := l.inet.NewDevice(gretest.Config{Name: "x", NBMA: netip.MustParseAddr("203.0.113.9"), Key: 42})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { attacker.Close() })
		good, _ := (&wire.Packet{Type: wire.TypeRegistrationRequest, HopCount: 1, SrcNBMA: netip.MustParseAddr("203.0.113.9"),
			SrcProto: netip.MustParseAddr("10.0.0.99"), DstProto: hubAddr(1), CIEs: []wire.CIE{{PrefixLen: 255, HoldingTime: 60}}}).MarshalBinary()
		bad := [][]byte{nil, {1}, make([]byte, 40), good[:len(good)-1]}
		flip := append([]byte(nil), good...)
		flip[30] ^= 1
		bad = append(bad, flip)
		for i := 0; i < 50; i++ {
			for _, b := range bad {
				attacker.WriteNHRP(b, hubNBMA(1))
			}
		}
		settle(time.Second)
		tr, _ := hub.eng.Traffic(context.Background())
		// 250 at once from one source: the first 200 (its burst) are
		// decoded and dropped as malformed, the rest by its rate limit.
		if tr.Dropped["malformed"] != DefaultSourceBurst || tr.Dropped["rate-limited"] != 250-DefaultSourceBurst {
			t.Errorf("drops: malformed %d, rate-limited %d; want %d and %d", tr.Dropped["malformed"], tr.Dropped["rate-limited"],
				DefaultSourceBurst, 250-DefaultSourceBurst)
		}
		if tr.Limited["rate-limited"] != 250-DefaultSourceBurst {
			t.Errorf("limited rate-limited %d, want %d", tr.Limited["rate-limited"], 250-DefaultSourceBurst)
		}
		if _, ok := hub.entry(t, hostPrefix(netip.MustParseAddr("10.0.0.99"))); ok {
			t.Error("a corrupted packet created a binding")
		}
		// Still serving.
		before := spokes[0].nhsState(t, hubNBMA(1)).Replies
		settle(201 * time.Second)
		if st := spokes[0].nhsState(t, hubNBMA(1)); st.Replies <= before {
			t.Error("hub stopped answering after malformed input")
		}
	})
}

// TestUnknownCompulsoryExtension: a request with a compulsory extension
// the hub does not know is refused with an Error Indication; an optional
// unknown one is ignored.
func TestUnknownCompulsoryExtension(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t)
		hub, _ := l.standard(0)
		peer, _ := l.inet.NewDevice(gretest.Config{Name: "p", NBMA: spokeNBMA(5), Key: 42})
		t.Cleanup(func() { peer.Close() })
		mk := func(ext wire.Extension, addr netip.Addr) []byte {
			b, err := (&wire.Packet{Type: wire.TypeRegistrationRequest, HopCount: 1, RequestID: 7, SrcNBMA: spokeNBMA(5),
				SrcProto: addr, DstProto: hubAddr(1), CIEs: []wire.CIE{{PrefixLen: 255, HoldingTime: 60}},
				Extensions: []wire.Extension{ext}}).MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			return b
		}
		peer.WriteNHRP(mk(wire.Extension{Type: 0x1234, Compulsory: true, Data: []byte{1}}, spokeAddr(5)), hubNBMA(1))
		settle(time.Second)
		buf := make([]byte, 2000)
		n, _, err := peer.ReadNHRP(buf)
		if err != nil {
			t.Fatal(err)
		}
		ei, err := wire.Decode(buf[:n])
		if err != nil || ei.Type != wire.TypeErrorIndication || ei.ErrorCode != wire.ErrorUnrecognizedExtension {
			t.Fatalf("answer %+v %v", ei, err)
		}
		if _, ok := hub.entry(t, hostPrefix(spokeAddr(5))); ok {
			t.Error("registered despite the unknown compulsory extension")
		}
		peer.WriteNHRP(mk(wire.Extension{Type: 0x1234, Data: []byte{1}}, spokeAddr(6)), hubNBMA(1))
		settle(time.Second)
		n, _, _ = peer.ReadNHRP(buf)
		rep, err := wire.Decode(buf[:n])
		if err != nil || rep.Type != wire.TypeRegistrationReply || rep.CIEs[0].Code != wire.CIESuccess {
			t.Fatalf("answer to an optional unknown extension %+v %v", rep, err)
		}
		if x := rep.Extension(0x1234); x == nil {
			t.Error("the optional unknown extension was not echoed in the reply")
		}
	})
}

// TestSlowAuthorization: a registration whose authorization takes long
// does not delay the others.
func TestSlowAuthorization(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t)
		hub := l.addHub(1, hubConfig(), 1, 2, 3)
		var calls atomic.Int32
		hub.deps.Authorizer = AuthorizerFunc(func(ctx context.Context, r Registration) Verdict {
			calls.Add(1)
			if r.Proto.Addr() == spokeAddr(1) {
				select {
				case <-time.After(5 * time.Second):
				case <-ctx.Done():
				}
			}
			return Verdict{Identity: "CN=" + r.Proto.Addr().String()}
		})
		l.start(hub)
		for i := 1; i <= 3; i++ {
			l.start(l.addSpoke(i, 1, spokeConfig(1)))
		}
		settle(100 * time.Millisecond)
		for i := 2; i <= 3; i++ {
			if e, ok := hub.entry(t, hostPrefix(spokeAddr(i))); !ok || e.Identity == "" {
				t.Errorf("spoke%d not registered while spoke1's authorization runs: %+v", i, e)
			}
		}
		if _, ok := hub.entry(t, hostPrefix(spokeAddr(1))); ok {
			t.Error("spoke1 registered before its authorization finished")
		}
		settle(6 * time.Second)
		if _, ok := hub.entry(t, hostPrefix(spokeAddr(1))); !ok {
			t.Error("spoke1 not registered after its authorization finished")
		}
	})
}

// TestAuthorizationRefused: the Authorizer's code and reason come back.
func TestAuthorizationRefused(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t)
		hub := l.addHub(1, hubConfig(), 1)
		hub.deps.Authorizer = AuthorizerFunc(func(ctx context.Context, r Registration) Verdict {
			return Verdict{Code: uint8(wire.CIEAdminProhibited), Reason: "not in the allow list"}
		})
		l.start(hub)
		s := l.addSpoke(1, 1, spokeConfig(1))
		l.start(s)
		settle(time.Second)
		if _, ok := hub.entry(t, hostPrefix(spokeAddr(1))); ok {
			t.Fatal("refused spoke registered")
		}
		ev := hub.eventsOf(EventRegistrationRefused)
		if len(ev) == 0 || ev[0].Reason != "not in the allow list" || ev[0].Code != 4 {
			t.Fatalf("refusal events %+v", ev)
		}
		if st := s.nhsState(t, hubNBMA(1)); st.LastError != "refused: "+wire.CIEAdminProhibited.String() {
			t.Errorf("spoke saw %q", st.LastError)
		}
	})
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// TestPeerLostAfterRefusal: a server that refuses a spoke ends its IPsec
// SA; losing that SA must not bring the spoke's next attempt forward (it
// would come straight back and be refused again, in a loop), while losing
// the SA of a server that accepted it re-registers at once.
func TestPeerLostAfterRefusal(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t)
		hub := l.addHub(1, hubConfig(), 1)
		var refuse atomic.Bool
		refuse.Store(true)
		hub.deps.Authorizer = AuthorizerFunc(func(ctx context.Context, r Registration) Verdict {
			if refuse.Load() {
				return Verdict{Code: uint8(wire.CIEAdminProhibited), Reason: "wrong certificate"}
			}
			return Verdict{}
		})
		l.start(hub)
		cfg := spokeConfig(1)
		cfg.RetryMax = 8 * time.Second
		s := l.addSpoke(1, 1, cfg)
		l.start(s)
		settle(100 * time.Millisecond)
		refusals := func() int { return len(hub.eventsOf(EventRegistrationRefused)) }
		if refusals() != 1 {
			t.Fatalf("%d refusals, want 1", refusals())
		}
		// The SA goes away (the hub terminated it) at once, twice.
		for range 2 {
			s.eng.PeerLost(t.Context(), hubNBMA(1), "SA down")
			settle(10 * time.Millisecond)
		}
		if n := refusals(); n != 1 {
			t.Fatalf("%d refusals right after the SA went away, want still 1", n)
		}
		// The backoff still runs: another attempt, refused again.
		settle(3 * time.Second)
		if n := refusals(); n < 2 {
			t.Fatalf("%d refusals after the backoff, want ≥ 2", n)
		}
		// Accepted: losing the SA now re-registers at once.
		refuse.Store(false)
		settle(20 * time.Second)
		if st := s.nhsState(t, hubNBMA(1)); st.State != NHSUp {
			t.Fatalf("server %s after the refusals stopped", st.State)
		}
		sent := s.nhsState(t, hubNBMA(1)).Sent
		s.eng.PeerLost(t.Context(), hubNBMA(1), "SA down")
		settle(10 * time.Millisecond)
		if got := s.nhsState(t, hubNBMA(1)).Sent; got != sent+1 {
			t.Errorf("requests sent %d → %d after losing an accepting server's SA, want one more at once", sent, got)
		}
	})
}

// TestPeerLostFlapping: a server's SA that keeps going away while a
// registration waits for its reply does not turn into a registration per
// loss; the retry timer paces them.
func TestPeerLostFlapping(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t)
		hub := l.addHub(1, hubConfig(), 1)
		l.start(hub)
		s := l.addSpoke(1, 1, spokeConfig(1))
		l.start(s)
		settle(100 * time.Millisecond)
		hub.stop() // no more replies
		before := s.nhsState(t, hubNBMA(1)).Sent
		for range 50 {
			s.eng.PeerLost(t.Context(), hubNBMA(1), "SA down")
			settle(5 * time.Millisecond)
		}
		// The first loss re-registers at once; the others find that
		// request waiting for its reply.
		if got := s.nhsState(t, hubNBMA(1)).Sent - before; got != 1 {
			t.Errorf("%d registrations for 50 SA losses in 250 ms, want 1", got)
		}
	})
}
