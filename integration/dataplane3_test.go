package integration

import (
	"context"
	"encoding/json"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/opendmvpn/dmvpn/integration/dphelper"
	"github.com/opendmvpn/dmvpn/lab/testbed"
)

// TestChecksumAndSequence sends with the optional GRE checksum and
// sequence number from one side; the other verifies and accepts them, and
// the tunnel MTU shrinks by their 8 bytes.
func TestChecksumAndSequence(t *testing.T) {
	needRoot(t, "ping")
	forEachBackend(t, testChecksumAndSequence)
}

func testChecksumAndSequence(t *testing.T, be string) {
	// The kernel leaves the GRE checksum of what it sends to be finished
	// by the NIC (CHECKSUM_PARTIAL), and veth never finishes it: on this
	// testbed the kernel backend can only be tested with sequence numbers.
	csum := be == "userspace"
	p := twoSpokes(t, be, func(a, b *dphelper.Config, _ *testbed.Spec) { a.Checksum, a.Sequence = csum, true })
	ping(t, p.ha, p.hb.Addr)
	ping(t, p.ha, p.hb.Addr, "-s", "1400")
	wantMTU := 1464
	if !csum {
		wantMTU = 1468
	}
	if p.a.Info.MTU != wantMTU {
		t.Errorf("tunnel MTU with checksum %v and sequence numbers %d, want %d", csum, p.a.Info.MTU, wantMTU)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := p.b.Counters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if c.RxPackets < 6 || len(c.Drops) != 0 {
		t.Fatalf("spb rx %d, drops %v", c.RxPackets, c.Drops)
	}
}

// TestIPv6OverTunnel carries IPv6 between the tunnel endpoints (GRE
// protocol 0x86DD) over the IPv4 NBMA network.
func TestIPv6OverTunnel(t *testing.T) {
	needRoot(t, "ping")
	forEachBackend(t, testIPv6OverTunnel)
}

func testIPv6OverTunnel(t *testing.T, be string) {
	p := twoSpokes(t, be, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, n := range []struct {
		node *testbed.Node
		addr string
	}{{p.tb.Node("spa"), "fd00::1/64"}, {p.tb.Node("spb"), "fd00::2/64"}} {
		if _, err := n.node.Run(ctx, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0", "net.ipv6.conf.dmvpn0.disable_ipv6=0"); err != nil {
			t.Fatal(err)
		}
		if err := n.node.IP("addr add " + n.addr + " dev dmvpn0 nodad"); err != nil {
			t.Fatal(err)
		}
	}
	// IPv6 neighbours need IPv6 on the device (the kernel keeps them in
	// its ND table), so they are added now.
	if err := p.a.SetNeighbor(ctx, netip.MustParseAddr("fd00::2"), nbmaB); err != nil {
		t.Fatal(err)
	}
	if err := p.b.SetNeighbor(ctx, netip.MustParseAddr("fd00::1"), nbmaA); err != nil {
		t.Fatal(err)
	}
	out, err := p.tb.Node("spa").Run(ctx, "ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", "fd00::2")
	if err != nil || !strings.Contains(out, "3 received") {
		t.Fatalf("IPv6 ping: %v\n%s", err, out)
	}
}

func TestGROSuperPackets(t *testing.T) {
	needRoot(t, "iperf3", "ethtool")
	forEachBackend(t, testGROSuperPackets, "userspace", "ebpf")
}

func testGROSuperPackets(t *testing.T, be string) {
	p := twoSpokes(t, be, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	inet, spb := p.tb.Node("inet"), p.tb.Node("spb")
	for _, d := range []struct {
		n   *testbed.Node
		dev string
	}{{inet, "to-spb"}, {spb, "wan0"}} {
		if _, err := d.n.Run(ctx, "ethtool", "-K", d.dev, "tso", "off", "gso", "off", "gro", "on"); err != nil {
			t.Fatal(err)
		}
		if _, err := d.n.Run(ctx, "sh", "-c", "echo 50000 > /sys/class/net/"+d.dev+"/gro_flush_timeout"); err != nil {
			t.Fatal(err)
		}
	}
	bps := iperf(ctx, t, p.ha, p.hb, 2)
	c, err := p.b.Counters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%.0f Mbit/s, %d GRO super-packets of %d received (%d by the BPF fast path), drops %v", bps/1e6, c.RxSuper, c.RxPackets, c.FastRxPackets, c.Drops)
	// ebpf decapsulates the coalesced GRE in BPF (the kernel segments it
	// again where needed); userspace writes it whole to the TUN.
	if be == "userspace" && c.RxSuper == 0 {
		t.Fatalf("the underlay coalesced nothing (RxSuper 0): the test did not exercise super-packets")
	}
	if be == "ebpf" && c.FastRxPackets == 0 {
		t.Fatalf("the fast path decapsulated nothing")
	}
	if bps < 50e6 {
		t.Fatalf("TCP through coalesced GRE at %.1f Mbit/s: stalled", bps/1e6)
	}
}

// iperf runs one TCP stream of iperf3 for seconds from client to server
// and returns the bits per second received.
func iperf(ctx context.Context, t testing.TB, client, server *testbed.Node, seconds int) float64 {
	t.Helper()
	srv, err := server.Start(testbed.ProcSpec{Name: "iperf3", Args: []string{"iperf3", "-s", "-1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	var out string
	for i := 0; i < 30; i++ { // the server needs a moment to listen
		// iperf3 -J may exit 0 on "connection refused", saying so only
		// in its JSON.
		if out, err = client.Run(ctx, "iperf3", "-c", server.Addr.String(), "-t", strconv.Itoa(seconds), "-J"); err == nil && !strings.Contains(out, `"error"`) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("iperf3: %v\n%s", err, out)
	}
	var res struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("iperf3 output: %v\n%s", err, out)
	}
	return res.End.SumReceived.BitsPerSecond
}
