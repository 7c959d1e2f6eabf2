package failover_test

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/opendmvpn/dmvpn/failover"
	"github.com/opendmvpn/dmvpn/failover/failovertest"
	"github.com/opendmvpn/dmvpn/host"
	"github.com/opendmvpn/dmvpn/internal/leakcheck"
)

var (
	probeA   = netip.MustParseAddr("192.0.2.253")
	probeB   = netip.MustParseAddr("192.0.2.254")
	isp2Only = netip.MustParseAddr("203.0.113.253")
	addr1    = netip.MustParsePrefix("198.51.100.1/28")
	addr2    = netip.MustParsePrefix("203.0.113.65/28")
	gw1      = netip.MustParseAddr("198.51.100.14")
	gw2      = netip.MustParseAddr("203.0.113.78")
)

// rig is a monitor of two uplinks over in-memory stand-ins.
type rig struct {
	m     *failover.Monitor
	k     *failovertest.Kernel
	net   *failovertest.Net
	host  *failovertest.Host
	ct    *failovertest.Conntrack
	rec   *failovertest.Recorder
	stop  context.CancelFunc
	ended chan error
}

// newRig starts a monitor of isp1 (wan0) and isp2 (wan1) with the given
// preferences, both probing probeA and probeB, every host reachable
// through both with a 10 ms round trip. It runs in the caller's bubble.
func newRig(t *testing.T, pref1, pref2 int, edit ...func(*failover.Config, *failovertest.Net)) *rig {
	t.Helper()
	r := &rig{k: failovertest.NewKernel(), net: failovertest.NewNet(1), host: &failovertest.Host{}, ct: &failovertest.Conntrack{}, rec: &failovertest.Recorder{}}
	cfg := failover.Config{Uplinks: []failover.Uplink{
		{Name: "isp1", Interface: "wan0", Probes: []netip.Addr{probeA, probeB}, Preference: pref1, Weight: 2},
		{Name: "isp2", Interface: "wan1", Probes: []netip.Addr{probeA, probeB}, Preference: pref2},
	}}
	for _, up := range cfg.Uplinks {
		for _, h := range up.Probes {
			r.net.SetPath(up.Name, h, failovertest.Path{Reachable: true, RTT: 10 * time.Millisecond})
		}
	}
	for _, e := range edit {
		e(&cfg, r.net)
	}
	r.k.SetLink("wan0", failover.Link{Index: 10, Up: true, Addr: addr1, Gateway: gw1})
	r.k.SetLink("wan1", failover.Link{Index: 11, Up: true, Addr: addr2, Gateway: gw2})
	m, err := failover.New(cfg, failover.Deps{Kernel: r.k, Probers: r.net, Host: r.host, Conntrack: r.ct,
		Observers: []failover.Observer{r.rec}, Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	r.m = m
	ctx, cancel := context.WithCancel(context.Background())
	r.stop, r.ended = cancel, make(chan error, 1)
	go func() { r.ended <- m.Run(ctx) }()
	t.Cleanup(r.close)
	synctest.Wait()
	return r
}

func (r *rig) close() {
	r.stop()
	<-r.ended
}

// waitMain waits (in virtual time, up to a minute) until the default
// route is through want, and returns when it was applied.
func (r *rig) waitMain(t *testing.T, want ...string) time.Time {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		if evs := r.rec.AppliedEvents(); len(evs) > 0 && slices.Equal(evs[len(evs)-1].Main, want) {
			return evs[len(evs)-1].Time
		}
		time.Sleep(time.Millisecond)
	}
	d, _ := r.host.Last()
	t.Fatalf("default route through %v, want %v", d.Main, want)
	return time.Time{}
}

func TestFailoverAndBack(t *testing.T) {
	leakcheck.Check(t)
	synctest.Test(t, func(t *testing.T) {
		r := newRig(t, 0, 1)
		r.waitMain(t, "isp1")
		if got := r.m.NBMA(); !slices.Equal(got, []netip.Addr{addr1.Addr(), addr2.Addr()}) {
			t.Errorf("NBMA = %v, want isp1's address first", got)
		}
		time.Sleep(2*time.Second + 10*time.Millisecond)

		cut := time.Now()
		r.net.Cut("isp1")
		moved := r.waitMain(t, "isp2")
		// Rounds start every 250 ms, and at once when the newest lacks
		// replies for half the timeout (100 ms; twice the 10 ms round
		// trip is less): the first silent round starts within 250 ms of
		// the cut, the third 200 ms later, decided a timeout after its
		// last retry (100 ms in): 500 ms.
		if d := moved.Sub(cut); d > 750*time.Millisecond || d < 500*time.Millisecond {
			t.Errorf("default route moved %v after the cut, want 0.5–0.75 s", d)
		} else {
			t.Logf("default route moved %v after the cut", d)
		}
		if got, want := r.ct.Flushes(), []failovertest.Flush{{Addr: addr1.Addr(), Mark: 0x100, Mask: 0xff00}}; !slices.Equal(got, want) {
			t.Errorf("connections ended: %v, want %v", got, want)
		}
		evs := r.rec.AppliedEvents()
		if last := evs[len(evs)-1]; last.Old != addr1.Addr() || last.NBMA != addr2.Addr() {
			t.Errorf("NBMA change reported as %v → %v, want %v → %v", last.Old, last.NBMA, addr1.Addr(), addr2.Addr())
		}
		tr := r.rec.Transitions()
		if len(tr) != 1 || tr[0].Uplink != "isp1" || tr[0].To != failover.StateDown || !strings.Contains(tr[0].Reason, "rounds in a row") {
			t.Fatalf("transitions %+v, want isp1 down with its reason", tr)
		}
		// isp1's table still has its default: probing goes on through it.
		d, _ := r.host.Last()
		if !slices.ContainsFunc(d.Routes, func(rt host.Route) bool {
			return rt.Table == 101 && rt.Dst.Bits() == 0 && rt.NextHops[0].Gw == gw1
		}) {
			t.Errorf("isp1's table lost its default route: %v", d.Routes)
		}
		if n := r.net.Sent("isp1"); n == 0 {
			t.Error("no probes through isp1")
		}

		time.Sleep(3 * time.Second)
		restored := time.Now()
		r.net.Restore("isp1")
		back := r.waitMain(t, "isp1")
		if d := back.Sub(restored); d > 5*250*time.Millisecond {
			t.Errorf("back %v after the restore, want within %d rounds", d, failover.DefaultRepliesRequired+1)
		}
		// Coming back preferred ends nobody's connections.
		if got := r.ct.Flushes(); len(got) != 1 {
			t.Errorf("connections ended on the way back: %v", got[1:])
		}
		st, err := r.m.Status(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if st[0].State != "up" || !st[0].Active || !st[0].Default || st[0].Transitions != 2 || st[1].Default {
			t.Errorf("status after the restore: %+v", st)
		}
		if h := st[0].Hosts[0]; h.RTT != 10*time.Millisecond || h.Loss == 0 || h.Received == 0 {
			t.Errorf("isp1's host A: %+v, want 10 ms rtt and some loss", h)
		}
	})
}

// Link down takes the uplink down at once, without waiting for probes.
func TestLinkDown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRig(t, 0, 1)
		r.waitMain(t, "isp1")
		time.Sleep(time.Second)
		cut := time.Now()
		r.k.SetLink("wan0", failover.Link{Index: 10, Up: false, Addr: addr1})
		if d := r.waitMain(t, "isp2").Sub(cut); d > 10*time.Millisecond {
			t.Errorf("default moved %v after the link went down", d)
		}
		if tr := r.rec.Transitions(); len(tr) != 1 || tr[0].Reason != "link down" {
			t.Errorf("transitions %+v, want one for the link", tr)
		}
		// The gateway learnt earlier is remembered when the kernel's
		// default through the interface is gone.
		r.k.SetLink("wan0", failover.Link{Index: 10, Up: true, Addr: addr1})
		r.waitMain(t, "isp1")
		st, _ := r.m.Status(context.Background())
		if st[0].Gateway != gw1 {
			t.Errorf("isp1's gateway %v, want the learnt %v", st[0].Gateway, gw1)
		}
	})
}

