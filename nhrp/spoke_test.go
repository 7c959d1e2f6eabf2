package nhrp

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/opendmvpn/dmvpn/nhrp/wire"
)

// TestHubRestart: a hub that stops cleanly purges its clients'
// registrations, so they register with the restarted hub at once; after a
// crash (no purge) they come back at their next refresh.
func TestHubRestart(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t)
		hcfg := hubConfig()
		hcfg.PurgeOnShutdown = true
		hub := l.addHub(1, hcfg, 1, 2, 3)
		l.start(hub)
		var spokes []*node
		for i := 1; i <= 3; i++ {
			s := l.addSpoke(i, 1, spokeConfig(1))
			l.start(s)
			spokes = append(spokes, s)
		}
		settle(time.Second)
		stopped := time.Now()
		l.restart(hub) // a new engine: an empty cache
		settle(3 * time.Second)
		for i := 1; i <= 3; i++ {
			e, ok := hub.entry(t, hostPrefix(spokeAddr(i)))
			if !ok {
				t.Fatalf("spoke%d not registered again after the hub restart", i)
			}
			if d := e.Created.Sub(stopped); d > 3*time.Second {
				t.Errorf("spoke%d registered again after %v", i, d)
			}
		}

		// A crash: no purge. The spokes come back at their refresh (a
		// third of the holding time: 200 s here).
		noPurge := hcfg
		noPurge.PurgeOnShutdown = false
		if err := hub.eng.Reconfigure(context.Background(), noPurge); err != nil {
			t.Fatal(err)
		}
		hub.cfg = noPurge
		l.restart(hub)
		settle(time.Second)
		if _, ok := hub.entry(t, hostPrefix(spokeAddr(1))); ok {
			t.Fatal("registration survived a crash without a refresh")
		}
		settle(201 * time.Second)
		for i := 1; i <= 3; i++ {
			if _, ok := hub.entry(t, hostPrefix(spokeAddr(i))); !ok {
				t.Errorf("spoke%d not registered after its refresh", i)
			}
		}
	})
}

// TestRegistrationExpiry: a spoke that goes away expires on the hub with
// its holding time; when it comes back it registers within seconds.
func TestRegistrationExpiry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t)
		hub, spokes := l.standard(1)
		settle(time.Second)
		l.inet.SetDown(spokeNBMA(1), true)
		settle(597 * time.Second) // registered at 0 s for 600 s
		if _, ok := hub.entry(t, hostPrefix(spokeAddr(1))); !ok {
			t.Fatal("binding expired before its holding time")
		}
		settle(3 * time.Second)
		if _, ok := hub.entry(t, hostPrefix(spokeAddr(1))); ok {
			t.Fatal("binding outlived its holding time")
		}
		ex := hub.eventsOf(EventExpired)
		if len(ex) != 1 || ex[0].Reason != "expired" {
			t.Fatalf("expired events %+v", ex)
		}
		if st := spokes[0].nhsState(t, hubNBMA(1)); st.State == NHSUp {
			t.Error("spoke still thinks it is registered")
		}
		l.inet.SetDown(spokeNBMA(1), false)
		back := time.Now()
		settle(10 * time.Second)
		e, ok := hub.entry(t, hostPrefix(spokeAddr(1)))
		if !ok {
			t.Fatal("spoke did not register again")
		}
		if d := e.Created.Sub(back); d > RetryMaxForTest {
			t.Errorf("registered again after %v, want within the retry cap", d)
		}
	})
}

// RetryMaxForTest is the registration retry cap the lab runs with.
const RetryMaxForTest = DefaultRetryMax

