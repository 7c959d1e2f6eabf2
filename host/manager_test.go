package host_test

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/opendmvpn/dmvpn/host"
	"github.com/opendmvpn/dmvpn/host/hosttest"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// The clients of the tests, as dmvpnd's packages use the Manager.
var (
	ipsecOwner  = host.Owner{Name: "ipsec", RulePriorities: []int{219, 221, 222}, XfrmPriorities: []uint32{0x7fffffff}}
	daemonOwner = host.Owner{Name: "daemon", RulePriorities: []int{1000}}
	bgpOwner    = host.Owner{Name: "bgp", RouteProtocol: 186}
	uplinkOwner = host.Owner{Name: "failover", RulePriorities: []int{100, 101, 102}, RouteProtocol: 187}
	fwOwner     = host.Owner{Name: "firewall", Tables: []host.TableID{{Family: host.TableINet, Name: "dmvpn"}}}
)

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func addr(s string) netip.Addr  { return netip.MustParseAddr(s) }

// userspaceProtection is ipsec's userspace mode: GRE without a route in
// charon's table 220 is prohibited, other traffic skips that table.
func userspaceProtection() *host.Config {
	return &host.Config{Rules: []host.Rule{
		{Family: host.IPv4, Priority: 222, Action: host.Nop},
		{Family: host.IPv4, Priority: 219, Action: host.Goto, Goto: 222, Invert: true, IPProto: 47},
		{Family: host.IPv4, Priority: 221, Action: host.Prohibit, IPProto: 47},
	}}
}

// kernelProtection is ipsec's kernel mode: catch-all GRE block policies.
func kernelProtection(prio uint32) *host.Config {
	any4 := pfx("0.0.0.0/0")
	return &host.Config{Xfrm: []host.XfrmPolicy{
		{Dir: host.XfrmOut, Src: any4, Dst: any4, Proto: 47, Priority: prio, Action: host.XfrmBlock},
		{Dir: host.XfrmIn, Src: any4, Dst: any4, Proto: 47, Priority: prio, Action: host.XfrmBlock},
	}}
}

func daemonConfig(table int) *host.Config {
	return &host.Config{
		Rules: []host.Rule{{Family: host.IPv4, Priority: 1000, Action: host.Lookup, Table: table}},
		Sysctls: []host.Sysctl{
			{Key: "net/ipv4/ip_forward", Value: "1"},
			{Key: "net/ipv4/conf/all/send_redirects", Value: "0", Restore: true},
			{Key: "net/ipv4/neigh/default/gc_thresh3", Value: "65536", AtLeast: true, Optional: true},
		},
	}
}

func bgpConfig(weights ...int) *host.Config {
	lan1 := host.Route{Dst: pfx("10.1.0.0/24"), NextHops: []host.NextHop{{Gw: addr("10.0.0.11"), Dev: "gre1", Onlink: true}}}
	ecmp := host.Route{Dst: pfx("10.9.0.0/16")}
	for i, w := range weights {
		ecmp.NextHops = append(ecmp.NextHops, host.NextHop{Gw: netip.AddrFrom4([4]byte{10, 0, 0, byte(1 + i)}), Dev: "gre1", Onlink: true, Weight: w})
	}
	return &host.Config{Routes: []host.Route{lan1, ecmp,
		{Dst: pfx("2001:db8:1::/48"), NextHops: []host.NextHop{{Gw: addr("fe80::1"), Dev: "gre1"}}}}}
}

