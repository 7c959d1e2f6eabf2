package failover_test

import (
	"context"
	"net/netip"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/opendmvpn/dmvpn/failover"
	"github.com/opendmvpn/dmvpn/failover/failovertest"
	"github.com/opendmvpn/dmvpn/host"
	"github.com/opendmvpn/dmvpn/host/hosttest"
)

// Through the host-state owner: the uplinks' default replaces the
// system's in main (kept aside), follows the states, and Close puts the
// system's back and removes the rest.
func TestHostClient(t *testing.T) {
	k := hosttest.NewKernel()
	k.AddLink("wan0", 10)
	k.AddLink("wan1", 11)
	for _, key := range []string{"net/ipv4/fib_multipath_hash_policy", "net/ipv4/fib_multipath_use_neigh", "net/ipv4/conf/wan0/rp_filter"} {
		k.SetSysctl(key, "0")
	}
	ctx := context.Background()
	system := host.Route{Table: host.Main, Dst: netip.MustParsePrefix("0.0.0.0/0"), Protocol: 3,
		NextHops: []host.NextHop{{Gw: gw1, Index: 10}}}
	if err := k.ReplaceRoute(ctx, system); err != nil {
		t.Fatal(err)
	}
	m, err := host.New(host.Options{Kernel: k})
	if err != nil {
		t.Fatal(err)
	}
	cfg := failover.Config{Uplinks: []failover.Uplink{
		{Name: "isp1", Interface: "wan0", Probes: []netip.Addr{probeA}},
		{Name: "isp2", Interface: "wan1", Probes: []netip.Addr{probeA}, Preference: 1},
	}}.WithDefaults()
	c, err := m.Client(cfg.Owner())
	if err != nil {
		t.Fatal(err)
	}

	mainVia := func() netip.Addr {
		rs, _ := k.RoutesAt(ctx, host.Main, netip.MustParsePrefix("0.0.0.0/0"))
		if len(rs) != 1 || len(rs[0].NextHops) != 1 {
			return netip.Addr{}
		}
		return rs[0].NextHops[0].Gw
	}
	synctest.Test(t, func(t *testing.T) {
		fk, net := failovertest.NewKernel(), failovertest.NewNet(1)
		fk.SetLink("wan0", failover.Link{Index: 10, Up: true, Addr: addr1, Gateway: gw1})
		fk.SetLink("wan1", failover.Link{Index: 11, Up: true, Addr: addr2, Gateway: gw2})
		for _, u := range []string{"isp1", "isp2"} {
			net.SetPath(u, probeA, failovertest.Path{Reachable: true, RTT: time.Millisecond})
		}
		rec := &failovertest.Recorder{}
		mon, err := failover.New(cfg, failover.Deps{Kernel: fk, Probers: net, Host: failover.HostClient{C: c}, Observers: []failover.Observer{rec}, Logger: zaptest.NewLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		rctx, stop := context.WithCancel(ctx)
		done := make(chan error)
		go func() { done <- mon.Run(rctx) }()
		defer func() { stop(); <-done }()
		wait := func(want netip.Addr) {
			t.Helper()
			for range 1000 {
				evs := rec.AppliedEvents()
				if len(evs) > 0 && mainVia() == want && evs[len(evs)-1].NBMA.IsValid() && (want == gw1) == (evs[len(evs)-1].NBMA == addr1.Addr()) {
					return
				}
				time.Sleep(10 * time.Millisecond)
			}
			t.Fatalf("main's default via %v, want %v", mainVia(), want)
		}
		wait(gw1)
		net.Cut("isp1")
		wait(gw2)
		if rs, _ := k.RoutesAt(ctx, 101, netip.MustParsePrefix("0.0.0.0/0")); len(rs) != 1 {
			t.Errorf("isp1's table: %v, want its default", rs)
		}
		rules, _ := k.Rules(ctx, host.IPv4)
		n := 0
		for _, r := range rules {
			if r.Priority >= failover.DefaultRulePriority && r.Priority < 32766 {
				n++
			}
		}
		if n != 6 {
			t.Errorf("%d rules of the uplinks, want 6: %v", n, rules)
		}
	})
	cctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if err := c.Close(cctx); err != nil {
		t.Fatal(err)
	}
	if v, _ := k.Sysctl("net/ipv4/conf/wan0/rp_filter"); v != "0" {
		t.Errorf("rp_filter of wan0 is %s after Close, want 0 back", v)
	}
	rs, _ := k.RoutesAt(ctx, host.Main, netip.MustParsePrefix("0.0.0.0/0"))
	if len(rs) != 1 || rs[0].Protocol != 3 || rs[0].NextHops[0].Gw != gw1 {
		t.Errorf("after Close main's default is %v, want the system's back", rs)
	}
	if rs, _ := k.Routes(ctx, host.IPv4, failover.DefaultProtocol); len(rs) != 0 {
		t.Errorf("after Close: %v", rs)
	}
	rules, _ := k.Rules(ctx, host.IPv4)
	for _, r := range rules {
		if r.Priority >= failover.DefaultRulePriority && r.Priority < 32766 {
			t.Errorf("rule left after Close: %v", r)
		}
	}
}