// A probe host reachable only through isp2 never keeps isp1 up.
func TestProbeHostOnlyThroughOtherUplink(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRig(t, 0, 1, func(c *failover.Config, n *failovertest.Net) {
			c.Uplinks[0].Probes = []netip.Addr{probeA, isp2Only}
			c.Uplinks[1].Probes = []netip.Addr{probeA, isp2Only}
			n.SetPath("isp1", probeA, failovertest.Path{Reachable: true, RTT: 10 * time.Millisecond})
			n.SetPath("isp2", probeA, failovertest.Path{Reachable: true, RTT: 10 * time.Millisecond})
			n.SetPath("isp2", isp2Only, failovertest.Path{Reachable: true, RTT: 10 * time.Millisecond})
		})
		r.waitMain(t, "isp1")
		time.Sleep(time.Second)
		r.net.SetPath("isp1", probeA, failovertest.Path{Reachable: false})
		r.waitMain(t, "isp2")
		time.Sleep(10 * time.Second)
		st, _ := r.m.Status(context.Background())
		if st[0].State != "down" || st[0].Hosts[1].Received != 0 || st[1].Hosts[1].Received == 0 {
			t.Errorf("isp1 %s with %d replies from the isp2-only host (isp2 got %d)", st[0].State, st[0].Hosts[1].Received, st[1].Hosts[1].Received)
		}
		if n := len(r.rec.Transitions()); n != 1 {
			t.Errorf("%d transitions, want 1", n)
		}
	})
}

