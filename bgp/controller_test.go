package bgp

import (
	"context"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/opendmvpn/dmvpn/internal/leakcheck"
	"github.com/opendmvpn/dmvpn/nhrp"
)

var cmpNet = cmpopts.EquateComparable(netip.Prefix{}, netip.Addr{})

type harness struct {
	t     *testing.T
	c     *Controller
	sp    *fakeSpeaker
	nh    *fakeNHRP
	sink  *fakeSink
	logs  *observer.ObservedLogs
	stop  func()
	ctx   context.Context
	rereg chan string
}

func hubConfig() Config {
	return Config{Role: RoleHub, Tunnel: pfx("172.16.0.1/16"), UseCertificates: true, Summary: []netip.Prefix{pfx("10.0.0.0/8")},
		Hubs: []netip.Addr{addr("172.16.0.2")}, ProtectedNBMA: []netip.Addr{addr("192.0.2.1")}, RestartTime: time.Minute}
}

// start runs a controller over fakes; sp, nh and sink may carry state
// from a previous run.
func start(t *testing.T, cfg Config, sp *fakeSpeaker, nh *fakeNHRP, sink *fakeSink) *harness {
	t.Helper()
	core, logs := observer.New(zap.InfoLevel)
	h := &harness{t: t, sp: sp, nh: nh, sink: sink, logs: logs, rereg: make(chan string, 8)}
	c, err := NewController(cfg, Deps{Speaker: sp, Routes: sink, NHRP: nh, Audit: zap.New(core),
		Reregister: func(r string) { h.rereg <- r }})
	if err != nil {
		t.Fatal(err)
	}
	h.c = c
	ctx, cancel := context.WithCancel(context.Background())
	h.ctx = ctx
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	stopped := false
	h.stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}
	t.Cleanup(h.stop)
	<-c.Started()
	return h
}

// ops waits until the speaker was asked exactly want (in order) since the
// last look.
func (h *harness) ops(want ...string) {
	h.t.Helper()
	var got []string
	waitFor(h.t, "speaker operations "+cmp.Diff(want, got), 5*time.Second, func() bool {
		got = append(got, h.sp.takeOps()...)
		return len(got) >= len(want)
	})
	if d := cmp.Diff(want, got); d != "" {
		h.t.Errorf("speaker operations (-want +got):\n%s", d)
	}
}

// neighbor waits until the summary shows the neighbour as cond wants.
func (h *harness) neighbor(a string, what string, cond func(NeighborStatus) bool) {
	h.t.Helper()
	waitFor(h.t, what, 5*time.Second, func() bool {
		s, err := h.c.Summary(h.ctx)
		if err != nil {
			return false
		}
		for _, n := range s.Neighbors {
			if n.Address == addr(a) {
				return cond(n)
			}
		}
		return false
	})
}

