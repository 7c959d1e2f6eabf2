package nhrp

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/opendmvpn/dmvpn/nhrp/wire"
)

func TestRegistration(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t)
		hub, spokes := l.standard(3)
		settle(time.Second)

		for i, s := range spokes {
			st := s.nhsState(t, hubNBMA(1))
			if st.State != NHSUp || st.Replies != 1 {
				t.Errorf("spoke%d: server state %v, %d replies", i+1, st.State, st.Replies)
			}
			e, ok := hub.entry(t, hostPrefix(spokeAddr(i+1)))
			if !ok || e.Type != TypeDynamic || e.NBMA != spokeNBMA(i+1) {
				t.Errorf("hub entry for spoke%d: %+v %v", i+1, e, ok)
			}
			if !cmp.Equal(e.Flags, []string{"unique", "registered"}) {
				t.Errorf("hub entry flags %v", e.Flags)
			}
			if got := len(s.eventsOf(EventNHSUp)); got != 1 {
				t.Errorf("spoke%d: %d nhs-up events", i+1, got)
			}
		}
		want := []string{"10.0.0.11→198.51.100.11", "10.0.0.12→198.51.100.12", "10.0.0.13→198.51.100.13"}
		if diff := cmp.Diff(want, hub.neighbors(t)); diff != "" {
			t.Errorf("hub neighbours (-want +got):\n%s", diff)
		}
		if got := len(hub.eventsOf(EventRegistered)); got != 3 {
			t.Errorf("hub: %d registered events, want 3", got)
		}
		if diff := cmp.Diff([]string{"10.0.0.1→192.0.2.1"}, spokes[0].neighbors(t)); diff != "" {
			t.Errorf("spoke neighbours (-want +got):\n%s", diff)
		}

		// Refreshes at a third of the holding time keep the binding; the
		// hub sees no new registration event.
		settle(700 * time.Second)
		if st := spokes[0].nhsState(t, hubNBMA(1)); st.State != NHSUp || st.Replies < 3 {
			t.Errorf("after refreshes: %+v", st)
		}
		if got := len(hub.eventsOf(EventRegistered)); got != 3 {
			t.Errorf("hub: %d registered events after refreshes, want 3", got)
		}
		if _, ok := hub.entry(t, hostPrefix(spokeAddr(1))); !ok {
			t.Error("binding lost across refreshes")
		}
	})
}

func TestPhase2Resolution(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t)
		_, spokes := l.standard(3)
		settle(time.Second)
		s1, s2 := spokes[0], spokes[1]

		// A packet to spoke2's tunnel address has no neighbour entry: a
		// miss, a resolution through the hub, an answer from spoke2.
		if _, err := l.send(s1, spokeAddr(1), spokeAddr(2)); err == nil {
			t.Fatal("first packet found a neighbour entry")
		}
		settle(time.Second)
		nbma, err := l.send(s1, spokeAddr(1), spokeAddr(2))
		if err != nil || nbma != spokeNBMA(2) {
			t.Fatalf("after resolution: %v, %v", nbma, err)
		}
		e, ok := s1.entry(t, hostPrefix(spokeAddr(2)))
		if !ok || e.Type != TypeCached || e.NBMA != spokeNBMA(2) {
			t.Fatalf("spoke1 entry %+v %v", e, ok)
		}
		// spoke2 learned spoke1 from the request.
		if e, ok := s2.entry(t, hostPrefix(spokeAddr(1))); !ok || e.NBMA != spokeNBMA(1) {
			t.Errorf("spoke2 did not learn spoke1: %+v", e)
		}
	})
}

func TestRedirectShortcut(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t)
		hub, spokes := l.standard(3)
		settle(time.Second)
		s1, s2 := spokes[0], spokes[1]

		start := time.Now()
		nbma, err := l.send(s1, lanHost(1), lanHost(2))
		if err != nil || nbma != hubNBMA(1) {
			t.Fatalf("first packet: %v %v, want via the hub", nbma, err)
		}
		settle(100 * time.Millisecond)
		ups := s1.eventsOf(EventShortcutUp)
		if len(ups) != 1 || ups[0].Proto != spokeLAN(2) || ups[0].NextHop != spokeAddr(2) || ups[0].NBMA != spokeNBMA(2) {
			t.Fatalf("shortcut events %+v", ups)
		}
		if d := ups[0].Time.Sub(start); d > time.Second {
			t.Errorf("shortcut after %v", d)
		}
		nbma, err = l.send(s1, lanHost(1), lanHost(2))
		if err != nil || nbma != spokeNBMA(2) {
			t.Fatalf("after the shortcut: %v %v, want direct", nbma, err)
		}
		routes, _ := s1.dev.Routes(context.Background(), DefaultShortcutTable)
		if len(routes) != 1 || routes[0].Dst != spokeLAN(2) || routes[0].Via != spokeAddr(2) || routes[0].Protocol != DefaultShortcutProto {
			t.Errorf("shortcut routes %+v", routes)
		}
		tr, _ := hub.eng.Traffic(context.Background())
		if tr.Sent[wire.TypeTrafficIndication.String()] != 1 {
			t.Errorf("hub traffic indications sent: %d", tr.Sent[wire.TypeTrafficIndication.String()])
		}
		if e, ok := s2.entry(t, spokeLAN(2)); !ok || e.Type != TypeLocal {
			t.Errorf("spoke2 local entry %+v %v", e, ok)
		}

		// Idle: the shortcut goes away, traffic goes through the hub again.
		settle(2 * time.Minute)
		downs := s1.eventsOf(EventShortcutDown)
		if len(downs) != 1 || downs[0].Reason != "idle" {
			t.Fatalf("shortcut down events %+v", downs)
		}
		if nbma, _ := s1.dev.Forward(lanHost(2)); nbma != hubNBMA(1) {
			t.Errorf("after expiry traffic goes to %v", nbma)
		}
	})
}

func TestShortcutRenewedWhileUsed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t)
		_, spokes := l.standard(2)
		settle(time.Second)
		s1 := spokes[0]
		l.send(s1, lanHost(1), lanHost(2))
		settle(time.Second)
		// Keep sending for longer than the holding time.
		for i := 0; i < 150; i++ {
			if nbma, err := l.send(s1, lanHost(1), lanHost(2)); err != nil || nbma != spokeNBMA(2) {
				t.Fatalf("t=%v: %v %v", i*5, nbma, err)
			}
			settle(5 * time.Second)
		}
		if downs := s1.eventsOf(EventShortcutDown); len(downs) != 0 {
			t.Fatalf("shortcut went down while used: %+v", downs)
		}
	})
}
