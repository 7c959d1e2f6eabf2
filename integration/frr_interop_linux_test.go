package integration

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/opendmvpn/dmvpn/integration/vm"
	"github.com/opendmvpn/dmvpn/lab/testbed"
	"github.com/opendmvpn/dmvpn/nhrp"
	"github.com/opendmvpn/dmvpn/nhrp/wire"
)

// TestFRRInterop puts dmvpnd and FRR's nhrpd (Debian's FRR 8.4, no IPsec)
// in one DMVPN, in a VM with Debian's kernel (FRR drives ip_gre), our
// nodes on the kernel data plane: with our hub, with FRR's hub, mixed
// spokes, and one of our spokes on the userspace data plane on the host,
// reaching the VM through a TAP. Every NHRP packet is captured; tshark
// must dissect each cleanly and the codec re-encode each byte for byte,
// FRR's included.
func TestFRRInterop(t *testing.T) {
	t.Parallel()
	t.Run("OurHub", func(t *testing.T) {
		t.Parallel()
		if runInVM(t, vmConfig()) {
			return
		}
		testOurHubFRRSpokes(t)
	})
	t.Run("FRRHub", func(t *testing.T) {
		t.Parallel()
		if needVM(t) {
			frrHubHostHalf(t)
			return
		}
		testFRRHubOurSpokes(t)
	})
}

// Our hub; FRR spokes f1 (unique registrations, holding time 60 s) and f2
// (no-unique, FRR's default holding time); our spoke s3.
var ourHubMembers = []member{
	{name: "hub", impl: ours, hub: true, nbma: netip.MustParsePrefix("192.0.2.1/26"), tunnel: hubTunnel},
	{name: "f1", impl: frr, nbma: netip.MustParsePrefix("198.51.100.1/26"), tunnel: netip.MustParseAddr("10.0.0.11"), lan: netip.MustParsePrefix("10.1.0.0/24"), holdTime: 60},
	{name: "f2", impl: frr, nbma: netip.MustParsePrefix("198.51.100.65/26"), tunnel: netip.MustParseAddr("10.0.0.12"), lan: netip.MustParsePrefix("10.2.0.0/24"), noUnique: true},
	{name: "s3", impl: ours, nbma: netip.MustParsePrefix("198.51.100.129/26"), tunnel: netip.MustParseAddr("10.0.0.13"), lan: netip.MustParsePrefix("10.3.0.0/24")},
}

func testOurHubFRRSpokes(t *testing.T) {
	t.Logf("FRR: %s", frrVersion())
	x := newInterop(t, ourHubMembers, nil)
	hub := x.nodes["hub"].(*daemonNode)
	x.waitRegistered("f1", "f2", "s3")

	// FRR's registrations as our hub holds them: the unique flag as FRR
	// set it, FRR's holding times.
	for _, c := range []struct {
		name   string
		unique bool
		hold   int
	}{{"f1", true, 60}, {"f2", false, 7200}} {
		e, _ := hub.entry(netip.PrefixFrom(x.member(c.name).tunnel, 32))
		if slices.Contains(e.Flags, "unique") != c.unique || int(e.HoldingTime) != c.hold {
			t.Errorf("the hub's registration of %s: %s, want unique %v, holding time %d", c.name, jsonString(e), c.unique, c.hold)
		}
	}
	// FRR learns the hub's tunnel address from our Registration Reply
	// ("nhs dynamic"): it binds it to the hub's NBMA address.
	for _, name := range []string{"f1", "f2"} {
		waitFor(t, 10*time.Second, name+" to bind the hub's tunnel address", func() bool {
			nbma, ok := neighbor(x.tb.Node(name), hubTunnel)
			return ok && nbma == x.hub.nbma.Addr()
		})
	}

	// Phase 2 toward FRR: our spoke reaches f1's tunnel address, on its
	// tunnel subnet: a neighbour miss, a Resolution Request for f1's own
	// address through the hub, FRR's answer, then straight (TTL 64).
	s3 := x.nodes["s3"].(*daemonNode)
	f1 := x.member("f1")
	// The first packets may cross the hub while the resolution runs (a
	// loaded machine makes that window long): wait for the binding FRR's
	// answer gives, then the path must be direct.
	waitFor(t, 15*time.Second, "s3 to reach f1's tunnel address", func() bool {
		_, err := pingTTL(t, x.tb.Node("s3"), f1.tunnel)
		return err == nil
	})
	waitFor(t, 15*time.Second, "s3 to bind f1's tunnel address to f1's NBMA address", func() bool {
		e, ok := s3.entry(netip.PrefixFrom(f1.tunnel, 32))
		return ok && e.Type == nhrp.TypeCached && e.NBMA == f1.nbma.Addr()
	})
	if ttl, err := pingTTL(t, x.tb.Node("s3"), f1.tunnel); err != nil || ttl != 64 {
		e, _ := s3.entry(netip.PrefixFrom(f1.tunnel, 32))
		t.Errorf("s3 → f1's tunnel address: TTL %d, %v (want 64, direct), binding %s", ttl, err, jsonString(e))
	}

	x.shortcutBetween("f1", "f2", true) // FRR ↔ FRR, resolved through our hub
	x.shortcutBetween("f1", "s3", true) // FRR ↔ ours
	if n := hub.traffic().NHRP.Sent["Traffic Indication"]; n < 3 {
		t.Errorf("our hub sent %d Traffic Indications, want ≥ 3", n)
	}

	// Our hub restarts: it restores its clients' registrations from its
	// state file and confirms them with a Purge of its own address (FRR
	// 8.4 has no Purge handler and logs it). FRR's spokes keep their
	// registrations across the restart instead of waiting for their next
	// refresh (a third of the holding time: 40 min for f2), and the hub
	// reaches them at once.
	hub.stop()
	hub.start()
	x.waitRegistered("s3")
	for _, f := range []string{"f1", "f2"} {
		m := x.member(f)
		if nbma, ok := hub.registration(m.tunnel); !ok || nbma != m.nbma.Addr() {
			t.Errorf("%s (FRR): registration after the hub's restart: %v %v, want restored from %v", f, nbma, ok, m.nbma.Addr())
		}
		if _, err := pingTTL(t, hub.node, m.tunnel); err != nil {
			t.Errorf("hub → %s (FRR) after the restart: %v", f, err)
		}
	}
	t.Logf("f2 (FRR) on the purge: %q", x.nodes["f2"].(*frrNode).logged("Purge"))
	x.finish("interop-ourhub", []string{"1", "2", "3", "4", "5", "8"},
		wire.TypeRegistrationRequest, wire.TypeResolutionRequest, wire.TypeResolutionReply)
}

