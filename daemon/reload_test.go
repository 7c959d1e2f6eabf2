package daemon

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/opendmvpn/dmvpn/bgp"
	"github.com/opendmvpn/dmvpn/failover"
	"github.com/opendmvpn/dmvpn/firewall"
	"github.com/opendmvpn/dmvpn/gre"
	"github.com/opendmvpn/dmvpn/ipsec"
	"github.com/opendmvpn/dmvpn/nhrp"
)

// fakeEngine records the configurations it is given; fail makes the
// first Reconfigure fail.
type fakeEngine struct {
	got  []time.Duration // holding times applied, in order
	fail error
}

func (e *fakeEngine) Reconfigure(_ context.Context, cfg nhrp.Config) error {
	if e.fail != nil {
		err := e.fail
		e.fail = nil
		return err
	}
	e.got = append(e.got, cfg.HoldingTime)
	return nil
}

// fakeCreds stands for IPsec's credentials: sets are told apart by
// identity; loads are recorded in order.
type fakeCreds struct {
	inForce, onDisk *ipsec.Credentials
	readErr         error
	loadErr         []error // the result of each load, in order (nil when exhausted)
	loads           []*ipsec.Credentials
	// committed and refused record the sets told to CredentialsCommitted
	// (where the CRL sweep and a spoke's re-authentication happen) and
	// CredentialsRefused.
	committed, refused []*ipsec.Credentials
}

func (c *fakeCreds) CredentialsCommitted(_ context.Context, _, s *ipsec.Credentials) {
	c.committed = append(c.committed, s)
}
func (c *fakeCreds) CredentialsRefused(s *ipsec.Credentials) { c.refused = append(c.refused, s) }

func (c *fakeCreds) ReadCredentials() (*ipsec.Credentials, error) { return c.onDisk, c.readErr }
func (c *fakeCreds) Credentials() *ipsec.Credentials              { return c.inForce }
func (c *fakeCreds) LoadCredentials(_ context.Context, s *ipsec.Credentials) error {
	c.loads = append(c.loads, s)
	var err error
	if len(c.loadErr) > 0 {
		err, c.loadErr = c.loadErr[0], c.loadErr[1:]
	}
	if err == nil {
		c.inForce = s
	}
	return err
}

func baseConfig() Config {
	return Config{
		Node:     "s1",
		Tunnel:   gre.Config{Name: "gre1", Prefix: netip.MustParsePrefix("172.16.1.1/16")},
		NHRP:     nhrp.Config{HoldingTime: 10 * time.Minute, NHS: []nhrp.NHSConfig{{NBMA: netip.MustParseAddr("192.0.2.1")}}},
		IPsecOff: true,
	}.withDefaults()
}

// commit plans a reload from old to cfg and runs its steps.
func commit(t *testing.T, old, cfg Config, eng *fakeEngine, creds *fakeCreds) ([]string, error) {
	t.Helper()
	var cl credentialLoader
	if creds != nil {
		cl = creds
	}
	p, err := planReload(old, cfg, cl, nil)
	if err != nil {
		return nil, err
	}
	if err := p.run(context.Background(), p.commitSteps(old.NHRP, eng, cl), cl); err != nil {
		return nil, err
	}
	return p.changes, nil
}

