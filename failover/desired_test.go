package failover

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/opendmvpn/dmvpn/host"
)

func twoUplinks(prefs ...int) Config {
	c := Config{Uplinks: []Uplink{
		{Name: "isp1", Interface: "wan0", Probes: []netip.Addr{netip.MustParseAddr("192.0.2.253")}, Weight: 3},
		{Name: "isp2", Interface: "wan1", Probes: []netip.Addr{netip.MustParseAddr("203.0.113.253")}},
	}}
	for i, p := range prefs {
		c.Uplinks[i].Preference = p
	}
	return c.WithDefaults()
}

func views(c Config, states ...State) []view {
	addrs := []string{"198.51.100.1/28", "203.0.113.65/28"}
	gws := []string{"198.51.100.14", "203.0.113.78"}
	var vs []view
	for i, u := range c.Uplinks {
		vs = append(vs, view{cfg: u, index: 10 + i, addr: netip.MustParsePrefix(addrs[i]), gateway: netip.MustParseAddr(gws[i]), state: states[i]})
	}
	return vs
}

type rendered struct {
	Routes, Rules []string
	Main          []string
	Active        string
	NBMA          []string
	FailOpen      bool
}

func render(d Desired) rendered {
	var r rendered
	for _, x := range d.Routes {
		r.Routes = append(r.Routes, x.String())
	}
	for _, x := range d.Rules {
		r.Rules = append(r.Rules, x.String())
	}
	for _, a := range d.NBMA {
		r.NBMA = append(r.NBMA, a.String())
	}
	r.Main, r.Active, r.FailOpen = d.Main, d.Active, d.FailOpen
	return r
}

// The tables and rules of both uplinks stay whatever their state; only
// the main table's default and the GRE rule follow the states.
func TestDesired(t *testing.T) {
	tables := []string{
		"ipv4 table 101 0.0.0.0/0 via 198.51.100.14 dev wan0 onlink",
		"ipv4 table 102 0.0.0.0/0 via 203.0.113.78 dev wan1 onlink",
	}
	main := func(s string) []string { return append(slices.Clone(tables), "ipv4 table main 0.0.0.0/0 "+s) }
	rules := func(greTable string) []string {
		return []string{
			"ipv4 1100: all lookup main suppress_prefixlength 0",
			"ipv4 1101: ipproto 47 lookup " + greTable,
			"ipv4 1102: from 198.51.100.1/32 lookup 101",
			"ipv4 1103: fwmark 0x100/0xff00 lookup 101",
			"ipv4 1104: from 203.0.113.65/32 lookup 102",
			"ipv4 1105: fwmark 0x200/0xff00 lookup 102",
		}
	}
	for _, tc := range []struct {
		name   string
		cfg    Config
		states []State
		want   rendered
	}{
		{
			name: "preferred up", cfg: twoUplinks(0, 1), states: []State{StateUp, StateUp},
			want: rendered{
				Routes: main("via 198.51.100.14 dev wan0 onlink"),
				Rules:  rules("101"), Main: []string{"isp1"}, Active: "isp1", NBMA: []string{"198.51.100.1", "203.0.113.65"},
			},
		},
		{
			name: "preferred down", cfg: twoUplinks(0, 1), states: []State{StateDown, StateUp},
			want: rendered{
				Routes: main("via 203.0.113.78 dev wan1 onlink"),
				Rules:  rules("102"), Main: []string{"isp2"}, Active: "isp2", NBMA: []string{"203.0.113.65", "198.51.100.1"},
			},
		},
		{
			name: "balanced", cfg: twoUplinks(0, 0), states: []State{StateUp, StateUp},
			want: rendered{
				Routes: main("nexthop via 198.51.100.14 dev wan0 onlink weight 3 nexthop via 203.0.113.78 dev wan1 onlink weight 1"),
				Rules:  rules("101"), Main: []string{"isp1", "isp2"}, Active: "isp1", NBMA: []string{"198.51.100.1", "203.0.113.65"},
			},
		},
		{
			name: "balanced, one down", cfg: twoUplinks(0, 0), states: []State{StateUp, StateDown},
			want: rendered{
				Routes: main("via 198.51.100.14 dev wan0 onlink"),
				Rules:  rules("101"), Main: []string{"isp1"}, Active: "isp1", NBMA: []string{"198.51.100.1", "203.0.113.65"},
			},
		},
		{
			name: "all down: fail open over the preferred", cfg: twoUplinks(0, 1), states: []State{StateDown, StateDown},
			want: rendered{
				Routes: main("via 198.51.100.14 dev wan0 onlink"),
				Rules:  rules("101"), Main: []string{"isp1"}, Active: "isp1", NBMA: []string{"198.51.100.1", "203.0.113.65"}, FailOpen: true,
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := render(desired(tc.cfg, views(tc.cfg, tc.states...)))
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("desired state (-want +got):\n%s", d)
			}
		})
	}
}