// FRR's hub; our spokes s1 and s2 (kernel), FRR's spoke f3 (no-unique);
// h4, ours on the userspace data plane, on the host behind the TAP in a VM
// run.
var frrHubMembers = []member{
	{name: "hub", impl: frr, hub: true, nbma: netip.MustParsePrefix("192.0.2.1/26"), tunnel: hubTunnel, holdTime: 60},
	{name: "s1", impl: ours, nbma: netip.MustParsePrefix("198.51.100.1/26"), tunnel: netip.MustParseAddr("10.0.0.11"), lan: netip.MustParsePrefix("10.1.0.0/24")},
	{name: "s2", impl: ours, nbma: netip.MustParsePrefix("198.51.100.65/26"), tunnel: netip.MustParseAddr("10.0.0.12"), lan: netip.MustParsePrefix("10.2.0.0/24")},
	{name: "f3", impl: frr, nbma: netip.MustParsePrefix("198.51.100.129/26"), tunnel: netip.MustParseAddr("10.0.0.13"), lan: netip.MustParsePrefix("10.3.0.0/24"), noUnique: true, holdTime: 60},
	{name: "h4", impl: ours, dataplane: "userspace", onHost: true, nbma: netip.MustParsePrefix("203.0.113.1/24"), tunnel: netip.MustParseAddr("10.0.0.14"), lan: netip.MustParsePrefix("10.4.0.0/24")},
}

// The link between the VM's internet router and the host's, in a VM run:
// the host's end is the TAP.
var (
	transitHost = netip.MustParsePrefix("192.0.2.129/30")
	transitVM   = netip.MustParsePrefix("192.0.2.130/30")
)

// Files by which the halves of a VM run with a node on the host step
// through the test together, in the shared directory.
const (
	flagReady     = "guest-ready.flag" // the hub runs: the host starts its spoke
	flagGuestDone = "guest-done.flag"  // the guest has seen what it needs of the host's spoke
	flagHostDone  = "host-done.flag"   // the host has checked its spoke: the guest may stop
)

