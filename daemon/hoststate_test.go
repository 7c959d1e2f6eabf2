package daemon

import (
	"context"
	"errors"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/opendmvpn/dmvpn/gre"
	"github.com/opendmvpn/dmvpn/host"
	"github.com/opendmvpn/dmvpn/host/hosttest"
	"github.com/opendmvpn/dmvpn/nhrp"
)

// setHostState sets the daemon's host state on a kernel, as up does.
func setHostState(t *testing.T, k *hosttest.Kernel, cfg Config, info gre.Info) error {
	t.Helper()
	m, err := host.New(host.Options{Kernel: k})
	if err != nil {
		t.Fatal(err)
	}
	c, err := m.Client(hostOwner(cfg))
	if err != nil {
		t.Fatal(err)
	}
	return c.Set(context.Background(), hostState(cfg, info))
}

var kernelInfo = gre.Info{Name: "gre1", Prefix: netip.MustParsePrefix("10.0.0.1/24"), Caps: gre.Capabilities{KernelNeighbors: true, XfrmESP: true, RoutedGRE: true}}

// TestRaiseNeighLimits: a hub whose neighbours are the kernel's raises
// the limits to at least neighLimits (sized from limits.max_entries) and
// never lowers them; where the
// kernel has no such sysctls (any network namespace but the initial
// one), nothing is written and no error comes back, so a hub starts in a
// namespace or a container; limits that cannot be written are an error.
func TestRaiseNeighLimits(t *testing.T) {
	hub := Config{NHRP: nhrp.Config{Role: nhrp.RoleHub}, ShortcutRulePriority: 1000}
	k := hosttest.NewKernel()
	for name, v := range map[string]string{"gc_thresh1": "128", "gc_thresh2": "100000", "gc_thresh3": "1024"} {
		k.SetSysctl("net/ipv4/neigh/default/"+name, v)
	}
	k.SetSysctl("net/ipv4/conf/all/send_redirects", "1")
	k.SetSysctl("net/ipv4/conf/gre1/send_redirects", "1")
	if err := setHostState(t, k, hub, kernelInfo); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, name := range []string{"gc_thresh1", "gc_thresh2", "gc_thresh3"} {
		got[name], _ = k.Sysctl("net/ipv4/neigh/default/" + name)
	}
	// The default max_entries (262,144) + 1024: 263,168, all three (the
	// kernel collects registered spokes' entries above gc_thresh1 and 2).
	want := map[string]string{"gc_thresh1": "263168", "gc_thresh2": "263168", "gc_thresh3": "263168"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("limits (-want +got):\n%s", diff)
	}
	// A configured maximum sizes them: 100,000 entries.
	hub100k := hub
	hub100k.NHRP.Limits.MaxEntries = 100000
	k2 := hosttest.NewKernel()
	for name, v := range map[string]string{"gc_thresh1": "128", "gc_thresh2": "512", "gc_thresh3": "1024"} {
		k2.SetSysctl("net/ipv4/neigh/default/"+name, v)
	}
	k2.SetSysctl("net/ipv4/conf/all/send_redirects", "1")
	k2.SetSysctl("net/ipv4/conf/gre1/send_redirects", "1")
	if err := setHostState(t, k2, hub100k, kernelInfo); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"gc_thresh1", "gc_thresh2", "gc_thresh3"} {
		if v, _ := k2.Sysctl("net/ipv4/neigh/default/" + name); v != "101024" {
			t.Errorf("%s %s with max_entries 100000, want 101024", name, v)
		}
	}
	if !neighLimitsExist(k, "ipv4") {
		t.Error("neighLimitsExist false where the limits exist")
	}

	// A namespace: the limits do not exist.
	ns := hosttest.NewKernel()
	ns.SetSysctl("net/ipv4/conf/all/send_redirects", "1")
	ns.SetSysctl("net/ipv4/conf/gre1/send_redirects", "1")
	if err := setHostState(t, ns, hub, kernelInfo); err != nil {
		t.Fatalf("in a namespace: %v", err)
	}
	if _, ok := ns.Sysctl("net/ipv4/neigh/default/gc_thresh3"); ok || neighLimitsExist(ns, "ipv4") {
		t.Error("limits written in a namespace")
	}

	// Limits that cannot be written are an error.
	bad := hosttest.NewKernel()
	bad.SetSysctl("net/ipv6/neigh/default/gc_thresh1", "1")
	bad.FailOn("sysctl net/ipv6/neigh/default/gc_thresh1", syscall.EACCES)
	hub6 := kernelInfo
	hub6.Prefix = netip.MustParsePrefix("fd00::1/64")
	if err := setHostState(t, bad, hub, hub6); !errors.Is(err, syscall.EACCES) {
		t.Errorf("an unwritable limit: %v", err)
	}
	// Not on a data plane with neighbours of its own.
	own := hosttest.NewKernel()
	own.SetSysctl("net/ipv4/neigh/default/gc_thresh3", "1024")
	own.SetSysctl("net/ipv4/conf/all/send_redirects", "1")
	own.SetSysctl("net/ipv4/conf/gre1/send_redirects", "1")
	if err := setHostState(t, own, hub, gre.Info{Name: "gre1", Prefix: kernelInfo.Prefix}); err != nil {
		t.Fatal(err)
	}
	if v, _ := own.Sysctl("net/ipv4/neigh/default/gc_thresh3"); v != "1024" {
		t.Errorf("limits raised for a data plane whose neighbours are its own: %s", v)
	}
}