func TestHubNeighboursFollowRegistrations(t *testing.T) {
	leakcheck.Check(t)
	h := start(t, hubConfig(), newFakeSpeaker(), &fakeNHRP{}, &fakeSink{})
	h.ops("add 172.16.0.2 as=65000 nets=[]") // the other hub

	// Registration → neighbour with the certificate's AS and filter.
	h.c.Event(registered("172.16.1.1", "198.51.100.1", attrs("65001", "10.1.0.0/24")))
	h.ops("add 172.16.1.1 as=65001 nets=[10.1.0.0/24]")
	n := h.sp.neighbors()[addr("172.16.1.1")]
	if n.Kind != KindSpoke || n.MaxLen != 26 || n.Identity != "CN=172.16.1.1" || n.Source != "certificate" {
		t.Errorf("neighbour %+v: want a spoke, le 26, with its certificate's subject", n)
	}

	// A registration from a new NBMA address replaces the old one: the
	// session is not touched, the summary shows the new address (the
	// engine's cache, read on a replacement, has the new one).
	h.nh.register("172.16.1.1", "198.51.100.9", attrs("65001", "10.1.0.0/24"))
	h.c.Event(expired("172.16.1.1", nhrp.CauseReplaced))
	h.c.Event(registered("172.16.1.1", "198.51.100.9", attrs("65001", "10.1.0.0/24")))
	h.neighbor("172.16.1.1", "the new NBMA address", func(n NeighborStatus) bool { return n.NBMA == addr("198.51.100.9") })
	if ops := h.sp.takeOps(); len(ops) != 0 {
		t.Errorf("an NBMA change touched the session: %v", ops)
	}

	// A renewed certificate with another network: the filter changes, the
	// session stays; with another AS the session restarts.
	h.c.Event(registered("172.16.1.1", "198.51.100.9", attrs("65001", "10.1.0.0/24", "10.11.0.0/24")))
	h.ops("refilter 172.16.1.1 as=65001 nets=[10.1.0.0/24 10.11.0.0/24]")
	h.c.Event(registered("172.16.1.1", "198.51.100.9", attrs("65011", "10.1.0.0/24")))
	h.ops("reset 172.16.1.1 as=65011 nets=[10.1.0.0/24]")

	// A certificate with two AS fields is refused, audited, shown.
	h.c.Event(registered("172.16.1.1", "198.51.100.9", map[string][]string{"AS": {"65001", "65002"}, "NET": {"10.1.0.0/24"}}))
	h.ops("delete 172.16.1.1")
	waitFor(t, "the refusal audited", 5*time.Second, func() bool { return h.logs.FilterMessage("bgp neighbour refused").Len() == 1 })
	s, _ := h.c.Summary(h.ctx)
	if len(s.Refused) != 1 || s.Refused[0].Address != addr("172.16.1.1") || h.c.Stats().NeighborsRefused != 1 {
		t.Errorf("refused neighbours %+v, stats %+v", s.Refused, h.c.Stats())
	}
	h.c.Event(registered("172.16.1.1", "198.51.100.9", attrs("65001", "10.1.0.0/24")))
	h.ops("add 172.16.1.1 as=65001 nets=[10.1.0.0/24]")

	// Expiry (and clearing) remove the neighbour and its routes; a purge
	// waits for the graceful restart (TestHubPurgeKeepsNeighbourThroughRestart).
	h.c.Event(registered("172.16.2.1", "198.51.100.17", attrs("65002", "10.2.0.0/24")))
	h.ops("add 172.16.2.1 as=65002 nets=[10.2.0.0/24]")
	h.sp.learn(Route{Prefix: pfx("10.2.0.0/24"), NextHop: addr("172.16.2.1"), Peer: addr("172.16.2.1"), Best: true})
	waitFor(t, "the route in the kernel", 5*time.Second, func() bool { return len(h.sink.get()) == 1 })
	h.c.Event(expired("172.16.2.1", nhrp.CauseExpired))
	h.ops("delete 172.16.2.1")
	h.c.Event(expired("172.16.1.1", nhrp.CauseCleared))
	h.ops("delete 172.16.1.1")
	h.sp.learn() // the fake reports the best-path change the delete made
	waitFor(t, "the routes withdrawn from the kernel", 5*time.Second, func() bool { return len(h.sink.get()) == 0 })
}

