package ebpf

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/opendmvpn/dmvpn/gre"
	"github.com/opendmvpn/dmvpn/internal/leakcheck"
	"github.com/opendmvpn/dmvpn/internal/netnstest"
)

// inNetns runs the calling test again in a fresh network namespace (with
// env added) and reports its result. It returns true in the child, where
// the test body runs.
func inNetns(t *testing.T, env ...string) bool {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root (a network namespace, a TUN device, BPF programs)")
	}
	if err := Available(); err != nil {
		t.Skipf("skipping: needs a kernel that loads the ebpf data plane's BPF programs (BTF, TC BPF): %v", err)
	}
	return netnstest.Run(t, "dmve", env...)
}

func sh(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// underlay makes two Ethernet interfaces (a veth pair) with addresses.
func underlay(t *testing.T) (v0, v1 int) {
	t.Helper()
	sh(t, "ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1")
	sh(t, "ip", "addr", "add", "192.0.2.1/24", "dev", "v0")
	sh(t, "ip", "link", "set", "v0", "up")
	sh(t, "ip", "link", "set", "v1", "up")
	return ifindex(t, "v0"), ifindex(t, "v1")
}

func ifindex(t *testing.T, name string) int {
	t.Helper()
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return l.Attrs().Index
}

// kernelObjects are the IDs of a device's programs and maps.
type kernelObjects struct {
	progs []ebpf.ProgramID
	maps  []ebpf.MapID
}

func objectsOf(t *testing.T, d *Device) kernelObjects {
	t.Helper()
	var k kernelObjects
	for _, p := range []*ebpf.Program{d.objs.DmvpnEgress, d.objs.DmvpnIngress} {
		info, err := p.Info()
		if err != nil {
			t.Fatal(err)
		}
		id, _ := info.ID()
		k.progs = append(k.progs, id)
	}
	for _, m := range []*ebpf.Map{d.objs.Config, d.objs.Neighbors, d.objs.Ifaces, d.objs.LocalAddrs, d.objs.Peers, d.objs.Stats} {
		info, err := m.Info()
		if err != nil {
			t.Fatal(err)
		}
		id, _ := info.ID()
		k.maps = append(k.maps, id)
	}
	return k
}

// gone waits until the kernel has freed every program and map (freeing
// is deferred past an RCU grace period).
func (k kernelObjects) gone(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		var left []string
		for _, id := range k.progs {
			if p, err := ebpf.NewProgramFromID(id); err == nil {
				p.Close()
				left = append(left, fmt.Sprintf("program %d", id))
			}
		}
		for _, id := range k.maps {
			if m, err := ebpf.NewMapFromID(id); err == nil {
				m.Close()
				left = append(left, fmt.Sprintf("map %d", id))
			}
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("still in the kernel after Close: %s", strings.Join(left, ", "))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// attached counts the programs on an interface: TCX links and clsact
// filters, both directions.
func attached(t *testing.T, ifindex int) (n int, clsact bool) {
	t.Helper()
	for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
		r, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: at})
		if err == nil {
			n += len(r.Programs)
		}
	}
	l, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return n, false
	}
	qs, _ := netlink.QdiscList(l)
	for _, q := range qs {
		if q.Type() == "clsact" {
			clsact = true
		}
	}
	for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
		fs, _ := netlink.FilterList(l, parent)
		n += len(fs)
	}
	return n, clsact
}