// TestConfirmNeighbors: with shortcut_idle on a data plane whose
// neighbours are the kernel's, the tunnel's neighbours are confirmed
// within a quarter of it (never below 1 s, never raised above the
// kernel's 30 s).
func TestConfirmNeighbors(t *testing.T) {
	for _, c := range []struct {
		idle time.Duration
		base string // "" : nothing written
	}{
		{8 * time.Second, "2000"},
		{2 * time.Second, "1000"},
		{60 * time.Second, "15000"},
		{2 * time.Minute, ""},
	} {
		k := hosttest.NewKernel()
		k.SetSysctl("net/ipv4/conf/all/send_redirects", "0")
		k.SetSysctl("net/ipv4/conf/gre1/send_redirects", "0")
		k.SetSysctl("net/ipv4/neigh/gre1/base_reachable_time_ms", "30000")
		k.SetSysctl("net/ipv4/neigh/gre1/delay_first_probe_time", "5")
		cfg := Config{NHRP: nhrp.Config{Role: nhrp.RoleSpoke, ShortcutIdle: c.idle}, ShortcutRulePriority: 1000}
		if err := setHostState(t, k, cfg, kernelInfo); err != nil {
			t.Fatalf("idle %v: %v", c.idle, err)
		}
		got := map[string]string{}
		for _, l := range k.TakeLog() {
			got[l] = "written"
		}
		want := map[string]string{}
		if c.base != "" {
			want = map[string]string{"sysctl net/ipv4/neigh/gre1/base_reachable_time_ms = " + c.base: "written",
				"sysctl net/ipv4/neigh/gre1/delay_first_probe_time = 1": "written"}
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("idle %v (-want +got):\n%s", c.idle, diff)
		}
	}
	// Without the device's sysctls it is an error.
	k := hosttest.NewKernel()
	k.SetSysctl("net/ipv4/conf/all/send_redirects", "0")
	k.SetSysctl("net/ipv4/conf/gre1/send_redirects", "0")
	cfg := Config{NHRP: nhrp.Config{Role: nhrp.RoleSpoke, ShortcutIdle: 8 * time.Second}, ShortcutRulePriority: 1000}
	if err := setHostState(t, k, cfg, kernelInfo); err == nil {
		t.Error("no error without the device's sysctls")
	}
}