func TestHubRestartKeepsSessionsAndRoutes(t *testing.T) {
	leakcheck.Check(t)
	sp, nh, sink := newFakeSpeaker(), &fakeNHRP{}, &fakeSink{}
	cfg := hubConfig()
	cfg.Hubs = nil
	h := start(t, cfg, sp, nh, sink)
	nh.register("172.16.1.1", "198.51.100.1", attrs("65001", "10.1.0.0/24"))
	h.c.Event(registered("172.16.1.1", "198.51.100.1", attrs("65001", "10.1.0.0/24")))
	h.ops("add 172.16.1.1 as=65001 nets=[10.1.0.0/24]")
	sp.learn(Route{Prefix: pfx("10.1.0.0/24"), NextHop: addr("172.16.1.1"), Peer: addr("172.16.1.1"), Best: true})
	want := []KernelRoute{{Dst: pfx("10.1.0.0/24"), NextHops: []netip.Addr{addr("172.16.1.1")}}}
	waitFor(t, "the route in the kernel", 5*time.Second, func() bool { return cmp.Equal(sink.get(), want, cmpNet) })

	// The engine stops: its shutdown events do not remove neighbours; the
	// speaker stops gracefully.
	h.c.Event(expired("172.16.1.1", nhrp.CauseShutdown))
	h.stop()
	if ops := sp.takeOps(); len(ops) != 0 || sp.stopped != "graceful=true" {
		t.Errorf("shutdown: operations %v, stop %q; want none and a graceful stop", ops, sp.stopped)
	}

	// The next run: GoBGP starts empty, the kernel still has the route
	// and keeps it while the registration (from the engine) comes back.
	sp2 := newFakeSpeaker()
	h2 := start(t, cfg, sp2, nh, sink)
	h2.ops("add 172.16.1.1 as=65001 nets=[10.1.0.0/24]")
	// The first write of the new run kept the route (GoBGP has none yet).
	waitFor(t, "the first kernel write", 5*time.Second, func() bool { return h2.c.Stats().FIBUpdates == 1 })
	if !cmp.Equal(sink.get(), want, cmpNet) {
		t.Fatalf("kernel routes after the restart %v, want %v kept", sink.get(), want)
	}
	sp2.learn(Route{Prefix: pfx("10.1.0.0/24"), NextHop: addr("172.16.1.1"), Peer: addr("172.16.1.1"), Best: true})
	// Given again, it is no longer stale: withdrawn, it goes at once.
	waitFor(t, "the route given again", 5*time.Second, func() bool { return len(h2.c.fibStale()) == 0 })
	sp2.mu.Lock()
	sp2.rib = nil
	sp2.mu.Unlock()
	sp2.learn()
	waitFor(t, "the route withdrawn", 5*time.Second, func() bool { return len(sink.get()) == 0 })
}

func TestHubWithoutIPsecTakesTheConfig(t *testing.T) {
	leakcheck.Check(t)
	cfg := hubConfig()
	cfg.Hubs, cfg.UseCertificates = nil, false
	cfg.Spokes = map[netip.Addr]SpokeAuth{addr("172.16.1.1"): {AS: 65001, Networks: []netip.Prefix{pfx("10.1.0.0/24")}}}
	cfg.DefaultSpoke = &SpokeAuth{AS: 65100, Networks: []netip.Prefix{pfx("10.100.0.0/16")}}
	h := start(t, cfg, newFakeSpeaker(), &fakeNHRP{}, &fakeSink{})
	h.c.Event(nhrp.Event{Kind: nhrp.EventRegistered, Proto: pfx("172.16.1.1/32"), NBMA: addr("198.51.100.1")})
	h.ops("add 172.16.1.1 as=65001 nets=[10.1.0.0/24]")
	h.c.Event(nhrp.Event{Kind: nhrp.EventRegistered, Proto: pfx("172.16.7.1/32"), NBMA: addr("198.51.100.7")})
	h.ops("add 172.16.7.1 as=65100 nets=[10.100.0.0/16]")
	if n := h.sp.neighbors()[addr("172.16.1.1")]; n.Source != "config" {
		t.Errorf("source %q, want config", n.Source)
	}
}

