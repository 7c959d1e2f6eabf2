package integration

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/opendmvpn/dmvpn/integration/vm"
	"github.com/opendmvpn/dmvpn/lab/testbed"
)

// TestUplinkFailover: s1 loses isp1 both ways — an nftables drop on the
// internet router with the link up, then the link down — and gets it
// back, with IPsec (userspace ESP) and s1's firewall in force:
//   - the default route moves to isp2 and s1's LAN reaches the internet
//     through isp2;
//   - s1's SAs are set up from its isp2 address, it registers from it (the
//     hub moves its unique binding, proven by the certificate), and s2's
//     shortcut to s1's LAN comes back at that address;
//   - the LAN's flow established through isp1 before the cut goes on
//     through isp2: its connection, masqueraded to isp1's address, is
//     deleted, so its next packet starts afresh through isp2;
//   - the probe host only isp2 reaches never answers through isp1;
//   - restored, isp1 carries the default again and s1 registers from it,
//     while a flow established through isp2 during the outage stays on
//     isp2 (connection marks) and a new one takes isp1;
//   - no GRE crosses either internet router in clear, all along.
func TestUplinkFailover(t *testing.T) {
	r := newFailoverRig(t, "userspace", false)
	wire1 := startFullCapture(t, r.tb.Node("inet"))
	wire2 := startTcpdump(t, r.tb.Node("inet2"), "tcpdump-all2", "all2.pcap", "any", "ip")
	const injected = 3
	r.injectGRE(t, injected) // what the captures must see: the proof they would see ours

	t.Run("probe host only through isp2", func(t *testing.T) {
		waitFor(t, 10*time.Second, "isp2 to hear from the isp2-only host", func() bool {
			return r.uplinks().Uplinks[1].Hosts[2].Received > 3
		})
		u := r.uplinks().Uplinks
		if u[0].State != "up" || u[0].Hosts[2].Address != testbed.ISP2Host || u[0].Hosts[2].Received != 0 || u[0].Hosts[0].Received == 0 {
			t.Errorf("isp1 heard from the host only isp2 reaches: %+v", u[0])
		}
	})

	t.Run("no flap at 20% loss", func(t *testing.T) {
		// 20% of the packets to and from s1 through isp1 dropped at random,
		// each way, for 60 probe rounds: isp1 stays up (its outages are
		// found by the cuts below, so the monitor would have seen one).
		inet := r.tb.Node("inet")
		rules := `table inet dmvt_loss {
	counter dropped {}
	chain pre { type filter hook prerouting priority -300; policy accept; iifname "to-s1" numgen random mod 5 == 0 counter name "dropped" drop; }
	chain post { type filter hook postrouting priority 300; policy accept; oifname "to-s1" numgen random mod 5 == 0 counter name "dropped" drop; }
}
`
		cmd := exec.Command("ip", "netns", "exec", inet.NS, "nft", "-f", "-")
		cmd.Stdin = strings.NewReader(rules)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("nft: %v: %s", err, out)
		}
		defer inet.Run(context.Background(), "nft", "delete", "table", "inet", "dmvt_loss")
		u := r.uplinks().Uplinks[0]
		waitFor(t, 60*time.Second, "60 probe rounds under loss", func() bool { return r.uplinks().Uplinks[0].Rounds >= u.Rounds+60 })
		after := r.uplinks().Uplinks[0]
		out, _ := inet.Run(context.Background(), "nft", "list", "counter", "inet", "dmvt_loss", "dropped")
		t.Logf("isp1 after 60 rounds at 20%% loss each way: %s, %d changes, hosts' loss %.0f%%/%.0f%%; %s", after.State,
			after.Transitions-u.Transitions, after.Hosts[0].Loss, after.Hosts[1].Loss, strings.Join(strings.Fields(out), " "))
		if strings.Contains(out, "packets 0 ") {
			t.Fatal("nothing was dropped: the loss was not applied")
		}
		if after.Transitions != u.Transitions || after.State != "up" {
			t.Errorf("isp1 flapped at 20%% loss: %d changes, now %s (%s)", after.Transitions-u.Transitions, after.State, after.Reason)
		}
	})

	for _, mode := range []testbed.CutMode{testbed.CutDrop, testbed.CutLink} {
		t.Run("cut "+string(mode), func(t *testing.T) {
			r.t = t
			defer func() { r.t = nil }()
			ft := r.failover(mode)
			t.Logf("isp1 cut (%s): %v", mode, ft)
			if !slices.Equal(r.via(), []string{"isp2"}) {
				t.Errorf("default via %v, want isp2", r.via())
			}
			// The flow established through isp1 (its connection seen
			// before the cut) left no connection masqueraded to isp1.
			if n := r.natted(foS1ISP1); n != 0 {
				t.Errorf("%d connections of the LAN still masqueraded to isp1's address after the failover", n)
			}
			for _, sa := range r.s1.crypto().SAs {
				if sa.Up() && sa.LocalHost != foS1ISP2 {
					t.Errorf("an SA up from %s (with %s) after the failover", sa.LocalHost, sa.RemoteHost)
				}
			}
			if !r.hub.saUpWith(foS1ISP2) {
				t.Error("the hub has no SA with s1's isp2 address")
			}
			// s2's side of the shortcut follows too (it may relay through
			// the hub while it resolves s1's new address again).
			var ttl int
			var perr error
			waitFor(t, 5*time.Second, "s2's LAN reaching s1's over the new shortcut (TTL 62)", func() bool {
				ttl, perr = pingTTL(t, r.tb.Node("s2-h1"), r.tb.Node("s1-h1").Addr)
				if perr != nil || ttl != 62 {
					t.Logf("s2's LAN to s1's: TTL %d, %v", ttl, perr)
				}
				return perr == nil && ttl == 62
			})
			// The probes go on through isp1's own table while it is down.
			rounds := r.uplinks().Uplinks[0].Rounds
			waitFor(t, 5*time.Second, "isp1 probed while down", func() bool { return r.uplinks().Uplinks[0].Rounds > rounds+4 })

			// A flow started through isp2 during the outage.
			during := pingEvery(t, r.tb.Node("s1-h1"), foServer, "0.05")
			defer during.Stop()
			b2 := r.server.value("isp2")
			waitFor(t, 5*time.Second, "the outage's flow to reach the server through isp2", func() bool { return r.server.value("isp2") > b2+5 })

			r.restore("isp1")
			r.settleOnISP1()
			waitFor(t, 10*time.Second, "s2's shortcut back at s1's isp1 address", func() bool { return r.shortcutNBMA() == foS1ISP1 })
			// The outage's flow stays on isp2; a new one takes isp1.
			a1, a2 := r.server.value("isp1"), r.server.value("isp2")
			if err := pingOut(r.tb.Node("s1-h1"), foServer); err != nil {
				t.Errorf("a new flow after the restore: %v", err)
			}
			waitFor(t, 5*time.Second, "the outage's flow to go on through isp2", func() bool { return r.server.value("isp2") > a2+10 })
			if got := r.server.value("isp1"); got < a1+1 {
				t.Errorf("the new flow did not reach the server through isp1 (%d → %d)", a1, got)
			}
			during.Stop()
			if out := during.Output(); strings.Count(out, "bytes from") < 20 {
				t.Errorf("the outage's flow lost its replies across the restore:\n%s", out)
			}
			checkNoLoss(t, during.Output(), 3)
		})
	}

	t.Run("no GRE in clear", func(t *testing.T) {
		r.injectGRE(t, injected) // the captures still see GRE at the end
		checkNoClearGRE(t, map[string]string{"inet": wire1.stop(), "inet2": wire2.stop()}, 2*injected)
	})
}

