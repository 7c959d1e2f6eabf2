package host_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opendmvpn/dmvpn/host"
)

// TestGoldenStaleIdentifiers: a run crashes; the next run's clients own
// other identifiers (another shortcut rule priority, route protocol, xfrm
// priority, nftables table) and one client (the uplinks) is gone from the
// configuration. Each client's first Set removes what the crashed run of
// it left at its old identifiers, after adding the new entries; Sweep
// removes the gone client's rules and routes and puts back the route they
// replaced and the sysctls they changed. After everything closes, the
// kernel is as before the first run and the state file is gone.
func TestGoldenStaleIdentifiers(t *testing.T) {
	ctx := context.Background()
	k := newKernel()
	initial := k.Dump()
	state := filepath.Join(t.TempDir(), "gre1.host")

	m1, err := host.New(host.Options{Kernel: k, StateFile: state})
	must(t, err)
	for _, c := range []struct {
		o   host.Owner
		cfg *host.Config
	}{
		{ipsecOwner, kernelProtection(0x7fffffff)},
		{daemonOwner, daemonConfig(42)},
		{bgpOwner, bgpConfig(1, 1)},
		{uplinkOwner, uplinkConfig("wan0")},
		{fwOwner, firewallConfig("1")},
	} {
		must(t, client(t, m1, c.o).Set(ctx, c.cfg))
	}
	// m1 crashes: nothing closed.

	m2, err := host.New(host.Options{Kernel: k, StateFile: state})
	must(t, err)
	ipsec2 := host.Owner{Name: "ipsec", RulePriorities: ipsecOwner.RulePriorities, XfrmPriorities: []uint32{0x7ffffffe}}
	daemon2 := host.Owner{Name: "daemon", RulePriorities: []int{900}}
	bgp2 := host.Owner{Name: "bgp", RouteProtocol: 190}
	fw2 := host.Owner{Name: "firewall", Tables: []host.TableID{{Family: host.TableINet, Name: "dmvpn2"}}}
	ipsec, dmn, bgp, fw := client(t, m2, ipsec2), client(t, m2, daemon2), client(t, m2, bgp2), client(t, m2, fw2)
	dmnCfg := daemonConfig(42)
	dmnCfg.Rules[0].Priority = 900
	golden(t, k, []step{
		{"ipsec: kernel protection at another priority, the old policies replaced in place", func(*testing.T) error {
			return ipsec.Set(ctx, kernelProtection(0x7ffffffe))
		}},
		{"daemon: shortcut rule at 900, the crashed run's 1000 deleted after", func(*testing.T) error { return dmn.Set(ctx, dmnCfg) }},
		{"bgp: routes of protocol 190, those of 186 deleted after", func(*testing.T) error { return bgp.Set(ctx, bgpConfig(1, 1)) }},
		{"firewall: table dmvpn2, dmvpn deleted after", func(*testing.T) error {
			return fw.Set(ctx, &host.Config{Tables: []host.NFTable{{TableID: fw2.Tables[0], Rev: "1", Build: build}}})
		}},
		{"the same again: no change", func(*testing.T) error {
			return errors.Join(ipsec.Set(ctx, kernelProtection(0x7ffffffe)), dmn.Set(ctx, dmnCfg), bgp.Set(ctx, bgpConfig(1, 1)))
		}},
		{"sweep: the uplinks, gone from the configuration", func(*testing.T) error { return m2.Sweep(ctx) }},
		{"sweep again: nothing", func(*testing.T) error { return m2.Sweep(ctx) }},
		{"all close", func(*testing.T) error {
			return errors.Join(fw.Close(ctx), bgp.Close(ctx), dmn.Close(ctx), ipsec.Close(ctx))
		}},
	})
	// As before the first run, but forwarding, which the daemon sets
	// without Restore.
	want := strings.Replace(initial, "ip_forward = 0", "ip_forward = 1", 1)
	if got := k.Dump(); got != want {
		t.Errorf("the kernel after everything closed:\n%s\nwant as before the first run:\n%s", got, want)
	}
	if _, err := os.Stat(state); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state file left after everything was closed: %v", err)
	}
}

// TestStaleLeftToItsNewOwner: an identifier the crashed run's client
// owned and another client owns now is the other's: neither the first
// Set of its old owner nor a sweep touches its entries.
func TestStaleLeftToItsNewOwner(t *testing.T) {
	ctx := context.Background()
	k := newKernel()
	state := filepath.Join(t.TempDir(), "gre1.host")
	m1, err := host.New(host.Options{Kernel: k, StateFile: state})
	must(t, err)
	must(t, client(t, m1, daemonOwner).Set(ctx, daemonConfig(42)))
	must(t, client(t, m1, host.Owner{Name: "gone", RulePriorities: []int{1001}}).Set(ctx,
		&host.Config{Rules: []host.Rule{{Family: host.IPv4, Priority: 1001, Action: host.Lookup, Table: 43}}}))

	m2, err := host.New(host.Options{Kernel: k, StateFile: state})
	must(t, err)
	// The uplinks own 1000 and 1001 now; the daemon moved to 900.
	up := client(t, m2, host.Owner{Name: "failover", RulePriorities: []int{1000, 1001}})
	mine := &host.Config{Rules: []host.Rule{
		{Family: host.IPv4, Priority: 1000, Action: host.Lookup, Table: 101},
		{Family: host.IPv4, Priority: 1001, Action: host.Lookup, Table: 102},
	}}
	must(t, up.Set(ctx, mine))
	dmnCfg := daemonConfig(42)
	dmnCfg.Rules[0].Priority = 900
	must(t, client(t, m2, host.Owner{Name: "daemon", RulePriorities: []int{900}}).Set(ctx, dmnCfg))
	must(t, m2.Sweep(ctx))
	k.TakeLog()
	must(t, up.Set(ctx, mine))
	if l := k.TakeLog(); len(l) != 0 {
		t.Errorf("the daemon's first Set or the sweep touched the uplinks' rules: setting them again changed %q", l)
	}
}