func TestSpokePeersWithServersThatAreUp(t *testing.T) {
	leakcheck.Check(t)
	cfg := Config{Role: RoleSpoke, AS: 65001, Tunnel: pfx("172.16.1.1/16"), Networks: []netip.Prefix{pfx("10.1.0.0/24")}}
	nh := &fakeNHRP{servers: []nhrp.NHSStatus{
		{Proto: addr("172.16.0.1"), NBMA: addr("192.0.2.1"), State: nhrp.NHSUp},
		{Proto: addr("172.16.0.2"), NBMA: addr("192.0.2.17"), State: nhrp.NHSDown},
	}}
	h := start(t, cfg, newFakeSpeaker(), nh, &fakeSink{})
	// The servers' NBMA addresses are not in the configuration (named
	// by DNS): learned, each refused under its covering prefixes.
	h.ops("add 172.16.0.1 as=65000 nets=[]", "protect [192.0.2.1]")
	h.sp.mu.Lock()
	origin := slices.Clone(h.sp.origin)
	h.sp.mu.Unlock()
	if d := cmp.Diff([]netip.Prefix{pfx("10.1.0.0/24")}, origin, cmpNet); d != "" {
		t.Errorf("announced (-want +got):\n%s", d)
	}
	h.c.Event(nhrp.Event{Kind: nhrp.EventNHSUp, Proto: pfx("172.16.0.2/32"), NBMA: addr("192.0.2.17")})
	h.ops("protect [192.0.2.17]", "add 172.16.0.2 as=65000 nets=[]")
	// Up again later: already refused.
	h.c.Event(nhrp.Event{Kind: nhrp.EventNHSUp, Proto: pfx("172.16.0.2/32"), NBMA: addr("192.0.2.17")})

	// Both hubs send the summary: one ECMP route through both.
	h.sp.learn(
		Route{Prefix: pfx("10.0.0.0/8"), NextHop: addr("172.16.0.1"), Peer: addr("172.16.0.1"), Best: true},
		Route{Prefix: pfx("10.0.0.0/8"), NextHop: addr("172.16.0.2"), Peer: addr("172.16.0.2"), Multipath: true},
		Route{Prefix: pfx("10.1.0.0/24"), NextHop: addr("172.16.1.1"), Best: true}, // our own
		Route{Prefix: pfx("10.77.0.0/16"), NextHop: addr("203.0.113.9"), Peer: addr("172.16.0.1"), Best: true},
	)
	want := []KernelRoute{{Dst: pfx("10.0.0.0/8"), NextHops: []netip.Addr{addr("172.16.0.1"), addr("172.16.0.2")}}}
	waitFor(t, "one ECMP route", 5*time.Second, func() bool { return cmp.Equal(h.sink.get(), want, cmpNet) })

	// A lost server's session goes at once, with its routes.
	h.c.Event(nhrp.Event{Kind: nhrp.EventNHSDown, Proto: pfx("172.16.0.1/32"), NBMA: addr("192.0.2.1"), Reason: "no reply"})
	h.ops("delete 172.16.0.1")
	h.sp.learn()
	want = []KernelRoute{{Dst: pfx("10.0.0.0/8"), NextHops: []netip.Addr{addr("172.16.0.2")}}}
	waitFor(t, "the route through the other hub only", 5*time.Second, func() bool { return cmp.Equal(h.sink.get(), want, cmpNet) })

	// A session to a server that is up going down asks NHRP to register
	// again (the server may have restarted).
	h.sp.notify(SpeakerEvent{Kind: PeerState, Peer: addr("172.16.0.2"), State: StateActive, Reason: "idle-hold-timer-expired"})
	h.sp.notify(SpeakerEvent{Kind: PeerState, Peer: addr("172.16.0.2"), State: StateEstablished})
	select {
	case r := <-h.rereg:
		t.Errorf("re-registration asked before the session was ever up: %s", r)
	default:
	}
	h.sp.notify(SpeakerEvent{Kind: PeerState, Peer: addr("172.16.0.2"), State: StateIdle, Reason: "hold-timer-expired"})
	select {
	case <-h.rereg:
	case <-time.After(5 * time.Second):
		t.Error("no re-registration asked")
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"hub", Config{Role: RoleHub, Tunnel: pfx("172.16.0.1/16")}, true},
		{"spoke without AS", Config{Role: RoleSpoke, Tunnel: pfx("172.16.1.1/16")}, false},
		{"spoke", Config{Role: RoleSpoke, AS: 65001, Tunnel: pfx("172.16.1.1/16")}, true},
		{"hub in another AS", Config{Role: RoleHub, AS: 65001, Tunnel: pfx("172.16.0.1/16")}, false},
		{"default route announced", Config{Role: RoleSpoke, AS: 65001, Tunnel: pfx("172.16.1.1/16"), Networks: []netip.Prefix{pfx("0.0.0.0/0")}}, false},
		{"ibgp spoke outside the hubs' AS", Config{Role: RoleSpoke, Mode: ModeIBGP, AS: 65001, Tunnel: pfx("172.16.1.1/16")}, false},
		{"keepalive over hold", Config{Role: RoleHub, Tunnel: pfx("172.16.0.1/16"), Keepalive: time.Minute, Hold: 30 * time.Second}, false},
		{"spoke summary", Config{Role: RoleSpoke, AS: 65001, Tunnel: pfx("172.16.1.1/16"), Summary: []netip.Prefix{pfx("10.0.0.0/8")}}, false},
	} {
		err := tc.cfg.WithDefaults().Validate()
		if (err == nil) != tc.ok {
			t.Errorf("%s: Validate() = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}
