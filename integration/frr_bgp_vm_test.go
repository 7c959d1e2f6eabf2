package integration

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/opendmvpn/dmvpn/bgp"
	"github.com/opendmvpn/dmvpn/lab/testbed"
)

// TestFRRBGPHubInVM puts our spokes under FRR's hub with BGP, in a VM
// with Debian's kernel (FRR's nhrpd drives ip_gre): FRR's zebra, nhrpd and
// bgpd as the hub — the spokes dynamic neighbours of a peer group (bgp
// listen range, remote-as external), the summary 10.0.0.0/8 announced
// with aggregate-address summary-only — and our spokes s1 and s2 on the
// kernel data plane, registered with FRR's nhrpd by its NBMA address,
// peering with its bgpd over the tunnel. FRR's kernel gets both spokes'
// LANs from BGP, ours the summary with our protocol through the hub; the
// LANs reach each other, and FRR's redirects build the shortcut between
// our spokes.
func TestFRRBGPHubInVM(t *testing.T) {
	t.Parallel()
	if runInVM(t, vmConfig()) {
		return
	}
	requireTestbed(t)
	requireFRRBGP(t)
	needKernelGRE(t)
	t.Logf("FRR: %s", frrVersion())
	hubNBMA := netip.MustParseAddr("192.0.2.1")
	tb, err := testbed.New(context.Background(), testbed.Spec{Sites: []testbed.Site{
		{Name: "hub", Kind: testbed.Hub, NBMA: netip.PrefixFrom(hubNBMA, 26)},
		{Name: "s1", Kind: testbed.Spoke, NBMA: netip.MustParsePrefix("198.51.100.1/26"), LAN: netip.MustParsePrefix("10.1.0.1/24"), Hosts: 1},
		{Name: "s2", Kind: testbed.Spoke, NBMA: netip.MustParsePrefix("198.51.100.65/26"), LAN: netip.MustParsePrefix("10.2.0.1/24"), Hosts: 1},
	}}, testbed.WithLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tb.Close() })
	hubTun := netip.MustParseAddr("172.16.0.1")
	f := startFRR(t, tb.Node("hub"), frrConfig{Tunnel: hubTun, Hub: true, HoldTime: 60})
	// nhrpd gives gre1 a /32: the spokes' tunnel addresses are reached
	// through the device (their neighbour entries are nhrpd's).
	if err := tb.Node("hub").IP("route add 172.16.0.0/16 dev gre1"); err != nil {
		t.Fatal(err)
	}
	f.startBGPD(`router bgp 65000
 bgp router-id 172.16.0.1
 no bgp ebgp-requires-policy
 neighbor SPOKES peer-group
 neighbor SPOKES remote-as external
 neighbor SPOKES disable-connected-check
 neighbor SPOKES timers 1 3
 bgp listen range 172.16.0.0/16 peer-group SPOKES
 address-family ipv4 unicast
  aggregate-address 10.0.0.0/8 summary-only
 exit-address-family
`)
	bin := buildDmvpnd(t)
	spokes := map[string]*daemonNode{}
	for i, name := range []string{"s1", "s2"} {
		spokes[name] = startDaemon(t, bin, tb.Node(name), fmt.Sprintf(`node: %s
role: spoke
tunnel:
  interface: gre1
  address: 172.16.%d.1/16
  key: 42
  dataplane: kernel
  holding_time: 60
  nhs:
    - nbma: %s
  shortcut: true
networks:
  - 10.%d.0.0/24
bgp:
  as: 6500%d
  keepalive: 1s
  hold_time: 3s
  connect_retry: 1s
forwarding: true
logging:
  level: debug
metrics:
  enabled: false
control:
  socket: "@SOCKET@"
ipsec: off
`, name, i+1, hubNBMA, i+1, i+1))
	}

	// Our spokes: FRR's bgpd a neighbour in AS 65000, established; its
	// summary in the kernel with our protocol through the hub.
	for _, name := range []string{"s1", "s2"} {
		d := spokes[name]
		waitFor(t, 90*time.Second, name+"'s BGP session with FRR's hub", func() bool {
			n, ok := bgpNeighbor(t, d, hubTun)
			return ok && n.State == bgp.StateEstablished && n.AS == 65000
		})
		ns := tb.Node(name).NS
		waitFor(t, 30*time.Second, "FRR's summary in "+name+"'s kernel", func() bool {
			return slices.ContainsFunc(bgpRoutes(t, ns), func(r string) bool { return strings.HasPrefix(r, "10.0.0.0/8 via 172.16.0.1 dev gre1") })
		})
	}
	// FRR's hub: both LANs from BGP in its kernel (zebra's protocol bgp is
	// 186 too).
	hubNS := tb.Node("hub").NS
	for i := 1; i <= 2; i++ {
		lan, via := fmt.Sprintf("10.%d.0.0/24 ", i), fmt.Sprintf(" via 172.16.%d.1 dev gre1 ", i)
		waitFor(t, 30*time.Second, "s"+fmt.Sprint(i)+"'s LAN in FRR's kernel", func() bool {
			return slices.ContainsFunc(bgpRoutes(t, hubNS), func(r string) bool { return strings.HasPrefix(r, lan) && strings.Contains(r, via) })
		})
	}

	// LAN to LAN, through FRR's hub until its redirect makes our spokes
	// resolve each other: then direct (TTL 62) over a shortcut.
	h1 := tb.Node("s1-h1")
	waitFor(t, 60*time.Second, "s1's LAN to reach s2's over a shortcut after FRR's redirect", func() bool {
		ttl, err := pingTTL(t, h1, netip.MustParseAddr("10.2.0.2"))
		via, _, ok := spokes["s1"].shortcut(netip.MustParsePrefix("10.2.0.0/24"))
		return err == nil && ttl == 62 && ok && via == netip.MustParseAddr("172.16.2.1")
	})
}
