package integration

import (
	"context"
	"fmt"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/opendmvpn/dmvpn/integration/dphelper"
	"github.com/opendmvpn/dmvpn/integration/vm"
	"github.com/opendmvpn/dmvpn/lab/testbed"
)

const greKey = 1001

var (
	nbmaA = netip.MustParseAddr("198.51.100.1")
	nbmaB = netip.MustParseAddr("203.0.113.1")
	tunA  = netip.MustParseAddr("10.0.0.1")
	tunB  = netip.MustParseAddr("10.0.0.2")
)

// needRoot skips a test that needs a testbed when the machine cannot
// build one, saying what is missing.
func needRoot(t *testing.T, tools ...string) {
	t.Helper()
	testbed.SkipUnavailable(t, tools...)
}

// pair is two spokes with one LAN host each and the userspace data plane
// between them, with static neighbour entries.
type pair struct {
	tb     *testbed.Testbed
	a, b   *dphelper.Instance
	ha, hb *testbed.Node
}

func twoSpokes(t *testing.T, be string, mutate func(a, b *dphelper.Config, spec *testbed.Spec)) *pair {
	t.Helper()
	// In a VM guest the first start reads the test binary over the 9p
	// share, slow on a busy host.
	limit := 30 * time.Second
	if vm.InGuest() {
		limit = 2 * time.Minute
	}
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	spec := testbed.Spec{Sites: []testbed.Site{
		{Name: "spa", Kind: testbed.Spoke, NBMA: netip.PrefixFrom(nbmaA, 24), LAN: netip.MustParsePrefix("10.1.0.1/24"), Hosts: 1},
		{Name: "spb", Kind: testbed.Spoke, NBMA: netip.PrefixFrom(nbmaB, 24), LAN: netip.MustParsePrefix("10.2.0.1/24"), Hosts: 1},
	}}
	ca := dphelper.Config{Name: "dmvpn0", Key: greKey, Prefix: "10.0.0.1/24",
		Neighbors: map[string]string{tunB.String(): nbmaB.String()},
		Routes:    []dphelper.Route{{Dst: "10.2.0.0/24", Via: tunB.String()}}}
	cb := dphelper.Config{Name: "dmvpn0", Key: greKey, Prefix: "10.0.0.2/24",
		Neighbors: map[string]string{tunA.String(): nbmaA.String()},
		Routes:    []dphelper.Route{{Dst: "10.1.0.0/24", Via: tunA.String()}}}
	ca.Backend, cb.Backend = be, be
	if mutate != nil {
		mutate(&ca, &cb, &spec)
	}
	tb, err := testbed.New(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := tb.Close(); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	p := &pair{tb: tb, ha: tb.Node("spa-h1"), hb: tb.Node("spb-h1")}
	if p.a, err = dphelper.Start(ctx, tb.Node("spa"), ca); err != nil {
		t.Fatal(err)
	}
	if p.b, err = dphelper.Start(ctx, tb.Node("spb"), cb); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("spa data plane output:\n%s", p.a.Proc.Output())
			t.Logf("spb data plane output:\n%s", p.b.Proc.Output())
		}
	})
	return p
}

// ping runs ping in a node and fails the test unless every reply arrives.
func ping(t *testing.T, n *testbed.Node, dst netip.Addr, extra ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	args := append([]string{"ping", "-c", "3", "-i", "0.2", "-W", "2"}, extra...)
	out, err := n.Run(ctx, append(args, dst.String())...)
	if err != nil {
		t.Fatalf("ping %s from %s: %v\n%s", dst, n.Name, err, out)
	}
	if !regexp.MustCompile(`3 received`).MatchString(out) {
		t.Fatalf("ping %s from %s lost packets:\n%s", dst, n.Name, out)
	}
	return out
}

func TestTunnelEndpointsPing(t *testing.T) {
	needRoot(t, "ping")
	forEachBackend(t, testTunnelEndpointsPing)
}

func testTunnelEndpointsPing(t *testing.T, be string) {
	p := twoSpokes(t, be, nil)
	ping(t, p.tb.Node("spa"), tunB)
	ping(t, p.tb.Node("spb"), tunA)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := p.a.Counters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if c.TxPackets < 3 || c.RxPackets < 3 {
		t.Errorf("spa counters tx %d rx %d, want ≥ 3 each", c.TxPackets, c.RxPackets)
	}
	if be != "kernel" && (len(c.Peers) != 1 || c.Peers[0].NBMA != nbmaB || c.Peers[0].TxPackets < 3) {
		t.Errorf("spa per-peer counters = %+v", c.Peers)
	}
	// On ebpf the BPF programs carry the pings (the first may take the
	// slow path while the underlay's neighbour resolves).
	if be == "ebpf" && (c.FastTxPackets < 2 || c.FastRxPackets < 3) {
		t.Errorf("spa fast path tx %d rx %d, want the pings there", c.FastTxPackets, c.FastRxPackets)
	}
	if len(p.a.Info.NBMA) != 1 || p.a.Info.NBMA[0] != nbmaA {
		t.Errorf("Info.NBMA = %v, want [%s] (the uplink)", p.a.Info.NBMA, nbmaA)
	}
	if p.a.Info.MTU != 1472 {
		t.Errorf("tunnel MTU %d, want 1472 (1500 underlay - 28)", p.a.Info.MTU)
	}
	if !strings.Contains(p.a.Reason, be) || p.a.Info.Backend != be {
		t.Errorf("backend reason %q", p.a.Reason)
	}
}

func TestLANHostsThroughTunnel(t *testing.T) {
	needRoot(t, "ping")
	forEachBackend(t, testLANHostsThroughTunnel)
}

func testLANHostsThroughTunnel(t *testing.T, be string) {
	p := twoSpokes(t, be, nil)
	ping(t, p.ha, p.hb.Addr)
	ping(t, p.hb, p.ha.Addr)
	// full-size packets cross without fragmentation
	ping(t, p.ha, p.hb.Addr, "-s", "1400", "-M", "do")
}

var reNHRP = regexp.MustCompile(`^NHRP `)

func hexOf(s string) string { return fmt.Sprintf("%x", s) }
