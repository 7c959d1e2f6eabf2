package failover_test

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/opendmvpn/dmvpn/failover"
	"github.com/opendmvpn/dmvpn/failover/failovertest"
	"github.com/opendmvpn/dmvpn/host"
)

// addrs compares netip values.
var addrs = cmpopts.EquateComparable(netip.Addr{}, netip.Prefix{})

var (
	addr3 = netip.MustParsePrefix("192.0.2.129/28")
	gw3   = netip.MustParseAddr("192.0.2.142")
)

// weights returns the main table's default route of the state the host
// has now: the uplinks' gateways with their weights.
func (r *rig) weights(t *testing.T) map[netip.Addr]int {
	t.Helper()
	d, _ := r.host.Last()
	out := map[netip.Addr]int{}
	for _, rt := range d.Routes {
		if rt.Table == 254 {
			for _, nh := range rt.NextHops {
				out[nh.Gw] = nh.Weight
			}
		}
	}
	return out
}

// Reweighting, adding and removing uplinks while the monitor runs: each
// reload is in the kernel when Reconfigure returns; a kept uplink keeps
// its state and history, an added one starts down and joins the default
// once its probes prove it, a removed one's connections end.
func TestReconfigure(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRig(t, 0, 0)
		r.waitMain(t, "isp1", "isp2")
		time.Sleep(2 * time.Second)
		ctx := context.Background()
		before, _ := r.m.Status(ctx)

		// Reweight: 2:1 becomes 1:5 at once.
		cfg := r.m.Config()
		cfg.Uplinks[0].Weight, cfg.Uplinks[1].Weight = 1, 5
		if err := r.m.Reconfigure(ctx, cfg); err != nil {
			t.Fatal(err)
		}
		if got, want := r.weights(t), map[netip.Addr]int{gw1: 1, gw2: 5}; !cmp.Equal(got, want, addrs) {
			t.Errorf("weights after the reload %v, want %v", got, want)
		}
		after, _ := r.m.Status(ctx)
		if after[0].Rounds < before[0].Rounds || after[0].Hosts[0].Received < before[0].Hosts[0].Received || after[0].Transitions != 0 {
			t.Errorf("isp1 lost its history in the reload: %+v, was %+v", after[0], before[0])
		}

		// Add isp3 on wan2, balancing with the others: down at first,
		// its own table and rules in at once, in the default once up.
		r.k.SetLink("wan2", failover.Link{Index: 12, Up: true, Addr: addr3, Gateway: gw3})
		for _, h := range []netip.Addr{probeA, probeB} {
			r.net.SetPath("isp3", h, failovertest.Path{Reachable: true, RTT: 10 * time.Millisecond})
		}
		cfg.Uplinks = append(cfg.Uplinks, failover.Uplink{Name: "isp3", Interface: "wan2", Probes: []netip.Addr{probeA, probeB}, Weight: 2})
		if err := r.m.Reconfigure(ctx, cfg); err != nil {
			t.Fatal(err)
		}
		st, _ := r.m.Status(ctx)
		if len(st) != 3 || st[2].State != "down" || st[2].Default {
			t.Fatalf("isp3 after the reload that added it: %+v", st[len(st)-1])
		}
		d, _ := r.host.Last()
		if !slices.ContainsFunc(d.Routes, func(rt host.Route) bool { return rt.Table == 103 }) {
			t.Errorf("isp3's own table not in the kernel after its reload: %v", d.Routes)
		}
		r.waitMain(t, "isp1", "isp2", "isp3")
		if got, want := r.weights(t), map[netip.Addr]int{gw1: 1, gw2: 5, gw3: 2}; !cmp.Equal(got, want, addrs) {
			t.Errorf("weights with isp3 up %v, want %v", got, want)
		}

		// Remove isp2: out of the default at once, its connections ended.
		cfg.Uplinks = slices.Delete(cfg.Uplinks, 1, 2)
		if err := r.m.Reconfigure(ctx, cfg); err != nil {
			t.Fatal(err)
		}
		if got, want := r.weights(t), map[netip.Addr]int{gw1: 1, gw3: 2}; !cmp.Equal(got, want, addrs) {
			t.Errorf("weights without isp2 %v, want %v", got, want)
		}
		r.waitFlush(t, addr2.Addr())
		sent := r.net.Sent("isp2")
		time.Sleep(time.Second)
		if n := r.net.Sent("isp2"); n != sent {
			t.Errorf("isp2 probed %d times after its removal", n-sent)
		}
	})
}

// waitFlush waits until the connections of the uplink at addr were ended.
func (r *rig) waitFlush(t *testing.T, addr netip.Addr) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		if slices.ContainsFunc(r.ct.Flushes(), func(f failovertest.Flush) bool { return f.Addr == addr }) {
			return
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatalf("connections ended: %v, none of %v", r.ct.Flushes(), addr)
}

// A reload whose state the host refuses changes nothing: the error says
// why, the old configuration and state are in force, and the uplinks go
// on failing over.
func TestReconfigureRefused(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRig(t, 0, 1)
		r.waitMain(t, "isp1")
		ctx := context.Background()
		old := r.m.Config()
		applied := len(r.host.Applied())
		refused := errors.New("table 107: no such table")
		r.host.Refuse(func(d failover.Desired) error {
			if slices.ContainsFunc(d.Routes, func(rt host.Route) bool { return rt.Table == 107 }) {
				return refused
			}
			return nil
		})
		cfg := old
		cfg.Uplinks = slices.Clone(old.Uplinks)
		cfg.Uplinks[0].Table, cfg.Uplinks[1].Weight = 107, 9
		err := r.m.Reconfigure(ctx, cfg)
		if !errors.Is(err, refused) || errors.Is(err, failover.ErrRollback) {
			t.Fatalf("refused reload: %v, want the host's refusal, rolled back", err)
		}
		if got := r.m.Config(); !cmp.Equal(got, old, addrs) {
			t.Errorf("config after a refused reload:\n%s", cmp.Diff(old, got, addrs))
		}
		all := r.host.Applied()
		if len(all) != applied+1 || !cmp.Equal(all[len(all)-1], all[applied-1], addrs) {
			t.Errorf("states applied by the refused reload: %v, want the old one again", all[applied:])
		}
		r.net.Cut("isp1")
		r.waitMain(t, "isp2")

		// A change of what names the uplinks' kernel state is refused
		// before anything happens.
		cfg = r.m.Config()
		cfg.RulePriority++
		if err := r.m.Reconfigure(ctx, cfg); !errors.Is(err, failover.ErrConfig) {
			t.Errorf("rule priority changed live: %v", err)
		}
	})
}