func testFRRHubOurSpokes(t *testing.T) {
	t.Logf("FRR: %s", frrVersion())
	x := newInterop(t, frrHubMembers, func(tb *testbed.Testbed) {
		if !vm.InGuest() {
			return
		}
		// The VM's NIC joins its internet router: the host's spoke is
		// beyond it.
		inet := tb.Node("inet")
		if out, err := exec.Command("ip", "link", "set", "eth0", "netns", inet.NS).CombinedOutput(); err != nil {
			t.Fatalf("moving eth0 into the internet router: %v: %s", err, out)
		}
		if err := inet.IP("addr add "+transitVM.String()+" dev eth0", "link set eth0 up", "route add 203.0.113.0/24 via "+transitHost.Addr().String()); err != nil {
			t.Fatal(err)
		}
	})
	onHost := vm.InGuest()
	if onHost {
		setFlag(t, os.Getenv(envOut), flagReady)
	}
	x.waitRegistered("s1", "s2", "f3", "h4")
	// Our spokes learn the FRR hub's tunnel address from its replies.
	for _, name := range []string{"s1", "s2"} {
		if e, ok := x.nodes[name].(*daemonNode).entry(netip.PrefixFrom(hubTunnel, 32)); !ok || e.Type != nhrp.TypeNHS || e.NBMA != x.hub.nbma.Addr() {
			t.Errorf("%s's entry of the FRR hub: %s", name, jsonString(e))
		}
	}

	x.shortcutBetween("s1", "s2", true) // ours ↔ ours after FRR's redirects
	x.shortcutBetween("f3", "s1", true) // FRR ↔ ours
	x.shortcutBetween("f3", "h4", true) // FRR ↔ ours on the userspace data plane
	if onHost {
		dir := os.Getenv(envOut)
		setFlag(t, dir, flagGuestDone)
		if err := waitFlag(dir, flagHostDone, 90*time.Second, nil); err != nil {
			t.Error(err)
		}
	} else {
		h4 := x.nodes["h4"].(*daemonNode)
		if err := checkShortcut(h4, x.member("f3")); err != nil {
			t.Error(err)
		}
	}
	x.finish("interop-frrhub", []string{"1", "2", "3", "4", "8"},
		wire.TypeRegistrationRequest, wire.TypeRegistrationReply, wire.TypeResolutionRequest, wire.TypeResolutionReply, wire.TypeTrafficIndication)
}

// frrHubHostHalf runs h4 on the host, in a namespace whose internet router
// holds the VM's TAP, while the VM runs the rest of the FRR-hub topology.
func frrHubHostHalf(t *testing.T) {
	requireTestbed(t)
	bin := buildDmvpnd(t)
	h4 := frrHubMembers[len(frrHubMembers)-1]
	tb, err := testbed.New(context.Background(), testbed.Spec{Sites: []testbed.Site{
		{Name: h4.name, Kind: testbed.Spoke, NBMA: h4.nbma, LAN: netip.PrefixFrom(h4.lan.Addr().Next(), h4.lan.Bits()), Hosts: 1},
	}}, testbed.WithLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tb.Close() })
	inet := tb.Node("inet")
	tap := fmt.Sprintf("dmvtap%d", os.Getpid()%100000)
	if err := vm.AddTAP(context.Background(), inet.NS, tap); err != nil {
		t.Fatal(err)
	}
	if err := inet.IP("addr add "+transitHost.String()+" dev "+tap,
		"route add 192.0.2.0/26 via "+transitVM.Addr().String(),
		"route add 198.51.100.0/24 via "+transitVM.Addr().String()); err != nil {
		t.Fatal(err)
	}
	cfg := vmConfig()
	cfg.NetNS = inet.NS
	cfg.NICs = []vm.NIC{{TAP: tap}}
	g := startGuest(t, cfg)
	hostErr := func() error {
		if err := waitFlag(g.out, flagReady, 3*time.Minute, g.done); err != nil {
			return err
		}
		d := startDaemon(t, bin, tb.Node(h4.name), memberYAML(h4, frrHubMembers[0].nbma.Addr()))
		if err := tb.Node(h4.name).IP(fmt.Sprintf("route add 10.0.0.0/8 via %s dev gre1 onlink", hubTunnel)); err != nil {
			return err
		}
		if err := waitFlag(g.out, flagGuestDone, 3*time.Minute, g.done); err != nil {
			return err
		}
		return checkShortcut(d, frrHubMembers[3])
	}()
	setFlag(t, g.out, flagHostDone)
	g.wait()
	if hostErr != nil {
		t.Errorf("host: %v", hostErr)
	}
}

// checkShortcut checks that our node d has a shortcut to m's LAN through
// m.
func checkShortcut(d *daemonNode, m member) error {
	via, nbma, ok := d.shortcut(m.lan)
	if !ok || via != m.tunnel || nbma != m.nbma.Addr() {
		return fmt.Errorf("%s's shortcut to %s (%s): via %s at %s (%v), want via %s at %s", d.name, m.lan, m.name, via, nbma, ok, m.tunnel, m.nbma.Addr())
	}
	d.t.Logf("%s has a shortcut to %s (%s) via %s at %s", d.name, m.lan, m.name, via, nbma)
	return nil
}

// setFlag creates a flag file in dir.
func setFlag(t *testing.T, dir, name string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), nil, 0o644); err != nil {
		t.Fatal(err)
	}
}

// errOtherHalfGone is returned by waitFlag when the other half stopped.
var errOtherHalfGone = errors.New("the other half of the test ended first")

// waitFlag waits for a flag file in dir, until timeout or until gone is
// closed (the other half ended).
func waitFlag(dir, name string, timeout time.Duration, gone <-chan struct{}) error {
	deadline := time.Now().Add(timeout)
	for {
		if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %v waiting for %s", timeout, name)
		}
		select {
		case <-gone:
			return fmt.Errorf("waiting for %s: %w", name, errOtherHalfGone)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