// An uplink without an address or a gateway gets nothing: no table, no
// rule, no default; the node's NBMA addresses are the others'.
func TestDesiredUnusable(t *testing.T) {
	c := twoUplinks(0, 1)
	vs := views(c, StateUp, StateUp)
	vs[0].gateway = netip.Addr{}
	got := render(desired(c, vs))
	want := rendered{
		Routes: []string{
			"ipv4 table 102 0.0.0.0/0 via 203.0.113.78 dev wan1 onlink",
			"ipv4 table main 0.0.0.0/0 via 203.0.113.78 dev wan1 onlink",
		},
		Rules: []string{
			"ipv4 1100: all lookup main suppress_prefixlength 0",
			"ipv4 1101: ipproto 47 lookup 102",
			"ipv4 1104: from 203.0.113.65/32 lookup 102",
			"ipv4 1105: fwmark 0x200/0xff00 lookup 102",
		},
		Main: []string{"isp2"}, Active: "isp2", NBMA: []string{"203.0.113.65"},
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("desired state (-want +got):\n%s", d)
	}
	vs[1].index = 0
	if got := desired(c, vs); len(got.Routes) != 0 || len(got.NBMA) != 0 || got.Active != "" {
		t.Errorf("no usable uplink: got routes %v, NBMA %v, active %q", got.Routes, got.NBMA, got.Active)
	}
}

// The owner claims the priorities the rules of MaxUplinks uplinks use,
// whatever the number configured now (a reload may add uplinks), and no
// other.
func TestOwner(t *testing.T) {
	c := twoUplinks(0, 1)
	o := c.Owner()
	if o.RouteProtocol != DefaultProtocol {
		t.Errorf("owner's route protocol %d", o.RouteProtocol)
	}
	full := c
	for i := len(full.Uplinks); i < MaxUplinks; i++ {
		u := c.Uplinks[0]
		u.Name, u.Interface, u.Table, u.Mark = fmt.Sprintf("isp%d", i+1), fmt.Sprintf("wan%d", i), 0, 0
		full.Uplinks = append(full.Uplinks, u)
	}
	full = Config{Uplinks: full.Uplinks}.WithDefaults()
	if err := full.Validate(); err != nil {
		t.Fatal(err)
	}
	var vs []view
	for i, u := range full.Uplinks {
		vs = append(vs, view{cfg: u, index: 10 + i, addr: netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 51, 100, byte(1 + 16*i)}), 28),
			gateway: netip.AddrFrom4([4]byte{198, 51, 100, byte(14 + 16*i)})})
	}
	used := map[int]bool{}
	for _, r := range desired(full, vs).Rules {
		used[r.Priority] = true
		if !slices.Contains(o.RulePriorities, r.Priority) {
			t.Errorf("rule %v outside the owner's priorities %v", r, o.RulePriorities)
		}
	}
	if len(used) != len(o.RulePriorities) {
		t.Errorf("the owner claims %d priorities, %d uplinks use %d", len(o.RulePriorities), MaxUplinks, len(used))
	}
}

func TestDesiredSysctls(t *testing.T) {
	c := twoUplinks(0, 1)
	got := desired(c, views(c, StateUp, StateUp)).Sysctls
	want := []host.Sysctl{
		{Key: "net/ipv4/fib_multipath_hash_policy", Value: "1", Restore: true},
		{Key: "net/ipv4/fib_multipath_use_neigh", Value: "1", Restore: true},
		{Key: "net/ipv4/conf/wan0/rp_filter", Value: "2", Optional: true, Restore: true},
		{Key: "net/ipv4/conf/wan1/rp_filter", Value: "2", Optional: true, Restore: true},
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("sysctls (-want +got):\n%s", d)
	}
}

func TestConfigValidate(t *testing.T) {
	good := twoUplinks(0, 1)
	if err := good.Validate(); err != nil {
		t.Fatalf("valid configuration refused: %v", err)
	}
	for _, tc := range []struct {
		name string
		edit func(c *Config)
		want string
	}{
		{"mask over charon's mark", func(c *Config) { c.MarkMask = 0xff }, "overlaps charon's mark"},
		{"same interface", func(c *Config) { c.Uplinks[1].Interface = "wan0" }, "interface wan0 is used by another uplink"},
		{"same table", func(c *Config) { c.Uplinks[1].Table = 101 }, "table 101 is used"},
		{"charon's table", func(c *Config) { c.Uplinks[0].Table = 220 }, "table 220 is reserved"},
		{"mark outside mask", func(c *Config) { c.Uplinks[0].Mark = 0x1 }, "within the mask"},
		{"no probes", func(c *Config) { c.Uplinks[0].Probes = nil }, "no probe hosts"},
		{"IPv6 probe", func(c *Config) { c.Uplinks[0].Probes = []netip.Addr{netip.MustParseAddr("2001:db8::1")} }, "unicast IPv4"},
		{"timeout over interval", func(c *Config) { c.Uplinks[0].Timeout = c.Uplinks[0].Interval * 2 }, "timeout"},
		{"too many hosts required", func(c *Config) { c.Uplinks[0].HostsRequired = 2 }, "hosts_required 2"},
		{"weight", func(c *Config) { c.Uplinks[0].Weight = 300 }, "weight 300"},
		{"rule priority", func(c *Config) { c.RulePriority = 100 }, "rule priority 100"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := good
			c.Uplinks = append([]Uplink(nil), good.Uplinks...)
			tc.edit(&c)
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate = %v, want an error with %q", err, tc.want)
			}
		})
	}
}