// TestReloadPlanRefusesWholly: what needs a restart, an invalid engine
// configuration and credentials that do not check are refused before
// anything is applied.
func TestReloadPlanRefusesWholly(t *testing.T) {
	old := baseConfig()
	eng, creds := &fakeEngine{}, &fakeCreds{inForce: &ipsec.Credentials{}, onDisk: &ipsec.Credentials{}}

	cfg := old
	cfg.Tunnel.Key = 7
	cfg.NHRP.HoldingTime = 5 * time.Minute
	_, err := commit(t, old, cfg, eng, creds)
	var re *RestartError
	if !errors.Is(err, ErrNeedsRestart) || !errors.As(err, &re) || !slices.Equal(re.Reasons(), []string{"GRE key: needs a restart"}) {
		t.Errorf("key change: %v", err)
	}

	// The BGP speaker is set up at start only: a change to its section
	// is refused, never taken silently (and then shown by show
	// running-config while not in force).
	old.BGP = &bgp.Config{AS: 65001, MaxPrefixes: 100}
	cfg = old
	cfg.BGP = &bgp.Config{AS: 65001, MaxPrefixes: 200}
	if _, err := commit(t, old, cfg, eng, creds); !errors.As(err, &re) || !slices.Equal(re.Reasons(), []string{"bgp: needs a restart"}) {
		t.Errorf("bgp max_prefixes change: %v", err)
	}
	cfg = old
	cfg.BGPProtocol = 17
	if _, err := commit(t, old, cfg, eng, creds); !errors.As(err, &re) || !slices.Equal(re.Reasons(), []string{"bgp: needs a restart"}) {
		t.Errorf("bgp route protocol change: %v", err)
	}
	old.BGP = nil
	// Forwarding is applied live (the host state step): a named change.
	cfg = old
	cfg.Forwarding = true
	if p, err := planReload(old, cfg, nil, nil); err != nil || !slices.Equal(p.changes, []string{"forwarding off → on"}) {
		t.Errorf("forwarding change: %v, %v", p, err)
	}

	cfg = old
	cfg.NHRP.HoldingTime = -time.Second
	if _, err := commit(t, old, cfg, eng, creds); err == nil {
		t.Errorf("a negative holding time was accepted")
	}

	cfg = old
	cfg.NHRP.HoldingTime = 5 * time.Minute
	creds.readErr = errors.New("ipsec: key: /etc/dmvpn/pki/s1.key is not the key of ipsec.cert")
	if _, err := commit(t, old, cfg, eng, creds); err == nil || !strings.Contains(err.Error(), "is not the key") {
		t.Errorf("credentials that do not check: %v", err)
	}
	if len(eng.got) != 0 || len(creds.loads) != 0 {
		t.Errorf("a refused reload applied something: engine %v, credential loads %d", eng.got, len(creds.loads))
	}

	// A firewall section the policy builder refuses with the node's facts
	// (the LAN zone naming an uplink's interface) refuses the plan, and
	// with it the dry run, before anything is applied.
	tbl := firewall.NewMemTable()
	fw := firewall.NewManager(tbl, firewall.Facts{Tunnel: "gre1", TunnelMTU: 1400,
		Uplinks: firewall.Uplinks{List: []firewall.Uplink{{Name: "isp1", Interface: "wan0"}}}}, nil)
	old.Firewall = &firewall.Config{Baseline: true}
	cfg = old
	cfg.Firewall = &firewall.Config{LAN: []string{"wan0"}}
	if _, err := planReload(old, cfg, nil, fw); err == nil || !strings.Contains(err.Error(), "wan0 is also in the internet zone") {
		t.Errorf("a firewall the builder refuses: %v", err)
	}
	if cur, n := tbl.Current(); cur != nil || n != 0 {
		t.Errorf("the refused plan applied a firewall")
	}
	cfg.Firewall = &firewall.Config{LAN: []string{"lan0"}}
	if p, err := planReload(old, cfg, nil, fw); err != nil || !slices.Contains(p.changes, "firewall") {
		t.Errorf("a firewall that builds: %v", err)
	}
}

// TestReloadRollsBack: a step that fails takes back what the reload had
// applied, the credentials included; the answer says it was rolled back.
func TestReloadRollsBack(t *testing.T) {
	old := baseConfig()
	cfg := old
	cfg.NHRP.HoldingTime = 5 * time.Minute
	oldSet, newSet := &ipsec.Credentials{}, &ipsec.Credentials{}

	t.Run("engine fails after the credentials", func(t *testing.T) {
		eng := &fakeEngine{fail: errors.New("engine stopped")}
		creds := &fakeCreds{inForce: oldSet, onDisk: newSet}
		_, err := commit(t, old, cfg, eng, creds)
		if !errors.Is(err, ErrReloadFailed) || errors.Is(err, ErrRollbackFailed) {
			t.Fatalf("error %v: want ErrReloadFailed", err)
		}
		// New credentials loaded, then the old ones back; the engine
		// given its old configuration back.
		if len(creds.loads) != 2 || creds.loads[0] != newSet || creds.loads[1] != oldSet || creds.inForce != oldSet {
			t.Errorf("credential loads %v, in force %p; want new then old (%p, %p)", creds.loads, creds.inForce, newSet, oldSet)
		}
		if diff := cmp.Diff([]time.Duration{10 * time.Minute}, eng.got); diff != "" {
			t.Errorf("engine configurations (-want +got):\n%s", diff)
		}
		// Nothing that cannot be taken back happened (no CRL sweep, no
		// re-authentication), and the file watch is told to leave the
		// refused set alone.
		if len(creds.committed) != 0 || len(creds.refused) != 1 || creds.refused[0] != newSet {
			t.Errorf("committed %v, refused %v: want none committed, the new set refused", creds.committed, creds.refused)
		}
	})
	t.Run("charon refuses the credentials", func(t *testing.T) {
		eng := &fakeEngine{}
		creds := &fakeCreds{inForce: oldSet, onDisk: newSet, loadErr: []error{errors.New("load-conn: failed")}}
		_, err := commit(t, old, cfg, eng, creds)
		if !errors.Is(err, ErrReloadFailed) || !strings.Contains(err.Error(), "load-conn: failed") {
			t.Fatalf("error %v: want ErrReloadFailed with charon's reason", err)
		}
		if len(eng.got) != 0 {
			t.Errorf("the engine was reconfigured after the credentials failed: %v", eng.got)
		}
		if len(creds.loads) != 2 || creds.loads[1] != oldSet || creds.inForce != oldSet {
			t.Errorf("the old credentials were not loaded back: %v", creds.loads)
		}
	})
	t.Run("rollback fails too", func(t *testing.T) {
		eng := &fakeEngine{fail: errors.New("engine stopped")}
		creds := &fakeCreds{inForce: oldSet, onDisk: newSet, loadErr: []error{nil, errors.New("charon is not reachable")}}
		_, err := commit(t, old, cfg, eng, creds)
		if !errors.Is(err, ErrRollbackFailed) || !strings.Contains(err.Error(), "charon is not reachable") {
			t.Fatalf("error %v: want ErrRollbackFailed naming the undo that failed", err)
		}
	})
	t.Run("all steps succeed", func(t *testing.T) {
		eng := &fakeEngine{}
		creds := &fakeCreds{inForce: oldSet, onDisk: newSet}
		changes, err := commit(t, old, cfg, eng, creds)
		if err != nil {
			t.Fatal(err)
		}
		if len(changes) != 2 || !strings.HasPrefix(changes[0], "holding time 10m0s → 5m0s") || !strings.Contains(changes[1], "ipsec") {
			t.Errorf("changes %q", changes)
		}
		if creds.inForce != newSet || len(eng.got) != 1 || eng.got[0] != 5*time.Minute {
			t.Errorf("not applied: credentials %p, engine %v", creds.inForce, eng.got)
		}
		if len(creds.committed) != 1 || creds.committed[0] != newSet || len(creds.refused) != 0 {
			t.Errorf("committed %v, refused %v: want the new set committed once all steps succeeded", creds.committed, creds.refused)
		}
	})
}