// Equal preferences balance over both, weighted; one down leaves the
// other alone.
func TestBalanced(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRig(t, 0, 0)
		r.waitMain(t, "isp1", "isp2")
		d, _ := r.host.Last()
		main := d.Routes[len(d.Routes)-1]
		if got := []int{main.NextHops[0].Weight, main.NextHops[1].Weight}; !slices.Equal(got, []int{2, 1}) {
			t.Errorf("weights %v, want [2 1]", got)
		}
		r.net.Cut("isp2")
		r.waitMain(t, "isp1")
		if evs := r.rec.AppliedEvents(); evs[len(evs)-1].Old != evs[len(evs)-1].NBMA {
			t.Error("the NBMA address moved when the other uplink went down")
		}
		r.net.Restore("isp2")
		r.waitMain(t, "isp1", "isp2")
	})
}

// Every uplink down: the default stays (fail open) and nothing is
// flushed.
func TestAllDownFailOpen(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRig(t, 0, 1)
		r.waitMain(t, "isp1")
		r.net.Cut("isp2")
		time.Sleep(2 * time.Second)
		r.net.Cut("isp1")
		time.Sleep(2 * time.Second)
		d, _ := r.host.Last()
		if !d.FailOpen || !slices.Equal(d.Main, []string{"isp1"}) {
			t.Errorf("all down: main %v fail open %v", d.Main, d.FailOpen)
		}
		if got := r.ct.Flushes(); len(got) != 1 || got[0].Addr != addr2.Addr() {
			t.Errorf("flushes %v, want isp2's only (isp1 carries the default again)", got)
		}
	})
}

// A state the host refuses is tried again; the newest state wins.
func TestApplyRetried(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRig(t, 0, 1)
		r.waitMain(t, "isp1")
		r.host.Fail(errors.New("netlink: busy"))
		r.net.Cut("isp1")
		time.Sleep(3 * time.Second)
		if d, _ := r.host.Last(); !slices.Equal(d.Main, []string{"isp1"}) {
			t.Fatalf("applied %v while the host refused", d.Main)
		}
		r.host.Fail(nil)
		r.waitMain(t, "isp2")
		if got := r.ct.Flushes(); len(got) != 1 {
			t.Errorf("flushes after the retry: %v", got)
		}
	})
}

// A single uplink losing its address (a PPPoE session ending) is down at
// once and its connections are ended, found by the address it had; it
// comes back with another address, reported as the next NBMA address.
func TestAddressLostAndChanged(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRig(t, 0, 1, func(c *failover.Config, _ *failovertest.Net) { c.Uplinks = c.Uplinks[:1] })
		r.waitMain(t, "isp1")
		time.Sleep(time.Second)
		r.k.SetLink("wan0", failover.Link{Index: 10, Up: true, Gateway: gw1})
		r.waitMain(t)
		if got := r.m.NBMA(); len(got) != 0 {
			t.Errorf("NBMA %v without an address", got)
		}
		if got, want := r.ct.Flushes(), []failovertest.Flush{{Addr: addr1.Addr(), Mark: 0x100, Mask: 0xff00}}; !slices.Equal(got, want) {
			t.Errorf("connections ended: %v, want %v (the address the uplink had)", got, want)
		}
		renewed := netip.MustParsePrefix("198.51.100.9/28")
		r.k.SetLink("wan0", failover.Link{Index: 10, Up: true, Addr: renewed, Gateway: gw1})
		r.waitMain(t, "isp1")
		if got := r.m.NBMA(); !slices.Equal(got, []netip.Addr{renewed.Addr()}) {
			t.Errorf("NBMA %v, want the new address %v", got, renewed.Addr())
		}
		var nbmas []netip.Addr
		for _, a := range r.rec.AppliedEvents() {
			if len(nbmas) == 0 || nbmas[len(nbmas)-1] != a.NBMA {
				nbmas = append(nbmas, a.NBMA)
			}
		}
		if want := []netip.Addr{addr1.Addr(), {}, renewed.Addr()}; !slices.Equal(nbmas, want) {
			t.Errorf("NBMA addresses applied %v, want %v", nbmas, want)
		}
	})
}
