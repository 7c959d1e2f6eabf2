package integration

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/opendmvpn/dmvpn/integration/vm"
)

// natted counts the connections in s1's table from its LAN host to the
// internet server translated to addr (masqueraded through that uplink).
func (r *failoverRig) natted(addr netip.Addr) int {
	r.t.Helper()
	ns, err := netns.GetFromName(r.tb.Node("s1").NS)
	if err != nil {
		r.t.Fatal(err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		r.t.Fatal(err)
	}
	defer h.Close()
	flows, err := h.ConntrackTableList(netlink.ConntrackTable, netlink.FAMILY_V4)
	if err != nil {
		r.t.Fatalf("s1's connections: %v", err)
	}
	host := r.tb.Node("s1-h1").Addr
	n := 0
	for _, f := range flows {
		src, _ := netip.AddrFromSlice(f.Forward.SrcIP)
		dst, _ := netip.AddrFromSlice(f.Forward.DstIP)
		rdst, _ := netip.AddrFromSlice(f.Reverse.DstIP)
		if src.Unmap() == host && dst.Unmap() == foServer && rdst.Unmap() == addr {
			n++
		}
	}
	return n
}

// greMarker marks the GRE the failover tests inject in clear themselves.
var greMarker = []byte("dmvpn-failover-probe")

// injectGRE sends n GRE packets in clear, marked, from each internet
// router to s1's address on it: what the underlay captures must see as
// GRE (the proof that they would see any), and the only GRE they may.
func (r *failoverRig) injectGRE(t testing.TB, n int) {
	t.Helper()
	if r.greinject == "" {
		r.greinject = os.Getenv(envGREInject) // in the VM: built by the host half
	}
	if r.greinject == "" {
		r.greinject = vm.GoBuild(t, "./integration/cmd/greinject")
	}
	for router, dst := range map[string]netip.Addr{"inet": foS1ISP1, "inet2": foS1ISP2} {
		if out, err := r.tb.Node(router).Run(context.Background(), r.greinject, "-src", foS2NBMA.String(), "-dst", dst.String(),
			"-key", "4243", "-proto", "0x0800", "-payload", fmt.Sprintf("%x", greMarker), "-n", fmt.Sprint(n)); err != nil {
			t.Fatalf("greinject on %s: %v: %s", router, err, out)
		}
	}
}

// checkNoClearGRE reads the captures of both internet routers: the GRE
// they saw must be the injected GRE alone, all of it (injected packets
// from each router), with IKE or ESP beside it.
func checkNoClearGRE(t testing.TB, captures map[string]string, injected int) {
	t.Helper()
	for name, path := range captures {
		wc := countWire(t, path, greMarker, foS1ISP2, foS2NBMA)
		t.Logf("%s saw %d ESP, %d IKE, %d GRE (%d of them injected by the test), %d other", name, wc.esp, wc.ike, wc.gre, wc.injected, wc.other)
		if wc.injected != injected {
			t.Errorf("%s: the capture saw %d of the %d GRE packets injected in clear: it would not see ours", name, wc.injected, injected)
		}
		if wc.gre != wc.injected {
			t.Errorf("%s: %d GRE packets in clear", name, wc.gre-wc.injected)
		}
		if wc.ike+wc.esp == 0 {
			t.Errorf("%s: no IKE or ESP at all", name)
		}
	}
}