// TestReloadUnchangedCredentialsNotLoaded: files with the same contents
// are not loaded again, and a change of networks alone leaves the engine
// alone.
func TestReloadUnchangedCredentialsNotLoaded(t *testing.T) {
	old := baseConfig()
	cfg := old
	cfg.Networks = []netip.Prefix{netip.MustParsePrefix("10.1.0.0/24")}
	set := &ipsec.Credentials{}
	eng, creds := &fakeEngine{}, &fakeCreds{inForce: set, onDisk: set}
	changes, err := commit(t, old, cfg, eng, creds)
	if err != nil || !slices.Equal(changes, []string{"networks"}) {
		t.Fatalf("changes %q, %v", changes, err)
	}
	if len(creds.loads) != 0 || len(eng.got) != 0 {
		t.Errorf("loads %d, engine %v: want neither", len(creds.loads), eng.got)
	}
}

// TestRunStepsOrder: undo runs for the failed step and every one before
// it, last first.
func TestRunStepsOrder(t *testing.T) {
	var log []string
	mk := func(name string, fail bool) step {
		return step{name: name,
			do: func(context.Context) error {
				log = append(log, "do "+name)
				if fail {
					return errors.New("boom")
				}
				return nil
			},
			undo: func(context.Context) error { log = append(log, "undo "+name); return nil }}
	}
	err := runSteps(context.Background(), []step{mk("a", false), mk("b", false), mk("c", true), mk("d", false)})
	if !errors.Is(err, ErrReloadFailed) {
		t.Fatalf("error %v", err)
	}
	want := []string{"do a", "do b", "do c", "undo c", "undo b", "undo a"}
	if diff := cmp.Diff(want, log); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

// TestReloadPlanUplinks: uplinks added, removed or changed are a live
// change, worded per uplink; what names their kernel state (rule
// priority, route protocol, mark mask) and turning them on or off need a
// restart; an invalid list is refused before anything is applied.
func TestReloadPlanUplinks(t *testing.T) {
	probes := []netip.Addr{netip.MustParseAddr("192.0.2.253")}
	old := baseConfig()
	old.Uplinks = &failover.Config{Uplinks: []failover.Uplink{
		{Name: "isp1", Interface: "wan0", Probes: probes},
		{Name: "isp2", Interface: "wan1", Probes: probes, Preference: 1},
	}}
	with := func(edit func(*failover.Config)) Config {
		c := old
		u := *old.Uplinks
		u.Uplinks = slices.Clone(u.Uplinks)
		edit(&u)
		c.Uplinks = &u
		return c
	}
	p, err := planReload(old, with(func(c *failover.Config) {
		c.Uplinks[0].Weight = 3
		c.Uplinks = append(c.Uplinks[:1], failover.Uplink{Name: "isp3", Interface: "wan2", Probes: probes})
	}), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"uplink isp1 changed", "uplink isp3 on wan2 added", "uplink isp2 on wan1 removed"}; !p.uplinks || !cmp.Equal(p.changes, want) {
		t.Errorf("plan: uplinks %v, changes %q, want %q", p.uplinks, p.changes, want)
	}
	for name, tc := range map[string]struct {
		cfg  Config
		want string
	}{
		"rule priority": {with(func(c *failover.Config) { c.RulePriority = 2000 }), "uplinks' rule priority, route protocol or mark mask: needs a restart"},
		"off":           {func() Config { c := old; c.Uplinks = nil; return c }(), "uplinks on or off: needs a restart"},
	} {
		_, err := planReload(old, tc.cfg, nil, nil)
		var re *RestartError
		if !errors.As(err, &re) || !slices.Equal(re.Reasons(), []string{tc.want}) {
			t.Errorf("%s: %v, want %q", name, err, tc.want)
		}
	}
	if _, err := planReload(old, with(func(c *failover.Config) { c.Uplinks[1].Probes = nil }), nil, nil); !errors.Is(err, failover.ErrConfig) {
		t.Errorf("an uplink without probe hosts: %v", err)
	}
}
