package integration

import (
	"context"
	"encoding/hex"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/opendmvpn/dmvpn/integration/vm"
	"github.com/opendmvpn/dmvpn/lab/testbed"
)

// TestIPsecEbpf runs the NHRP scenario with IPsec (userspace ESP) on the
// ebpf data plane: the BPF fast path hands GRE to charon's ipsec TUN and
// takes it back from there, nothing crosses the internet in clear, not
// even while the hub's charon is dead, and plaintext GRE arriving on an
// NBMA interface is dropped by the fast path and counted.
func TestIPsecEbpf(t *testing.T) {
	requireTestbed(t)
	requireCharon(t)
	needBPF(t)
	p := newTestPKI(t)
	t.Cleanup(func() { p.dumpLogs() })
	var all *capture
	x := newE2EWith(t, "ebpf", p.ipsecExtra(), func(tb *testbed.Testbed) { all = startFullCapture(t, tb.Node("inet")) })

	d := waitFor(t, 30*time.Second, "all spokes registered over IPsec", x.allRegistered)
	t.Logf("all three spokes registered over IPsec on ebpf (%v after the last daemon answered)", d.Round(time.Millisecond))

	// Spoke to spoke over the shortcut and its SA, through the fast path.
	h1, h2 := x.hosts[0], x.hosts[1]
	if _, err := pingTTL(t, h1, h2.Addr); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the shortcuts between LAN 1 and LAN 2", func() bool {
		_, ok1 := x.shortcut(0, 1)
		_, ok2 := x.shortcut(1, 0)
		return ok1 && ok2
	})
	s2 := netip.MustParseAddr("198.51.100.65")
	waitFor(t, 10*time.Second, "the SA between spoke 1 and spoke 2", func() bool { return x.spokes[0].saUpWith(s2) })
	// charon routes into its TUN once the SA is installed (and again
	// when a duplicate SA of both initiating goes): until then the slow
	// path carries the packets. Once the fast path carries one, it
	// carries them all.
	waitFor(t, 10*time.Second, "spoke 1's fast path to carry a ping into charon's TUN", func() bool {
		before := x.spokes[0].traffic().Dataplane.FastTxPackets
		pingTTL(t, h1, h2.Addr)
		return x.spokes[0].traffic().Dataplane.FastTxPackets > before
	})
	tx0, rx0 := x.spokes[0].traffic().Dataplane, x.spokes[1].traffic().Dataplane
	for i := 0; i < 10; i++ {
		if ttl, err := pingTTL(t, h1, h2.Addr); err != nil || ttl != 62 {
			t.Fatalf("ping %d over the shortcut: TTL %d, %v", i, ttl, err)
		}
	}
	tx1, rx1 := x.spokes[0].traffic().Dataplane, x.spokes[1].traffic().Dataplane
	if n := tx1.FastTxPackets - tx0.FastTxPackets; n < 10 {
		t.Errorf("spoke 1's fast path sent %d packets into charon's TUN, want ≥ 10; its counters moved %v", n, statDiff(tx0.FastPath, tx1.FastPath))
	}
	if n := rx1.FastRxPackets - rx0.FastRxPackets; n < 10 {
		t.Errorf("spoke 2's fast path took %d packets from charon's TUN, want ≥ 10; its counters moved %v", n, statDiff(rx0.FastPath, rx1.FastPath))
	}

	// Plaintext GRE data and NHRP from spoke 1's address straight to the
	// hub: the fast path drops it on the NBMA interface and counts it.
	marker := []byte("dmvpn-plaintext-probe")
	inner := icmpPacket(t, "10.1.0.99", "10.0.0.1", marker)
	inj := vm.GoBuild(t, "./integration/cmd/greinject")
	before := x.hub.traffic().Dataplane.Drops["ingress"]
	for _, pl := range []struct{ proto, payload string }{{"0x0800", hex.EncodeToString(inner)}, {"0x2001", hex.EncodeToString(marker)}} {
		if out, err := x.tb.Node("inet").Run(context.Background(), inj, "-src", "198.51.100.1", "-dst", "192.0.2.1",
			"-key", "42", "-proto", pl.proto, "-payload", pl.payload, "-n", "20"); err != nil {
			t.Fatalf("greinject: %v: %s", err, out)
		}
	}
	waitFor(t, 5*time.Second, "the hub to drop the plaintext GRE", func() bool {
		return x.hub.traffic().Dataplane.Drops["ingress"] >= before+40
	})

	// The hub's charon killed while spoke 1 keeps sending to the hub: the
	// fast path must not fall back to clear GRE; every spoke comes back.
	pinger, err := x.tb.Node("s1").Start(testbed.ProcSpec{Name: "ping", Args: []string{"ping", "-q", "-c", "150", "-i", "0.02", "-W", "1", "10.0.0.1"}})
	if err != nil {
		t.Fatal(err)
	}
	back := x.killHubCharon(t, p)
	t.Logf("hub charon SIGKILL: all spokes registered again %v later", back.Round(time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pinger.Wait(ctx)
	if _, err := pingTTL(t, x.tb.Node("s1"), netip.MustParseAddr("10.0.0.1")); err != nil {
		t.Errorf("spoke 1 cannot reach the hub after the recovery: %v", err)
	}

	wc := countWire(t, all.stop(), marker, nbmaOf(x, 0), nbmaOf(x, 1))
	t.Logf("internet router saw %d IKE/ESP packets, %d GRE (%d of them injected), %d other", wc.ike, wc.gre, wc.injected, wc.other)
	if wc.gre != wc.injected {
		t.Errorf("%d GRE packets in clear on the wire that were not injected", wc.gre-wc.injected)
	}
	if wc.spokeToSpoke == 0 {
		t.Error("no IKE/ESP between spoke 1 and spoke 2 on the wire")
	}
}

// icmpPacket is an IPv4 ICMP echo request carrying payload.
func icmpPacket(t *testing.T, src, dst string, payload []byte) []byte {
	t.Helper()
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolICMPv4, SrcIP: net.ParseIP(src).To4(), DstIP: net.ParseIP(dst).To4()}
	icmp := &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeEchoRequest, 0), Id: 7, Seq: 1}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ip, icmp, gopacket.Payload(payload)); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}