// TestNHSFallback: with MaxNHS 1 the spoke registers with the preferred
// server, falls back to the other when it is lost, and returns to the
// preferred one (purging the backup) when it answers again.
func TestNHSFallback(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t)
		h1 := l.addHub(1, hubConfig(), 1)
		h2 := l.addHub(2, hubConfig(), 1)
		l.start(h1)
		l.start(h2)
		cfg := spokeConfig(1, 2)
		cfg.MaxNHS = 1
		cfg.NHS[0].Priority, cfg.NHS[1].Priority = 1, 2
		s := l.addSpoke(1, 1, cfg)
		l.start(s)
		settle(time.Second)
		if st := s.nhsState(t, hubNBMA(1)); st.State != NHSUp {
			t.Fatalf("preferred server %v", st.State)
		}
		if st := s.nhsState(t, hubNBMA(2)); st.State != NHSStandby {
			t.Fatalf("backup server %v", st.State)
		}
		if _, ok := h2.entry(t, hostPrefix(spokeAddr(1))); ok {
			t.Fatal("registered with the backup while the preferred server is up")
		}

		// Lose hub1: its refresh fails 3 times, then hub2 takes over.
		l.inet.Partition(spokeNBMA(1), hubNBMA(1))
		settle(201 * time.Second) // the refresh is due at 200 s
		lost := time.Now()
		settle(20 * time.Second)
		if st := s.nhsState(t, hubNBMA(2)); st.State != NHSUp {
			t.Fatalf("backup not taken over: %+v", st)
		}
		e2, ok := h2.entry(t, hostPrefix(spokeAddr(1)))
		if !ok {
			t.Fatal("not registered with the backup")
		}
		if d := e2.Created.Sub(lost); d > 15*time.Second {
			t.Errorf("fell back after %v", d)
		}

		// hub1 returns: the spoke goes back within seconds and tells hub2.
		l.inet.Heal(spokeNBMA(1), hubNBMA(1))
		healed := time.Now()
		settle(15 * time.Second)
		st1 := s.nhsState(t, hubNBMA(1))
		if st1.State != NHSUp || st1.LastReply.Sub(healed) > RetryMaxForTest+time.Second {
			t.Fatalf("preferred server after it returned: %+v", st1)
		}
		if st := s.nhsState(t, hubNBMA(2)); st.State != NHSStandby {
			t.Errorf("backup after the preferred server returned: %v", st.State)
		}
		if _, ok := h2.entry(t, hostPrefix(spokeAddr(1))); ok {
			t.Error("backup still holds the registration (no purge)")
		}
	})
}

// fakeResolver answers NHS names from a map that tests change.
type fakeResolver struct {
	mu sync.Mutex
	m  map[string][]netip.Addr
}

func (r *fakeResolver) LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	a, ok := r.m[host]
	if !ok {
		return nil, fmt.Errorf("no such host %s", host)
	}
	return a, nil
}

func (r *fakeResolver) set(host string, a ...netip.Addr) {
	r.mu.Lock()
	r.m[host] = a
	r.mu.Unlock()
}

// TestNHSFromDNS: each A record of the name is a server; records that
// appear or vanish add or drop one; the servers' tunnel addresses are
// learned from their replies.
func TestNHSFromDNS(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t)
		h1 := l.addHub(1, hubConfig(), 1)
		h2 := l.addHub(2, hubConfig(), 1)
		l.start(h1)
		l.start(h2)
		res := &fakeResolver{m: map[string][]netip.Addr{}}
		res.set("hubs.example.net", hubNBMA(1))
		cfg := spokeConfig()
		cfg.NHS = []NHSConfig{{Hostname: "hubs.example.net"}}
		cfg.DNSRefresh = time.Minute
		s := l.addSpoke(1, 1, cfg)
		s.deps.Resolver = res
		l.start(s)
		settle(time.Second)
		st := s.nhsState(t, hubNBMA(1))
		if st.State != NHSUp || st.Proto != hubAddr(1) || st.Hostname != "hubs.example.net" {
			t.Fatalf("server from DNS %+v", st)
		}
		if e, ok := s.entry(t, hostPrefix(hubAddr(1))); !ok || e.Type != TypeNHS {
			t.Fatalf("learned server binding %+v", e)
		}
		res.set("hubs.example.net", hubNBMA(1), hubNBMA(2))
		settle(61 * time.Second)
		if st := s.nhsState(t, hubNBMA(2)); st.State != NHSUp {
			t.Fatalf("second server %+v", st)
		}
		res.set("hubs.example.net", hubNBMA(2))
		settle(61 * time.Second)
		all, _ := s.eng.NHS(context.Background())
		if len(all) != 1 || all[0].NBMA != hubNBMA(2) {
			t.Fatalf("servers after a record vanished: %+v", all)
		}
		if _, ok := s.entry(t, hostPrefix(hubAddr(1))); ok {
			t.Error("binding of the vanished server kept")
		}
	})
}

