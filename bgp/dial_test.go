package bgp

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/osrg/gobgp/v4/api"
	"go.uber.org/zap"

	"github.com/opendmvpn/dmvpn/internal/leakcheck"
	"github.com/opendmvpn/dmvpn/nhrp"
)

// TestOneSideDials runs three of our nodes on GoBGP over loopback
// addresses — two hubs and a spoke registered with both — and requires
// exactly one side of each session to dial (the other passive: the hubs
// toward the spoke, the hub with the higher address toward the other hub)
// and every session to come up. Both sides dialling made the two GoBGPs
// of a session collide, and GoBGP v4.9.0 can then wait in OpenConfirm for
// ever (GoBGP.peer): the lab's BGP did not converge under load.
//
// The race detector flags this test and TestTwoSpeakersRefusals inside
// GoBGP: every StartBgp writes the package-level route selection options
// (table.SelectionOptions and UseMultiplePaths, pkg/server/server.go:2697
// in v4.9.0) that every server's ListPath reads, so several servers in one
// process race on them. dmvpnd runs one; here they all set the same.
func TestOneSideDials(t *testing.T) {
	leakcheck.Check(t, gobgpLeaks...)
	lo, port := loopbackNet(t)
	hub1 := lo.Addr().Next() // .1
	hub2 := hub1.Next()      // .2
	spoke := hub2.Next()     // .3
	timers := func(c Config) Config {
		c.Port, c.Keepalive, c.Hold, c.ConnectRetry = port, time.Second, 3*time.Second, time.Second
		return c
	}
	hubCfg := func(self, other netip.Addr) Config {
		return timers(Config{Role: RoleHub, Tunnel: netip.PrefixFrom(self, 24), Hubs: []netip.Addr{other},
			Spokes:  map[netip.Addr]SpokeAuth{spoke: {AS: 65001, Networks: []netip.Prefix{pfx("10.1.0.0/24")}}},
			Summary: []netip.Prefix{pfx("10.0.0.0/8")}})
	}
	spokeCfg := timers(Config{Role: RoleSpoke, AS: 65001, Tunnel: netip.PrefixFrom(spoke, 24), Networks: []netip.Prefix{pfx("10.1.0.0/24")}})
	ctx, cancel := context.WithCancel(context.Background())
	type node struct {
		c  *Controller
		g  *GoBGP
		nh *fakeNHRP
	}
	var nodes []node
	done := make(chan error, 3)
	defer func() {
		cancel()
		for range nodes {
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		}
	}()
	for _, cfg := range []Config{hubCfg(hub1, hub2), hubCfg(hub2, hub1), spokeCfg} {
		g := NewGoBGP(zap.NewNop())
		nh := &fakeNHRP{}
		c, err := NewController(cfg, Deps{Speaker: g, Routes: &fakeSink{}, NHRP: nh})
		if err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, node{c, g, nh})
		go func() { done <- c.Run(ctx) }()
		<-c.Started()
	}
	for _, n := range nodes[:2] {
		n.nh.register(spoke.String(), "198.51.100.3", nil)
		n.c.Event(nhrp.Event{Kind: nhrp.EventRegistered, Proto: netip.PrefixFrom(spoke, 32), NBMA: addr("198.51.100.3")})
	}
	for _, h := range []netip.Addr{hub1, hub2} {
		nodes[2].c.Event(nhrp.Event{Kind: nhrp.EventNHSUp, Proto: netip.PrefixFrom(h, 32), NBMA: addr("192.0.2.1")})
	}

	// Which side waits, as GoBGP has it configured.
	passive := func(n node) map[netip.Addr]bool {
		got := map[netip.Addr]bool{}
		s, _, err := n.g.server()
		if err != nil {
			t.Fatal(err)
		}
		if err := s.ListPeer(ctx, &api.ListPeerRequest{}, func(p *api.Peer) {
			got[netip.MustParseAddr(p.GetConf().GetNeighborAddress())] = p.GetTransport().GetPassiveMode()
		}); err != nil {
			t.Fatal(err)
		}
		return got
	}
	waitFor(t, "every neighbour configured", 10*time.Second, func() bool {
		return len(passive(nodes[0])) == 2 && len(passive(nodes[1])) == 2 && len(passive(nodes[2])) == 2
	})
	for i, want := range []map[netip.Addr]bool{
		{hub2: false, spoke: true}, // hub1 dials hub2 and waits for the spoke
		{hub1: true, spoke: true},  // hub2 (the higher address) waits for both
		{hub1: false, hub2: false}, // the spoke dials both
	} {
		if d := cmp.Diff(want, passive(nodes[i])); d != "" {
			t.Errorf("node %d: passive by neighbour (-want +got):\n%s", i, d)
		}
	}

	// Every session comes up all the same.
	waitFor(t, "every session established", 20*time.Second, func() bool {
		for _, n := range nodes {
			s, err := n.c.Summary(ctx)
			if err != nil || len(s.Neighbors) != 2 {
				return false
			}
			for _, nb := range s.Neighbors {
				if nb.State != StateEstablished {
					return false
				}
			}
		}
		return true
	})
}