// TestHostStateShortcutRule: the shortcut table's rule in the tunnel's
// family when shortcuts are on, none otherwise (a leftover is removed).
func TestHostStateShortcutRule(t *testing.T) {
	k := hosttest.NewKernel()
	k.SetSysctl("net/ipv4/conf/all/send_redirects", "0")
	k.SetSysctl("net/ipv4/conf/gre1/send_redirects", "0")
	k.AddRuleDirect(host.Rule{Family: host.IPv4, Priority: 1000, Table: 9}) // a crashed run's, another table
	cfg := Config{NHRP: nhrp.Config{Role: nhrp.RoleSpoke, Shortcut: true, ShortcutTable: 42}, ShortcutRulePriority: 1000}
	if err := setHostState(t, k, cfg, gre.Info{Name: "gre1", Prefix: kernelInfo.Prefix}); err != nil {
		t.Fatal(err)
	}
	want := []string{"rule add ipv4 1000: all lookup 42", "rule del ipv4 1000: all lookup 9"}
	if diff := cmp.Diff(want, k.TakeLog()); diff != "" {
		t.Errorf("changes (-want +got):\n%s", diff)
	}
}

// TestReloadHostState: a reload that turns forwarding on or changes a
// hub's limits.max_entries sets the daemon's host state again (the
// sysctls follow), a reload that changes neither has no such step, and
// an earlier step's failure leaves it as it was.
func TestReloadHostState(t *testing.T) {
	k := hosttest.NewKernel()
	k.SetSysctl("net/ipv4/ip_forward", "0")
	k.SetSysctl("net/ipv4/conf/all/send_redirects", "1")
	k.SetSysctl("net/ipv4/conf/gre1/send_redirects", "1")
	for i := range 3 {
		k.SetSysctl(neighLimitKey("ipv4", i), "1024")
	}
	old := Config{NHRP: nhrp.Config{Role: nhrp.RoleHub, Limits: nhrp.Limits{MaxEntries: 1000}}, ShortcutRulePriority: 1000}
	m, err := host.New(host.Options{Kernel: k})
	if err != nil {
		t.Fatal(err)
	}
	c, err := m.Client(hostOwner(old))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := c.Set(ctx, hostState(old, kernelInfo)); err != nil {
		t.Fatal(err)
	}
	if hostStep(c, kernelInfo, old, old) != nil {
		t.Errorf("a step for an unchanged host state")
	}
	sysctls := func() [2]string {
		f, _ := k.Sysctl("net/ipv4/ip_forward")
		g, _ := k.Sysctl(neighLimitKey("ipv4", 2))
		return [2]string{f, g}
	}
	if got := sysctls(); got != [2]string{"0", "2024"} {
		t.Fatalf("at start: forwarding, gc_thresh3 %v", got)
	}

	cfg := old
	cfg.Forwarding = true
	cfg.NHRP.Limits.MaxEntries = 5000
	st := hostStep(c, kernelInfo, old, cfg)
	if st == nil {
		t.Fatal("no host state step for forwarding and max_entries changed")
	}
	// The step is the last (Reload): an earlier step's failure leaves the
	// host state untouched.
	failing := step{name: "engine", do: func(context.Context) error { return errors.New("engine stopped") }}
	if err := runSteps(ctx, []step{failing, *st}); !errors.Is(err, ErrReloadFailed) {
		t.Fatalf("error %v", err)
	}
	if got := sysctls(); got != [2]string{"0", "2024"} {
		t.Errorf("after the rollback: forwarding, gc_thresh3 %v, want 0, 2024", got)
	}
	if err := runSteps(ctx, []step{*st}); err != nil {
		t.Fatal(err)
	}
	if got := sysctls(); got != [2]string{"1", "6024"} {
		t.Errorf("after the reload: forwarding, gc_thresh3 %v, want 1, 6024", got)
	}
}