func openTest(t *testing.T) *Device {
	t.Helper()
	d, err := Open(gre.Config{Name: "ebpftest0", Key: 7, Prefix: netip.MustParsePrefix("10.0.0.1/24"), MTU: 1400})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func testOpenUseClose(t *testing.T) {
	leakcheck.Check(t)
	v0, v1 := underlay(t)
	d := openTest(t)
	ctx := context.Background()
	info := d.Info()
	if info.Backend != "ebpf" || info.MTU != 1400 || info.Key != 7 {
		t.Fatalf("Info = %+v", info)
	}
	k := objectsOf(t, d)
	for _, idx := range []int{v0, v1, info.Index} {
		if n, _ := attached(t, idx); n != 1 {
			t.Errorf("ifindex %d: %d programs attached, want 1", idx, n)
		}
	}
	var fl uint32
	if err := d.objs.Ifaces.Lookup(uint32(v0), &fl); err != nil || fl != ifL2 {
		t.Errorf("v0 flags %d, %v; want %d", fl, err, ifL2)
	}
	var one uint32
	if err := d.objs.LocalAddrs.Lookup(be32(netip.MustParseAddr("192.0.2.1")), &one); err != nil {
		t.Errorf("192.0.2.1 not among the local addresses: %v", err)
	}
	// An address and an interface that appear later are followed.
	sh(t, "ip", "addr", "add", "192.0.2.9/24", "dev", "v1")
	sh(t, "ip", "link", "add", "v2", "type", "veth", "peer", "name", "v3")
	v2 := ifindex(t, "v2")
	waitUntil(t, "the new address and interface", func() bool {
		return d.objs.LocalAddrs.Lookup(be32(netip.MustParseAddr("192.0.2.9")), &one) == nil &&
			d.objs.Ifaces.Lookup(uint32(v2), &fl) == nil
	})
	sh(t, "ip", "link", "del", "v2")
	waitUntil(t, "the deleted interface to be forgotten", func() bool {
		return d.objs.Ifaces.Lookup(uint32(v2), &fl) != nil
	})
	// The MTU follows the TUN.
	sh(t, "ip", "link", "set", "ebpftest0", "mtu", "1372")
	waitUntil(t, "the TUN's new MTU", func() bool {
		var c dataplaneDpConfig
		return d.objs.Config.Lookup(uint32(0), &c) == nil && c.TunMtu == 1372
	})

	// Neighbours reach the map with their alias, and leave it.
	n2 := gre.Neighbor{Proto: netip.MustParseAddr("10.0.0.2"), NBMA: netip.MustParseAddr("198.51.100.2")}
	if err := d.SetNeighbor(ctx, n2); err != nil {
		t.Fatal(err)
	}
	var nb dataplaneNeighbor
	if err := d.objs.Neighbors.Lookup(be32(n2.Proto), &nb); err != nil || fromBE32(nb.Wire) != n2.NBMA {
		t.Fatalf("neighbour map: %+v, %v", nb, err)
	}
	if err := d.SetPeerAliases(map[netip.Addr]netip.Addr{n2.NBMA: netip.MustParseAddr("172.16.0.2")}); err != nil {
		t.Fatal(err)
	}
	if err := d.objs.Neighbors.Lookup(be32(n2.Proto), &nb); err != nil || fromBE32(nb.Wire) != netip.MustParseAddr("172.16.0.2") {
		t.Fatalf("neighbour map after the alias: %+v, %v", nb, err)
	}
	// Counters of a peer known on the wire by its alias are the NBMA's.
	if err := d.objs.Peers.Put(be32(netip.MustParseAddr("172.16.0.2")), make([]dataplanePeerStats, ebpf.MustPossibleCPU())); err != nil {
		t.Fatal(err)
	}
	if c := d.Counters(); len(c.Peers) != 1 || c.Peers[0].NBMA != n2.NBMA {
		t.Errorf("peers %+v, want one, %s", c.Peers, n2.NBMA)
	}
	ns, err := d.Neighbors(ctx)
	if err != nil || len(ns) != 1 || ns[0].Proto != n2.Proto {
		t.Fatalf("Neighbors = %+v, %v", ns, err)
	}
	if err := d.DeleteNeighbor(ctx, n2.Proto); err != nil {
		t.Fatal(err)
	}
	if err := d.objs.Neighbors.Lookup(be32(n2.Proto), &nb); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Fatalf("neighbour still in the map: %v", err)
	}

	// Requiring IPsec refuses GRE on the interfaces the gate refuses and
	// marks the ipsec ones.
	if err := d.RequireIPsec(func(i int) bool { return i == v1 }); err != nil {
		t.Fatal(err)
	}
	if err := d.objs.Ifaces.Lookup(uint32(v1), &fl); err != nil || fl != ifL2|ifIPsec {
		t.Errorf("v1 flags %d, %v; want %d", fl, err, ifL2|ifIPsec)
	}

	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); !errors.Is(err, gre.ErrClosed) {
		t.Errorf("second Close: %v", err)
	}
	k.gone(t)
	for _, idx := range []int{v0, v1} {
		if n, q := attached(t, idx); n != 0 || q {
			t.Errorf("ifindex %d after Close: %d programs, clsact qdisc %v", idx, n, q)
		}
	}
	if _, err := netlink.LinkByName("ebpftest0"); err == nil {
		t.Error("the TUN is still there after Close")
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestOpenUseCloseTCX: programs attach with TCX links, the maps follow
// the kernel and the device, and Close leaves no program, map or qdisc.
func TestOpenUseCloseTCX(t *testing.T) {
	if !inNetns(t, AttachEnv+"=tcx") {
		return
	}
	testOpenUseClose(t)
}

// TestOpenUseCloseClsact is the same with clsact filters (kernels before
// TCX): the qdiscs go too.
func TestOpenUseCloseClsact(t *testing.T) {
	if !inNetns(t, AttachEnv+"=tc") {
		return
	}
	testOpenUseClose(t)
}

const crashEnv = "EBPF_TEST_CRASH"

// TestCrashLeftovers: a process that dies without Close leaves clsact
// filters (and their programs) behind; the next Open removes them, and
// its Close leaves nothing. With TCX a crash leaves nothing at all.
func TestCrashLeftovers(t *testing.T) {
	if os.Getenv(crashEnv) != "" {
		// The crashing child: open, then exit without Close.
		d, err := Open(gre.Config{Name: "ebpftest0", Key: 7, Prefix: netip.MustParsePrefix("10.0.0.1/24"), KeepState: true})
		if err != nil {
			fmt.Println("OPEN FAILED", err)
			os.Exit(2)
		}
		_ = d
		os.Exit(0)
	}
	if !inNetns(t) {
		return
	}
	v0, _ := underlay(t)
	exe, _ := os.Executable()
	crash := func(mode string) {
		cmd := exec.Command(exe, "-test.run", "^TestCrashLeftovers$")
		cmd.Env = append(os.Environ(), crashEnv+"=1", AttachEnv+"="+mode)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("crashing child (%s): %v\n%s", mode, err, out)
		}
	}
	crash("tcx")
	waitUntil(t, "the crashed process's TCX programs to go", func() bool { n, _ := attached(t, v0); return n == 0 })

	crash("tc")
	if n, q := attached(t, v0); n != 1 || !q {
		t.Fatalf("after a crash with clsact: %d filters, qdisc %v; want the leftover", n, q)
	}
	t.Setenv(AttachEnv, "tc")
	d := openTest(t)
	if n, _ := attached(t, v0); n != 1 {
		t.Errorf("after the next Open: %d filters, want only the new one", n)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if n, q := attached(t, v0); n != 0 || q {
		t.Errorf("after Close: %d filters, qdisc %v", n, q)
	}
}