func uplinkConfig(up ...string) *host.Config {
	gw := map[string]string{"wan0": "192.0.2.254", "wan1": "198.51.100.254"}
	tbl := map[string]int{"wan0": 101, "wan1": 102}
	src := map[string]string{"wan0": "192.0.2.1/32", "wan1": "198.51.100.1/32"}
	cfg := &host.Config{Sysctls: []host.Sysctl{
		{Key: "net/ipv4/fib_multipath_hash_policy", Value: "1", Restore: true},
		{Key: "net/ipv4/conf/all/rp_filter", Value: "2", Restore: true},
	}}
	def := host.Route{Dst: pfx("0.0.0.0/0")}
	for _, u := range []string{"wan0", "wan1"} {
		cfg.Routes = append(cfg.Routes, host.Route{Table: tbl[u], Dst: pfx("0.0.0.0/0"), NextHops: []host.NextHop{{Gw: addr(gw[u]), Dev: u}}})
		cfg.Rules = append(cfg.Rules, host.Rule{Family: host.IPv4, Priority: tbl[u], Src: pfx(src[u]), Table: tbl[u]})
	}
	for _, u := range up {
		def.NextHops = append(def.NextHops, host.NextHop{Gw: addr(gw[u]), Dev: u, Weight: 1})
	}
	cfg.Routes = append(cfg.Routes, def)
	cfg.Rules = append(cfg.Rules, host.Rule{Family: host.IPv4, Priority: 100, Mark: 0x100, Mask: 0xff00, Table: 101})
	return cfg
}

func firewallConfig(rev string) *host.Config {
	return &host.Config{Tables: []host.NFTable{{TableID: fwOwner.Tables[0], Rev: rev, Build: build}}}
}

func newKernel() *hosttest.Kernel {
	k := hosttest.NewKernel()
	k.AddLink("wan0", 2)
	k.AddLink("wan1", 3)
	k.AddLink("gre1", 4)
	k.SetSysctl("net/ipv4/ip_forward", "0")
	k.SetSysctl("net/ipv4/conf/all/send_redirects", "1")
	k.SetSysctl("net/ipv4/conf/all/rp_filter", "1")
	k.SetSysctl("net/ipv4/fib_multipath_hash_policy", "0")
	// The kernel's own and another program's entries, which no client
	// may touch.
	k.AddRoute(host.Route{Dst: pfx("192.0.2.0/24"), Protocol: 2, NextHops: []host.NextHop{{Dev: "wan0"}}})
	k.AddRoute(host.Route{Dst: pfx("0.0.0.0/0"), Metric: 100, Protocol: 16, NextHops: []host.NextHop{{Gw: addr("192.0.2.254"), Dev: "wan0"}}})
	// A static default that failover's multipath default replaces and
	// puts back when it goes.
	k.AddRoute(host.Route{Dst: pfx("0.0.0.0/0"), Protocol: 3, NextHops: []host.NextHop{{Gw: addr("192.0.2.254"), Dev: "wan0"}}})
	k.AddRuleDirect(host.Rule{Family: host.IPv4, Priority: 220, Invert: true, Mark: 0x42, Table: 220})
	k.AddXfrmDirect(host.XfrmPolicy{Dir: host.XfrmOut, Src: pfx("192.0.2.1/32"), Dst: pfx("198.51.100.1/32"), Proto: 47, Priority: 367231})
	return k
}

type step struct {
	name string
	do   func(t *testing.T) error
}

