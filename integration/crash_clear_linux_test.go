package integration

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/opendmvpn/dmvpn/daemon/control"
	"github.com/opendmvpn/dmvpn/lab/testbed"
	"github.com/opendmvpn/dmvpn/nhrp"
)

// TestCrashInClear is the crash the report behind the state file measured
// — without IPsec, where nothing tells the spokes that their hub lost its
// cache (they came back only at their next refresh: 99.6 s in the lab, 40
// minutes at the default holding time) — on the userspace data plane,
// whose TUN device died with the process and took every route through it:
// hub's dmvpnd is killed with SIGKILL while spoke 1's LAN talks to spoke
// 2's over their shortcut, and started again. Every registration is back
// as it was, the hub answers and relays between the spokes again within
// crashGoal, and the shortcut carries the traffic throughout (no reply
// through the hub). Then spoke 1: killed and started again, it is
// registered and its shortcut carries traffic again within crashGoal.
func TestCrashInClear(t *testing.T) {
	t.Parallel()
	x := newE2E(t, "userspace")
	waitFor(t, 30*time.Second, "every spoke registered", x.allRegistered)
	h1, h2 := x.hosts[0], x.hosts[1]
	hubAddr := netip.MustParseAddr("10.0.0.1")
	waitFor(t, 20*time.Second, "spoke 1's LAN reaching spoke 2's over a shortcut", func() bool {
		ttl, err := pingTTL(t, h1, h2.Addr)
		return err == nil && ttl == 62
	})
	regs := func() []string {
		var out []string
		for _, e := range x.hub.cache() {
			if e.Type == nhrp.TypeDynamic {
				out = append(out, fmt.Sprintf("%s at %s (%ds)", e.Proto, e.NBMA, e.HoldingTime))
			}
		}
		slices.Sort(out)
		return out
	}
	before := regs()
	if len(before) != len(x.spokes) {
		t.Fatalf("the hub holds %d registrations before the crash, want %d: %v", len(before), len(x.spokes), before)
	}

	// What the hub keeps is written within saveSoon of a registration, or
	// after the pause that paces its writer (nine times its last write's
	// length: hundreds of ms when fsync is slow on a loaded machine); a
	// kill inside that window loses the registration until the client's
	// next refresh. The crash comes once every registration is written.
	stateFile := strings.TrimSuffix(x.hub.socket, ".sock") + ".gre1.state"
	waitFor(t, 10*time.Second, "every registration in the hub's state file", func() bool {
		b, _ := os.ReadFile(stateFile)
		j, _ := os.ReadFile(stateFile + ".journal")
		for _, a := range e2eTunnel {
			if !bytes.Contains(b, []byte(`"`+a.String()+`/32"`)) && !bytes.Contains(j, []byte(`"`+a.String()+`/32"`)) {
				return false
			}
		}
		return true
	})

	// The hub, killed under traffic over the shortcut.
	flow := pingCount(t, h1, h2.Addr, 30)
	killed := time.Now()
	x.hub.kill()
	x.hub.start()
	answered := time.Since(killed)
	toHub := waitFor(t, 10*time.Second, "spoke 1's LAN reaching the hub again", func() bool {
		_, err := pingTTL(t, h1, hubAddr)
		return err == nil
	}) + answered
	after := regs()
	out := flow.wait()
	if got := strings.Count(out, "ttl=62"); got < 24 || strings.Contains(out, "ttl=61") {
		t.Errorf("spoke 1 → spoke 2 over their shortcut while the hub was killed and started again (%d of 30 straight):\n%s", got, out)
	}
	if !slices.Equal(before, after) {
		t.Errorf("the hub's registrations before the crash:\n  %s\nafter:\n  %s", strings.Join(before, "\n  "), strings.Join(after, "\n  "))
	}
	// Through the hub: the shortcuts cleared, the hub relays between the
	// LANs (replies with ttl 61).
	for _, s := range x.spokes[:2] {
		var cleared control.ClearResponse
		if err := s.client.Post(context.Background(), control.PathClear, control.ClearRequest{Shortcut: true}, &cleared); err != nil {
			t.Fatalf("%s: clear ip nhrp shortcut: %v", s.name, err)
		}
	}
	relayed := waitFor(t, 10*time.Second, "the hub relaying between spoke 1's and spoke 2's LANs", func() bool {
		ttl, err := pingTTL(t, h1, h2.Addr)
		return err == nil && ttl == 61
	})
	t.Logf("hub killed and started again: answering %v after the kill, reached from spoke 1's LAN %v after it; registrations as before (%d); with the shortcuts cleared, relaying %v after the clear",
		answered.Round(time.Millisecond), toHub.Round(time.Millisecond), len(after), relayed.Round(time.Millisecond))
	if toHub-answered > crashGoal {
		t.Errorf("traffic to the hub back %v after the kill, %v after the new dmvpnd answered, goal %v", toHub, toHub-answered, crashGoal)
	}

	// The spoke.
	waitFor(t, 20*time.Second, "spoke 1's shortcut to spoke 2's LAN again", func() bool {
		ttl, err := pingTTL(t, h1, h2.Addr)
		return err == nil && ttl == 62
	})
	s1 := x.spokes[0]
	killed = time.Now()
	s1.kill()
	s1.start()
	answered = time.Since(killed)
	waitFor(t, 10*time.Second, "spoke 1 registered and its shortcut carrying traffic", func() bool {
		var st control.NHSResponse
		if err := s1.client.Get(context.Background(), control.PathNHS, &st); err != nil || len(st.Servers) != 1 || st.Servers[0].State != nhrp.NHSUp {
			return false
		}
		ttl, err := pingTTL(t, h1, h2.Addr)
		return err == nil && ttl == 62
	})
	back := time.Since(killed)
	t.Logf("spoke 1 killed and started again: registered and its shortcut carrying traffic %v after the kill", back.Round(time.Millisecond))
	if back-answered > crashGoal {
		t.Errorf("spoke 1 back %v after the kill, %v after the new dmvpnd answered, goal %v", back, back-answered, crashGoal)
	}
}

// pingFlow is a ping process running in the background.
type pingFlow struct {
	t testing.TB
	p *testbed.Proc
}

// pingCount starts count pings 100 ms apart from n to dst.
func pingCount(t testing.TB, n *testbed.Node, dst netip.Addr, count int) pingFlow {
	t.Helper()
	p, err := n.Start(testbed.ProcSpec{Name: "ping-flow-" + dst.String(), Args: []string{"ping", "-n", "-c", fmt.Sprint(count), "-i", "0.1", "-W", "1", dst.String()}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Stop)
	return pingFlow{t: t, p: p}
}

// wait waits for the pings to end and returns ping's output.
func (f pingFlow) wait() string {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	f.p.Wait(ctx)
	return f.p.Output()
}