// TestPurgeOnWithdrawal: when the network behind a spoke goes away, the
// spoke purges it from the spokes it answered, and their shortcut goes.
func TestPurgeOnWithdrawal(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t)
		_, spokes := l.standard(2)
		settle(time.Second)
		s1, s2 := spokes[0], spokes[1]
		l.send(s1, lanHost(1), lanHost(2))
		settle(time.Second)
		if len(s1.eventsOf(EventShortcutUp)) != 1 {
			t.Fatal("no shortcut")
		}
		s2.router.setLocal() // spoke2's LAN is gone
		settle(11 * time.Second)
		downs := s1.eventsOf(EventShortcutDown)
		if len(downs) != 1 || downs[0].Reason != "purged" {
			t.Fatalf("shortcut down events %+v", downs)
		}
		t1, _ := s1.eng.Traffic(context.Background())
		t2, _ := s2.eng.Traffic(context.Background())
		if t2.Sent[wire.TypePurgeRequest.String()] != 1 || t1.Sent[wire.TypePurgeReply.String()] != 1 || t2.Received[wire.TypePurgeReply.String()] != 1 {
			t.Errorf("purge exchange: spoke2 sent %v, spoke1 sent %v", t2.Sent, t1.Sent)
		}
	})
}

// TestNegativeCache: a failed resolution is remembered for seconds, not
// hours, then retried.
func TestNegativeCache(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t)
		_, spokes := l.standard(1)
		settle(time.Second)
		s := spokes[0]
		unknown := netip.MustParseAddr("10.99.0.5")
		l.send(s, lanHost(1), unknown)
		settle(time.Second)
		e, ok := s.entry(t, hostPrefix(unknown))
		if !ok || e.Type != TypeNegative {
			t.Fatalf("entry %+v", e)
		}
		if d := e.Expires.Sub(e.Created); d != DefaultNegativeTTL {
			t.Errorf("negative entry lives %v", d)
		}
		if ev := s.eventsOf(EventResolutionFailed); len(ev) != 1 {
			t.Errorf("resolution-failed events %+v", ev)
		}
		// While negative, redirects do not cause new requests.
		tr0, _ := s.eng.Traffic(context.Background())
		l.send(s, lanHost(1), unknown)
		settle(time.Second)
		tr1, _ := s.eng.Traffic(context.Background())
		if tr1.Sent["Resolution Request"] != tr0.Sent["Resolution Request"] {
			t.Error("resolution retried while negative")
		}
		settle(DefaultNegativeTTL)
		if _, ok := s.entry(t, hostPrefix(unknown)); ok {
			t.Error("negative entry outlived its TTL")
		}
	})
}

// TestClear: clearing removes dynamic and shortcut entries, never static
// or local ones, and a cleared client is told to register again.
func TestClear(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t)
		hc := hubConfig()
		hc.StaticMaps = []StaticMap{{Proto: netip.MustParsePrefix("10.0.0.200/32"), NBMA: netip.MustParseAddr("203.0.113.200")}}
		hub := l.addHub(1, hc, 1, 2)
		l.start(hub)
		s1 := l.addSpoke(1, 1, spokeConfig(1))
		s2 := l.addSpoke(2, 1, spokeConfig(1))
		l.start(s1)
		l.start(s2)
		settle(time.Second)
		l.send(s1, lanHost(1), lanHost(2))
		settle(time.Second)
		n, err := s1.eng.Clear(context.Background(), ClearRequest{Shortcut: true})
		if err != nil || n != 1 {
			t.Fatalf("clear shortcut: %d %v", n, err)
		}
		n, err = hub.eng.Clear(context.Background(), ClearRequest{Dynamic: true})
		if err != nil || n < 2 {
			t.Fatalf("clear dynamic: %d %v", n, err)
		}
		if e, ok := hub.entry(t, netip.MustParsePrefix("10.0.0.200/32")); !ok || e.Type != TypeStatic {
			t.Error("static entry cleared")
		}
		if _, ok := hub.entry(t, hostPrefix(hubAddr(1))); !ok {
			t.Error("local entry cleared")
		}
		settle(3 * time.Second)
		for i := 1; i <= 2; i++ {
			if _, ok := hub.entry(t, hostPrefix(spokeAddr(i))); !ok {
				t.Errorf("spoke%d did not register again after the clear", i)
			}
		}
	})
}

// TestSubscribe: the live event stream sees registrations and packets.
func TestSubscribe(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t)
		hub := l.addHub(1, hubConfig(), 1)
		l.start(hub)
		ch, cancel := hub.eng.Subscribe(64, true)
		l.start(l.addSpoke(1, 1, spokeConfig(1)))
		settle(time.Second)
		cancel()
		var kinds []string
		for ev := range ch {
			kinds = append(kinds, ev.Kind.String())
			if ev.Kind == EventPacket && ev.Packet.Summary == "" {
				t.Errorf("packet event without a summary: %+v", ev.Packet)
			}
		}
		want := []string{"packet", "registered", "packet"}
		if fmt.Sprint(kinds) != fmt.Sprint(want) {
			t.Errorf("events %v, want %v", kinds, want)
		}
	})
}