// golden runs the steps and compares each one's changes and the kernel
// after it with testdata/NAME.golden.
func golden(t *testing.T, k *hosttest.Kernel, steps []step) {
	t.Helper()
	var b strings.Builder
	k.TakeLog()
	fmt.Fprintf(&b, "== start ==\n%s", k.Dump())
	for _, s := range steps {
		err := s.do(t)
		fmt.Fprintf(&b, "\n== %s ==\n", s.name)
		if err != nil {
			fmt.Fprintf(&b, "error: %v\n", err)
		}
		b.WriteString("-- changes --\n")
		for _, l := range k.TakeLog() {
			b.WriteString(l + "\n")
		}
		fmt.Fprintf(&b, "-- kernel --\n%s", k.Dump())
	}
	file := filepath.Join("testdata", strings.ReplaceAll(t.Name(), "/", "_")+".golden")
	if *update {
		if err := os.WriteFile(file, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if diff := cmp.Diff(string(want), b.String()); diff != "" {
		t.Errorf("%s (-want +got):\n%s", file, diff)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func client(t *testing.T, m *host.Manager, o host.Owner) *host.Client {
	t.Helper()
	c, err := m.Client(o)
	must(t, err)
	return c
}

// TestGoldenFromEmpty: every client sets its state on a kernel that has
// none of it, changes it, and closes: only its own entries change, the
// kernel's and other programs' stay.
func TestGoldenFromEmpty(t *testing.T) {
	ctx := context.Background()
	k := newKernel()
	m, err := host.New(host.Options{Kernel: k})
	must(t, err)
	ipsec, dmn, bgp := client(t, m, ipsecOwner), client(t, m, daemonOwner), client(t, m, bgpOwner)
	up, fw := client(t, m, uplinkOwner), client(t, m, fwOwner)
	golden(t, k, []step{
		{"ipsec userspace protection", func(*testing.T) error { return ipsec.Set(ctx, userspaceProtection()) }},
		{"daemon: shortcut rule and sysctls", func(*testing.T) error { return dmn.Set(ctx, daemonConfig(42)) }},
		{"bgp: routes, ECMP 1:1", func(*testing.T) error { return bgp.Set(ctx, bgpConfig(1, 1)) }},
		{"failover: both uplinks", func(*testing.T) error { return up.Set(ctx, uplinkConfig("wan0", "wan1")) }},
		{"firewall: table rev 1", func(*testing.T) error { return fw.Set(ctx, firewallConfig("1")) }},
		{"the same again: no change", func(t *testing.T) error {
			return errors.Join(ipsec.Set(ctx, userspaceProtection()), dmn.Set(ctx, daemonConfig(42)),
				bgp.Set(ctx, bgpConfig(1, 1)), up.Set(ctx, uplinkConfig("wan0", "wan1")), fw.Set(ctx, firewallConfig("1")))
		}},
		{"bgp: ECMP 3:1 replaced in place", func(*testing.T) error { return bgp.Set(ctx, bgpConfig(3, 1)) }},
		{"failover: wan1 down", func(*testing.T) error { return up.Set(ctx, uplinkConfig("wan0")) }},
		{"firewall: table rev 2", func(*testing.T) error { return fw.Set(ctx, firewallConfig("2")) }},
		{"daemon: shortcut table 43", func(*testing.T) error { return dmn.Set(ctx, daemonConfig(43)) }},
		{"all close", func(*testing.T) error {
			return errors.Join(fw.Close(ctx), up.Close(ctx), bgp.Close(ctx), dmn.Close(ctx), ipsec.Close(ctx))
		}},
	})
}

// TestGoldenFromLeftovers: a run after a crash finds the crashed run's
// entries (some it still wants, some it does not, one changed) and
// adopts or removes them; a second Set changes nothing.
func TestGoldenFromLeftovers(t *testing.T) {
	ctx := context.Background()
	k := newKernel()
	// The crashed run's.
	for _, r := range userspaceProtection().Rules {
		k.AddRuleDirect(r)
	}
	k.AddRuleDirect(host.Rule{Family: host.IPv4, Priority: 221, Action: host.Prohibit, IPProto: 47, OifName: "wan9"})
	k.AddRuleDirect(host.Rule{Family: host.IPv6, Priority: 1000, Table: 42})
	for _, p := range kernelProtection(0x7fffffff).Xfrm {
		k.AddXfrmDirect(p)
	}
	k.AddRoute(host.Route{Dst: pfx("10.1.0.0/24"), Protocol: 186, NextHops: []host.NextHop{{Gw: addr("10.0.0.11"), Dev: "gre1", Onlink: true}}})
	k.AddRoute(host.Route{Dst: pfx("10.7.0.0/24"), Protocol: 186, NextHops: []host.NextHop{{Gw: addr("10.0.0.17"), Dev: "gre1", Onlink: true}}})
	k.AddRoute(host.Route{Table: 7, Dst: pfx("10.8.0.0/24"), Protocol: 186, Type: host.BlackholeRoute})
	m, err := host.New(host.Options{Kernel: k})
	must(t, err)
	ipsec, dmn, bgp := client(t, m, ipsecOwner), client(t, m, daemonOwner), client(t, m, bgpOwner)
	golden(t, k, []step{
		{"ipsec userspace: adopts its rules, drops the stray one and the kernel-mode policies", func(*testing.T) error {
			return ipsec.Set(ctx, userspaceProtection())
		}},
		{"daemon: its IPv6 rule is not wanted", func(*testing.T) error { return dmn.Set(ctx, daemonConfig(42)) }},
		{"bgp: adopts 10.1/24, replaces nothing, drops the rest", func(*testing.T) error { return bgp.Set(ctx, bgpConfig(1, 1)) }},
		{"the same again: no change", func(*testing.T) error {
			return errors.Join(ipsec.Set(ctx, userspaceProtection()), dmn.Set(ctx, daemonConfig(42)), bgp.Set(ctx, bgpConfig(1, 1)))
		}},
	})
}

// TestGoldenDifferentConfig: ipsec goes from userspace to kernel mode and
// back, and the catch-all policies change priority (replaced in place).
func TestGoldenDifferentConfig(t *testing.T) {
	ctx := context.Background()
	k := newKernel()
	m, err := host.New(host.Options{Kernel: k})
	must(t, err)
	ipsec := client(t, m, host.Owner{Name: "ipsec", RulePriorities: []int{219, 221, 222}, XfrmPriorities: []uint32{0x7fffffff, 0x7ffffffe}})
	both := func(p uint32) *host.Config {
		c := userspaceProtection()
		c.Xfrm = kernelProtection(p).Xfrm
		return c
	}
	golden(t, k, []step{
		{"userspace", func(*testing.T) error { return ipsec.Set(ctx, userspaceProtection()) }},
		{"kernel", func(*testing.T) error { return ipsec.Set(ctx, kernelProtection(0x7fffffff)) }},
		{"kernel at another priority", func(*testing.T) error { return ipsec.Set(ctx, kernelProtection(0x7ffffffe)) }},
		{"both", func(*testing.T) error { return ipsec.Set(ctx, both(0x7ffffffe)) }},
		{"userspace again", func(*testing.T) error { return ipsec.Set(ctx, userspaceProtection()) }},
	})
}

// TestGoldenToEmpty: an empty Config and Close remove what the client
// owns — also what it did not set in this run — and restore the sysctls
// set with Restore; Leave leaves everything.
func TestGoldenToEmpty(t *testing.T) {
	ctx := context.Background()
	k := newKernel()
	m, err := host.New(host.Options{Kernel: k})
	must(t, err)
	dmn, up, ipsec := client(t, m, daemonOwner), client(t, m, uplinkOwner), client(t, m, ipsecOwner)
	golden(t, k, []step{
		{"set", func(*testing.T) error {
			return errors.Join(dmn.Set(ctx, daemonConfig(42)), up.Set(ctx, uplinkConfig("wan0", "wan1")), ipsec.Set(ctx, kernelProtection(0x7fffffff)))
		}},
		{"a leftover of an earlier run appears", func(*testing.T) error {
			k.AddRoute(host.Route{Table: 103, Dst: pfx("0.0.0.0/0"), Protocol: 187, NextHops: []host.NextHop{{Gw: addr("203.0.113.254"), Dev: "wan1"}}})
			return nil
		}},
		{"failover: empty config", func(*testing.T) error { return up.Set(ctx, &host.Config{}) }},
		{"failover: close restores its sysctls", func(*testing.T) error { return up.Close(ctx) }},
		{"ipsec: leave (keep-routes)", func(*testing.T) error { ipsec.Leave(); return nil }},
		{"daemon: close", func(*testing.T) error { return dmn.Close(ctx) }},
	})
}

// TestNoInstantWithoutProtection checks after every change the kernel
// accepts, through every transition of the ipsec client, that GRE is
// held back by a prohibit rule or an outbound block policy.
func TestNoInstantWithoutProtection(t *testing.T) {
	ctx := context.Background()
	k := newKernel()
	protected := func() bool {
		rs, _ := k.Rules(ctx, host.IPv4)
		for _, r := range rs {
			if (r.Action == host.Prohibit || r.Action == host.Blackhole) && r.IPProto == 47 && r.OifName == "" && r.IifName == "" && !r.Invert {
				return true
			}
		}
		ps, _ := k.XfrmPolicies(ctx)
		for _, p := range ps {
			if p.Dir == host.XfrmOut && p.Action == host.XfrmBlock && p.Proto == 47 && p.Dst.Bits() == 0 {
				return true
			}
		}
		return false
	}
	var gaps []string
	on := false
	k.OnChange = func(change string) {
		if on && !protected() {
			gaps = append(gaps, change)
		}
	}
	m, err := host.New(host.Options{Kernel: k})
	must(t, err)
	c := client(t, m, host.Owner{Name: "ipsec", RulePriorities: []int{219, 221, 222}, XfrmPriorities: []uint32{0x7fffffff, 0x7ffffffe}})
	must(t, c.Set(ctx, userspaceProtection()))
	on = true
	drop := userspaceProtection()
	drop.Rules[2].Action = host.Blackhole // the same priority, another rule
	for i, cfg := range []*host.Config{kernelProtection(0x7fffffff), kernelProtection(0x7ffffffe), userspaceProtection(), drop, userspaceProtection()} {
		must(t, c.Set(ctx, cfg))
		if len(gaps) > 0 {
			t.Fatalf("transition %d: GRE unprotected after %q", i, gaps)
		}
	}
	// A restart: a new Manager adopts without a change.
	c.Leave()
	m2, err := host.New(host.Options{Kernel: k})
	must(t, err)
	k.TakeLog()
	c2 := client(t, m2, ipsecOwner)
	must(t, c2.Set(ctx, userspaceProtection()))
	if l := k.TakeLog(); len(l) != 0 {
		t.Errorf("adopting after a restart changed the kernel: %q", l)
	}
}

// TestFailedAdditionKeepsOld: when an addition fails, nothing is deleted
// (the old protection stays in force) and the error says so; the next
// Set completes the change.
func TestFailedAdditionKeepsOld(t *testing.T) {
	ctx := context.Background()
	k := newKernel()
	m, err := host.New(host.Options{Kernel: k})
	must(t, err)
	c := client(t, m, ipsecOwner)
	must(t, c.Set(ctx, userspaceProtection()))
	k.TakeLog()
	k.FailOn("xfrm update xfrm src 0.0.0.0/0 dst 0.0.0.0/0 proto 47 dir in", syscall.ENOBUFS)
	err = c.Set(ctx, kernelProtection(0x7fffffff))
	if err == nil || !errors.Is(err, syscall.ENOBUFS) || !strings.Contains(err.Error(), "3 old entries kept") {
		t.Fatalf("Set = %v, want the failure and the kept entries named", err)
	}
	want := []string{"xfrm update xfrm src 0.0.0.0/0 dst 0.0.0.0/0 proto 47 dir out action block priority 2147483647"}
	if diff := cmp.Diff(want, k.TakeLog()); diff != "" {
		t.Errorf("changes (-want +got):\n%s", diff)
	}
	must(t, c.Set(ctx, kernelProtection(0x7fffffff)))
	if got := strings.Count(k.Dump(), "rule ipv4 22"); got != 1 { // charon's 220 only
		t.Errorf("rules 219-222 after the retry:\n%s", k.Dump())
	}
}

// TestRefusals: overlapping owners, the kernel's identifiers and invalid
// configurations are refused whole and change nothing.
func TestRefusals(t *testing.T) {
	ctx := context.Background()
	k := newKernel()
	m, err := host.New(host.Options{Kernel: k})
	must(t, err)
	client(t, m, ipsecOwner)
	d := client(t, m, daemonOwner)
	for _, o := range []host.Owner{
		{Name: "x", RulePriorities: []int{221}},
		{Name: "x", RulePriorities: []int{32766}},
		{Name: "x", RouteProtocol: 2},
		{Name: "x", XfrmPriorities: []uint32{0x7fffffff}},
		{Name: "ipsec"},
		{},
	} {
		if _, err := m.Client(o); err == nil {
			t.Errorf("Client(%+v) accepted", o)
		}
	}
	before := k.Dump()
	k.TakeLog()
	for i, cfg := range []*host.Config{
		{Rules: []host.Rule{{Family: host.IPv4, Priority: 221, Action: host.Prohibit}}},                                                          // not its priority
		{Rules: []host.Rule{{Family: host.IPv4, Priority: 1000, Action: host.Goto, Goto: 999}}},                                                  // backwards
		{Routes: []host.Route{{Dst: pfx("10.0.0.0/8"), NextHops: []host.NextHop{{Dev: "gre1"}}}}},                                                // no protocol
		{Sysctls: []host.Sysctl{{Key: "../etc/passwd", Value: "x"}}},                                                                             // outside /proc/sys
		{Sysctls: []host.Sysctl{{Key: "net/ipv4/ip_forward", Value: "1"}, {Key: "net/ipv4/ip_forward", Value: "1"}}},                             // twice
		{Xfrm: []host.XfrmPolicy{{Dir: host.XfrmOut, Src: pfx("0.0.0.0/0"), Dst: pfx("0.0.0.0/0"), Priority: 0x7fffffff}}},                       // not its priority
		{Rules: []host.Rule{{Family: host.IPv4, Priority: 1000, Table: 42}}, Tables: []host.NFTable{{TableID: fwOwner.Tables[0], Build: build}}}, // not its table
	} {
		if err := d.Set(ctx, cfg); err == nil {
			t.Errorf("config %d accepted", i)
		}
	}
	b := client(t, m, bgpOwner)
	if err := b.Set(ctx, &host.Config{Routes: []host.Route{{Dst: pfx("10.0.0.0/8"), Type: host.BlackholeRoute, NextHops: []host.NextHop{{Dev: "gre1"}}}}}); err == nil {
		t.Error("a blackhole route with a next hop accepted")
	}
	must(t, d.Set(ctx, &host.Config{Sysctls: []host.Sysctl{{Key: "net/ipv4/ip_forward", Value: "1"}}}))
	u := client(t, m, uplinkOwner)
	if err := u.Set(ctx, &host.Config{Sysctls: []host.Sysctl{{Key: "net/ipv4/ip_forward", Value: "1"}}}); err == nil || !strings.Contains(err.Error(), "set by daemon") {
		t.Errorf("a sysctl of another client: %v", err)
	}
	if l := k.TakeLog(); len(l) != 1 || before == k.Dump() {
		t.Errorf("refused configurations changed the kernel: %q", l)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := d.Set(cctx, daemonConfig(42)); !errors.Is(err, context.Canceled) {
		t.Errorf("Set with a cancelled context: %v", err)
	}
	if l := k.TakeLog(); len(l) != 0 {
		t.Errorf("a cancelled Set changed the kernel: %q", l)
	}
	must(t, d.Close(ctx))
	if err := d.Set(ctx, daemonConfig(42)); !errors.Is(err, host.ErrClosed) {
		t.Errorf("Set after Close: %v", err)
	}
	// Its identifiers are free again.
	client(t, m, daemonOwner)
}

// TestRestoreAcrossCrash: a sysctl set with Restore gets back the value
// from before the first run, even when a second run (after a crash of
// the first) closes it.
func TestRestoreAcrossCrash(t *testing.T) {
	ctx := context.Background()
	k := newKernel()
	state := filepath.Join(t.TempDir(), "host.json")
	m1, err := host.New(host.Options{Kernel: k, StateFile: state})
	must(t, err)
	must(t, client(t, m1, uplinkOwner).Set(ctx, uplinkConfig("wan0")))
	// Crash: m1 is gone without Close. The next run sets the same.
	m2, err := host.New(host.Options{Kernel: k, StateFile: state})
	must(t, err)
	c := client(t, m2, uplinkOwner)
	must(t, c.Set(ctx, uplinkConfig("wan0")))
	must(t, c.Close(ctx))
	for key, want := range map[string]string{"net/ipv4/conf/all/rp_filter": "1", "net/ipv4/fib_multipath_hash_policy": "0"} {
		if v, _ := k.Sysctl(key); v != want {
			t.Errorf("%s = %s after Close, want %s (the value before the first run)", key, v, want)
		}
	}
	if _, err := os.Stat(state); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state file left after everything was restored: %v", err)
	}
}