// checkNoLoss fails when a ping's output shows more than n replies
// missing in a row (its icmp_seq numbers jump).
func checkNoLoss(t testing.TB, out string, n int) {
	t.Helper()
	last := -1
	for _, line := range strings.Split(out, "\n") {
		i := strings.Index(line, "icmp_seq=")
		if i < 0 || !strings.Contains(line, "bytes from") {
			continue
		}
		var seq int
		fmt.Sscanf(line[i+len("icmp_seq="):], "%d", &seq)
		if last >= 0 && seq-last-1 > n {
			t.Errorf("%d replies missing in a row (icmp_seq %d → %d)", seq-last-1, last, seq)
		}
		last = seq
	}
}

// TestUplinkBalance: both uplinks preferred alike, weighted 3:1 — new
// flows from s1's LAN spread over both (about three in four through
// isp1), each masqueraded to its uplink's address. Reloads change the
// uplinks live: isp2 removed (every new flow through isp1), then back
// weighted 1:3 (about one in four through isp1 once isp2's probes prove
// it, masqueraded again: the firewall follows). With isp2 cut, every new
// flow takes isp1.
func TestUplinkBalance(t *testing.T) {
	r := newFailoverRig(t, "userspace", true)
	waitFor(t, 10*time.Second, "a multipath default over both uplinks", func() bool {
		return slices.Equal(r.via(), []string{"isp1", "isp2"})
	})
	// IKE starts from the active uplink's address (the NBMA address GRE
	// leaves from), not from the kernel's multipath pick of a source.
	if u := r.uplinks(); len(u.NBMA) == 0 || u.NBMA[0] != foS1ISP1 {
		t.Fatalf("s1's NBMA addresses %v, want isp1's %v first", u.NBMA, foS1ISP1)
	}
	waitFor(t, 10*time.Second, "s1's SAs up, every one from isp1's address", func() bool {
		up := 0
		for _, sa := range r.s1.crypto().SAs {
			if !sa.Up() {
				continue
			}
			if sa.LocalHost != foS1ISP1 {
				t.Fatalf("an SA up from %s (with %s) with both uplinks balanced, want from %s", sa.LocalHost, sa.RemoteHost, foS1ISP1)
			}
			up++
		}
		return up > 0
	})
	flows := vm.GoBuild(t, "./integration/cmd/udpflows")
	counts := countAt(t, r.tb.Node("inet"), "input", "dmvt_flows", map[string]string{
		"isp1": fmt.Sprintf(`iifname "to-s1" ip saddr %s udp dport 9`, foS1ISP1),
		"isp2": fmt.Sprintf(`iifname "to-inet2" ip saddr %s udp dport 9`, foS1ISP2),
	})
	const n = 400
	send := func() (uint64, uint64) {
		t.Helper()
		b1, b2 := counts.value("isp1"), counts.value("isp2")
		if out, err := r.tb.Node("s1-h1").Run(context.Background(), flows, "-dst", netip.AddrPortFrom(foServer, 9).String(), "-n", fmt.Sprint(n)); err != nil {
			t.Fatalf("udpflows: %v: %s", err, out)
		}
		var d1, d2 uint64
		waitFor(t, 10*time.Second, "every flow at the server", func() bool {
			d1, d2 = counts.value("isp1")-b1, counts.value("isp2")-b2
			return d1+d2 >= n
		})
		return d1, d2
	}
	d1, d2 := send()
	share := float64(d1) / float64(d1+d2)
	t.Logf("%d new flows: %d through isp1, %d through isp2 (%.0f%% through isp1, weights 3:1)", n, d1, d2, 100*share)
	if share < 0.6 || share > 0.9 {
		t.Errorf("isp1 took %.0f%% of the new flows, want about 75%% (weights 3:1)", 100*share)
	}

	// Reloads: isp2 removed, then back with the weights reversed.
	changes, err := r.s1.reload(s1UplinksYAML("userspace", 1, 0, 0) + r.s1PKI)
	if err != nil || !slices.Equal(changes, []string{"uplink isp1 changed", "uplink isp2 on wan1 removed"}) {
		t.Fatalf("reload without isp2: %v, changes %q", err, changes)
	}
	if via := r.via(); !slices.Equal(via, []string{"isp1"}) {
		t.Errorf("default via %v once the reload without isp2 returned, want isp1", via)
	}
	if d1, d2 = send(); d2 != 0 {
		t.Errorf("%d new flows through isp2 after its removal", d2)
	}
	changes, err = r.s1.reload(s1UplinksYAML("userspace", 1, 3, 0) + r.s1PKI)
	if err != nil || !slices.Equal(changes, []string{"uplink isp2 on wan1 added"}) {
		t.Fatalf("reload with isp2 back: %v, changes %q", err, changes)
	}
	waitFor(t, 10*time.Second, "isp2 up and in the multipath default again", func() bool {
		return slices.Equal(r.via(), []string{"isp1", "isp2"})
	})
	d1, d2 = send()
	share = float64(d1) / float64(d1+d2)
	t.Logf("after the reloads, %d new flows: %d through isp1, %d through isp2 (%.0f%% through isp1, weights 1:3)", n, d1, d2, 100*share)
	if share < 0.1 || share > 0.4 {
		t.Errorf("isp1 took %.0f%% of the new flows, want about 25%% (weights 1:3)", 100*share)
	}
	r.cut("isp2", testbed.CutDrop)
	waitFor(t, 10*time.Second, "the default through isp1 alone", func() bool { return slices.Equal(r.via(), []string{"isp1"}) })
	if u := r.uplinks(); u.NBMA[0] != foS1ISP1 {
		t.Errorf("the NBMA address moved when the other uplink went down: %v", u.NBMA)
	}
	d1, d2 = send()
	if d2 != 0 {
		t.Errorf("%d new flows through isp2 while it is cut", d2)
	}
}

