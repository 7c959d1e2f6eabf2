package userspace

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/vishvananda/netlink"

	"github.com/opendmvpn/dmvpn/gre"
	"github.com/opendmvpn/dmvpn/internal/leakcheck"
	"github.com/opendmvpn/dmvpn/internal/netnstest"
)

// inNetns runs the calling test again in a fresh network namespace and
// returns true in the child, where the test body runs.
func inNetns(t *testing.T) bool {
	t.Helper()
	return netnstest.Run(t, "dmvu")
}

func ipCmd(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

var addrCmp = cmp.Comparer(func(a, b netip.Addr) bool { return a == b })

func TestDeviceNeighborsRoutesClose(t *testing.T) {
	if !inNetns(t) {
		return
	}
	leakcheck.Check(t)
	ctx := context.Background()
	d, err := Open(gre.Config{Name: "tuntest0", Key: 5, Prefix: netip.MustParsePrefix("10.0.0.1/24"), MTU: 1400})
	if err != nil {
		t.Fatal(err)
	}
	info := d.Info()
	if info.MTU != 1400 || info.Index == 0 || info.Backend != "userspace" || info.Key != 5 {
		t.Fatalf("Info = %+v", info)
	}
	n2 := gre.Neighbor{Proto: netip.MustParseAddr("10.0.0.2"), NBMA: netip.MustParseAddr("192.0.2.2"), Static: true}
	n3 := gre.Neighbor{Proto: netip.MustParseAddr("10.0.0.3"), NBMA: netip.MustParseAddr("192.0.2.3")}
	for _, n := range []gre.Neighbor{n3, n2} {
		if err := d.SetNeighbor(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.SetNeighbor(ctx, gre.Neighbor{Proto: n2.Proto, NBMA: netip.MustParseAddr("fd00::1")}); err == nil {
		t.Fatal("IPv6 NBMA accepted")
	}
	got, err := d.Neighbors(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]gre.Neighbor{n2, n3}, got, addrCmp); diff != "" {
		t.Fatalf("Neighbors (-want +got):\n%s", diff)
	}
	d.DeleteNeighbor(ctx, n3.Proto)
	d.DeleteNeighbor(ctx, n3.Proto) // not there: no error
	if got, _ := d.Neighbors(ctx); len(got) != 1 {
		t.Fatalf("after delete: %v", got)
	}

	r := gre.Route{Dst: netip.MustParsePrefix("10.9.0.0/16"), Via: n2.Proto, Table: 42, Protocol: 191}
	if err := d.ReplaceRoute(ctx, r); err != nil {
		t.Fatal(err)
	}
	rs, err := d.Routes(ctx, 42)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]gre.Route{r}, rs, addrCmp, cmpopts.EquateComparable(netip.Prefix{})); diff != "" {
		t.Fatalf("Routes (-want +got):\n%s", diff)
	}

	// The kernel lookup follows policy routing: table 42 by rule, else main.
	ipCmd(t, "route", "add", "10.9.0.0/16", "via", "10.0.0.77", "dev", "tuntest0", "onlink")
	lookup := kernelLookup(d.nlh, d.tunIndex)
	check := func(dst, want string) {
		t.Helper()
		nh, ok, err := lookup(netip.MustParseAddr(dst), netip.Addr{})
		if err != nil || !ok || nh != netip.MustParseAddr(want) {
			t.Fatalf("lookup %s = %v %v %v, want %s", dst, nh, ok, err, want)
		}
	}
	check("10.9.1.1", "10.0.0.77")
	gen := d.routeGen.Load()
	ipCmd(t, "rule", "add", "pref", "100", "lookup", "42")
	check("10.9.1.1", "10.0.0.2")
	check("10.0.0.5", "10.0.0.5") // on the tunnel prefix: the destination itself
	// local source: `from` rules apply
	ipCmd(t, "rule", "add", "pref", "90", "from", "10.0.0.1", "lookup", "43")
	ipCmd(t, "route", "add", "10.9.0.0/16", "via", "10.0.0.4", "dev", "tuntest0", "onlink", "table", "43")
	if nh, ok, _ := lookup(netip.MustParseAddr("10.9.1.1"), netip.MustParseAddr("10.0.0.1")); !ok || nh != netip.MustParseAddr("10.0.0.4") {
		t.Fatalf("lookup from the tunnel address = %v, want 10.0.0.4 (table 43)", nh)
	}
	// The netlink mirror saw the rule and route changes.
	deadline := time.Now().Add(3 * time.Second)
	for d.routeGen.Load() == gen {
		if time.Now().After(deadline) {
			t.Fatal("routing changes did not invalidate the next-hop cache")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// An operator's MTU change is followed.
	ipCmd(t, "link", "set", "tuntest0", "mtu", "1300")
	for d.Info().MTU != 1300 {
		if time.Now().After(deadline.Add(2 * time.Second)) {
			t.Fatalf("MTU %d after `ip link set mtu 1300`", d.Info().MTU)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := d.DeleteRoute(ctx, r); err != nil {
		t.Fatal(err)
	}
	if err := d.DeleteRoute(ctx, r); err != nil {
		t.Fatalf("deleting a missing route: %v", err)
	}
	if rs, _ := d.Routes(ctx, 42); len(rs) != 0 {
		t.Fatalf("routes after delete: %v", rs)
	}

	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); !errors.Is(err, gre.ErrClosed) {
		t.Fatalf("second Close = %v", err)
	}
	if _, ok := <-d.Misses(); ok {
		t.Fatal("Misses not closed")
	}
	if _, err := d.Neighbors(ctx); !errors.Is(err, gre.ErrClosed) {
		t.Fatalf("Neighbors after Close = %v", err)
	}
	if err := d.WriteNHRP([]byte{1}, n2.NBMA); !errors.Is(err, gre.ErrClosed) {
		t.Fatalf("WriteNHRP after Close = %v", err)
	}
	if _, _, err := d.ReadNHRP(make([]byte, 10)); !errors.Is(err, gre.ErrClosed) {
		t.Fatalf("ReadNHRP after Close = %v", err)
	}
	if _, err := netlink.LinkByName("tuntest0"); err == nil {
		t.Fatal("TUN still exists after Close")
	}
}

func TestDeviceKeepState(t *testing.T) {
	if !inNetns(t) {
		return
	}
	leakcheck.Check(t)
	cfg := gre.Config{Name: "tunkeep0", Key: 5, Prefix: netip.MustParsePrefix("10.0.0.1/24"), MTU: 1400, KeepState: true}
	d, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.ReplaceRoute(context.Background(), gre.Route{Dst: netip.MustParsePrefix("10.8.0.0/16")}); err != nil {
		t.Fatal(err)
	}
	d.Close()
	if _, err := netlink.LinkByName("tunkeep0"); err != nil {
		t.Fatalf("TUN gone after Close with KeepState: %v", err)
	}
	cfg.KeepState = false
	d, err = Open(cfg) // adopts the persistent TUN
	if err != nil {
		t.Fatal(err)
	}
	if rs, _ := d.Routes(context.Background(), 0); len(rs) == 0 {
		t.Fatal("routes of the adopted TUN are gone")
	}
	d.Close()
	if _, err := netlink.LinkByName("tunkeep0"); err == nil {
		t.Fatal("TUN still there after Close without KeepState")
	}
}

// TestDeviceSurvivesCrash: a process holding the device is killed (no
// Close): the TUN stays with its routes, and the next Open attaches to it.
func TestDeviceSurvivesCrash(t *testing.T) {
	if !inNetns(t) {
		return
	}
	cfg := gre.Config{Name: "tuncrash0", Key: 5, Prefix: netip.MustParsePrefix("10.0.0.1/24"), MTU: 1400}
	route := gre.Route{Dst: netip.MustParsePrefix("10.8.0.0/16")}
	if os.Getenv("DMVU_CRASH") == "1" {
		// The process that is killed.
		d, err := Open(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if err := d.ReplaceRoute(context.Background(), route); err != nil {
			t.Fatal(err)
		}
		fmt.Println("ready")
		select {}
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run", "^"+t.Name()+"$", "-test.count=1")
	cmd.Env = append(os.Environ(), "DMVU_CRASH=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "ready\n" {
		cmd.Process.Kill()
		t.Fatalf("the crashing process: %q %v", line, err)
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	if _, err := netlink.LinkByName(cfg.Name); err != nil {
		t.Fatalf("TUN gone with the process that held it: %v", err)
	}
	d, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	rs, _ := d.Routes(context.Background(), 0)
	if !slices.ContainsFunc(rs, func(r gre.Route) bool { return r.Dst == route.Dst }) {
		t.Errorf("routes of the TUN after the crash: %+v, want %s among them", rs, route.Dst)
	}
	d.Close()
	if _, err := netlink.LinkByName(cfg.Name); err == nil {
		t.Error("TUN still there after a clean Close")
	}
}
