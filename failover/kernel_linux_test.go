//go:build linux

package failover

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/opendmvpn/dmvpn/internal/netnstest"
)

// twoISPs builds, around the test's namespace (the router), two ISP
// namespaces: isp1 on wan0 (198.51.100.1/28, gateway .14) and isp2 on wan1
// (203.0.113.65/28, gateway .78). Both ISPs answer for 192.0.2.253 (on
// their loopback); only isp2 answers for 203.0.113.253. The main table's
// default and a host route to 203.0.113.253 go through isp2; isp1's
// table 101, its source rule and the rule that puts main's specific
// routes first are what the host-state owner would install.
func twoISPs(t *testing.T) {
	t.Helper()
	base := fmt.Sprintf("fot%dx%d", os.Getpid(), time.Now().UnixNano()%1e6)
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	for _, isp := range []struct{ ns, dev, addr, gw, lo string }{
		{base + "-1", "wan0", "198.51.100.1/28", "198.51.100.14/28", "192.0.2.253/32"},
		{base + "-2", "wan1", "203.0.113.65/28", "203.0.113.78/28", "192.0.2.253/32 203.0.113.253/32"},
	} {
		run("ip", "netns", "add", isp.ns)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", isp.ns).Run() })
		run("ip", "link", "add", isp.dev, "type", "veth", "peer", "name", "up0", "netns", isp.ns)
		run("ip", "addr", "add", isp.addr, "dev", isp.dev)
		run("ip", "link", "set", isp.dev, "up")
		run("ip", "-n", isp.ns, "addr", "add", isp.gw, "dev", "up0")
		run("ip", "-n", isp.ns, "link", "set", "up0", "up")
		run("ip", "-n", isp.ns, "link", "set", "lo", "up")
		for _, a := range strings.Fields(isp.lo) {
			run("ip", "-n", isp.ns, "addr", "add", a, "dev", "lo")
		}
		run("ip", "-n", isp.ns, "route", "add", "default", "via", strings.Split(isp.addr, "/")[0])
		run("sysctl", "-qw", "net.ipv4.conf."+isp.dev+".rp_filter=2")
	}
	run("ip", "route", "add", "default", "via", "203.0.113.78")
	run("ip", "route", "add", "198.51.100.0/28", "dev", "wan0", "table", "101")
	run("ip", "route", "add", "default", "via", "198.51.100.14", "dev", "wan0", "table", "101", "proto", "44")
	run("ip", "rule", "add", "from", "198.51.100.1", "lookup", "101", "prio", "1102")
	// As in production, the main table's specific routes come first: here
	// one to the isp2-only host, which a probe merely bound to isp1's
	// address would follow out of wan1.
	run("ip", "rule", "add", "lookup", "main", "suppress_prefixlength", "0", "prio", "1100")
	run("ip", "route", "add", "203.0.113.253/32", "via", "203.0.113.78")
}

// replies collects the replies a prober delivers.
type replies struct {
	mu  sync.Mutex
	got map[netip.Addr]int
}

func (r *replies) deliver(rp Reply) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.got == nil {
		r.got = map[netip.Addr]int{}
	}
	r.got[rp.Host]++
}

func (r *replies) count(a netip.Addr) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.got[a]
}

// A probe through isp1 leaves through isp1 only: the host that only isp2
// reaches never answers it, although the main table's default goes
// through isp2 (where an unbound probe would get its answer).
func TestICMPProberBound(t *testing.T) {
	if !netnstest.Run(t, "fop") {
		return
	}
	twoISPs(t)
	both, isp2Only := netip.MustParseAddr("192.0.2.253"), netip.MustParseAddr("203.0.113.253")
	k, err := NewNetlinkKernel(DefaultProtocol)
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	l1, err := k.Link(context.Background(), "wan0")
	if err != nil {
		t.Fatal(err)
	}
	l2, _ := k.Link(context.Background(), "wan1")
	if want := netip.MustParsePrefix("198.51.100.1/28"); !l1.Up || l1.Addr != want || l1.Gateway != netip.MustParseAddr("198.51.100.14") {
		t.Errorf("wan0: %+v, want up, %v, the gateway of its table (ours)", l1, want)
	}
	if l2.Gateway != netip.MustParseAddr("203.0.113.78") {
		t.Errorf("wan1: gateway %v, want the main table's", l2.Gateway)
	}

	var r1, r2 replies
	p1, err := ICMPProbers{}.Open(Uplink{Interface: "wan0"}, l1, r1.deliver)
	if err != nil {
		t.Fatal(err)
	}
	defer p1.Close()
	p2, err := ICMPProbers{}.Open(Uplink{Interface: "wan1"}, l2, r2.deliver)
	if err != nil {
		t.Fatal(err)
	}
	defer p2.Close()
	deadline := time.Now().Add(10 * time.Second)
	for seq := uint16(1); r1.count(both) < 3 || r2.count(isp2Only) < 3; seq++ {
		if time.Now().After(deadline) {
			t.Fatalf("replies: isp1 %v, isp2 %v", r1.got, r2.got)
		}
		for _, h := range []netip.Addr{both, isp2Only} {
			if err := p1.Send(h, seq); err != nil {
				t.Logf("isp1 send %v: %v", h, err)
			}
			p2.Send(h, seq)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Both probers saw replies (so either would have seen the isp2-only
	// host's): through isp1 it never answered.
	if n := r1.count(isp2Only); n != 0 {
		t.Errorf("the host only isp2 reaches answered %d probes through isp1", n)
	}
	// Link down is signalled and read.
	for len(k.Changes()) > 0 {
		<-k.Changes()
	}
	lk, _ := netlink.LinkByName("wan0")
	netlink.LinkSetDown(lk)
	select {
	case <-k.Changes():
	case <-time.After(5 * time.Second):
		t.Fatal("no change signalled for the link going down")
	}
	if l, _ := k.Link(context.Background(), "wan0"); l.Up {
		t.Errorf("wan0 reads up after it went down: %+v", l)
	}
}

func TestUplinkFlows(t *testing.T) {
	f := uplinkFlows{addr: netip.MustParseAddr("198.51.100.1"), mark: 0x100, mask: 0xff00}
	flow := func(origSrc, replyDst string, mark uint32) *netlink.ConntrackFlow {
		return &netlink.ConntrackFlow{Forward: netlink.IPTuple{SrcIP: net.ParseIP(origSrc)}, Reverse: netlink.IPTuple{DstIP: net.ParseIP(replyDst)}, Mark: mark}
	}
	for _, tc := range []struct {
		flow *netlink.ConntrackFlow
		want bool
	}{
		{flow("10.1.0.2", "198.51.100.1", 0), true},           // masqueraded to the uplink
		{flow("198.51.100.1", "198.51.100.1", 0), false},      // the router's own (IKE, probes)
		{flow("10.1.0.2", "203.0.113.65", 0x100), true},       // marked for the uplink
		{flow("10.1.0.2", "203.0.113.65", 0x200), false},      // another uplink's
		{flow("10.1.0.2", "203.0.113.65", 0x200|0x42), false}, // charon's bit does not count
	} {
		if got := f.MatchConntrackFlow(tc.flow); got != tc.want {
			t.Errorf("%v: match %v, want %v", tc.flow, got, tc.want)
		}
	}
}