// TestUplinkFailoverKernelInVM runs the failover on the production path —
// the kernel data plane (ip_gre) with kernel ESP (xfrm, transport mode) —
// in a VM with Debian's kernel when this one lacks ip_gre: isp1 cut both
// ways under LAN traffic, each time restored; the default route, the SAs
// and the registration move to isp2's address and back, s2's LAN reaches
// s1's (through the hub or a shortcut: under TCG both spokes' IKE at once
// can take longer than the test waits; the namespace test checks the
// shortcut), and no GRE crosses either internet router in clear.
func TestUplinkFailoverKernelInVM(t *testing.T) {
	t.Parallel() // boots a VM: let it overlap the other VM tests
	if needVM(t) {
		requireCharon(t)
		runGuestWithGREInject(t)
		return
	}
	needKernelGRE(t)
	requireCharon(t)
	// Loaded up front: autoloading them one by one from the firewall's
	// first apply takes more than dmvpnd's start is given under TCG.
	modprobe(t, "esp4", "xfrm_user", "nf_conntrack_netlink", "nf_tables", "nft_ct", "nft_chain_nat",
		"nft_masq", "nft_nat", "nft_reject_inet", "nft_limit", "nft_log", "nft_xfrm", "nft_fib_inet", "nfnetlink_log")
	r := newFailoverRig(t, "kernel", false)
	wire1 := startFullCapture(t, r.tb.Node("inet"))
	wire2 := startTcpdump(t, r.tb.Node("inet2"), "tcpdump-all2", "all2.pcap", "any", "ip")
	const injected = 3
	r.injectGRE(t, injected)
	for _, mode := range []testbed.CutMode{testbed.CutDrop, testbed.CutLink} {
		ft := r.failover(mode)
		t.Logf("isp1 cut (%s; kernel data plane, kernel ESP, in a VM under TCG): %v", mode, ft)
		for _, sa := range r.s1.crypto().SAs {
			if sa.Up() && sa.LocalHost != foS1ISP2 {
				t.Errorf("%s: an SA up from %s (with %s) after the failover", mode, sa.LocalHost, sa.RemoteHost)
			}
		}
		waitFor(t, slowVM(15*time.Second), "s2's LAN to reach s1's after the failover", func() bool {
			return pingOut(r.tb.Node("s2-h1"), r.tb.Node("s1-h1").Addr) == nil
		})
		r.restore("isp1")
		r.settleOnISP1()
		if err := pingOut(r.tb.Node("s1-h1"), foServer); err != nil {
			t.Errorf("%s: s1's LAN to the internet after the restore: %v", mode, err)
		}
	}
	r.injectGRE(t, injected)
	checkNoClearGRE(t, map[string]string{"inet": wire1.stop(), "inet2": wire2.stop()}, 2*injected)
}
