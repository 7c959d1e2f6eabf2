package firewall

import (
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// hubPolicy is a hub with kernel ESP, two uplinks (marks, NAT), explicit
// zones and user rules.
func hubPolicy() Policy {
	return Policy{
		Config: Config{
			Internet: []string{"wan0"},
			LAN:      []string{"lan0"},
			Rules: []UserRule{
				{From: ZoneLAN, To: ZoneLocal, Protocol: ProtoTCP, Ports: []uint16{22}, Action: VerdictAccept, Where: "firewall.rules[0] (line 12)"},
				{From: ZoneInternet, To: ZoneLAN, Protocol: ProtoTCP, Ports: []uint16{80, 443}, Destination: netip.MustParsePrefix("10.1.0.10/32"), Action: VerdictAccept},
				{From: ZoneTunnel, To: ZoneLAN, Source: netip.MustParsePrefix("172.16.0.0/16"), Protocol: ProtoUDP, Ports: []uint16{53}, Action: VerdictReject},
				{From: ZoneLAN, To: ZoneInternet, Protocol: ProtoICMP, Action: VerdictDrop},
			},
		},
		Facts: Facts{
			Tunnel: "gre1", TunnelMTU: 1400, Hub: true, IPsec: IPsecKernel,
			ManagementPorts: []uint16{9474, 9475},
			Uplinks: Uplinks{List: []Uplink{
				{Name: "isp1", Interface: "wan0", Mark: 0x100, Masquerade: true},
				{Name: "isp2", Interface: "wan1", Mark: 0x200, Masquerade: true},
			}},
		},
	}
}

// spokePolicy is a spoke on userspace ESP, the LAN by default.
func spokePolicy() Policy {
	return Policy{
		Config: Config{Internet: []string{"eth0"}},
		Facts:  Facts{Tunnel: "dmvpn0", TunnelMTU: 1372, IPsec: IPsecUserspace, IPsecTUN: "ipsec0"},
	}
}

// baselinePolicy is a hub with kernel ESP and no firewall section: the
// baseline, its uplinks' interfaces the only zone (marks, no NAT).
func baselinePolicy() Policy {
	p := hubPolicy()
	p.Config = Config{Baseline: true}
	for i := range p.Uplinks.List {
		p.Uplinks.List[i].Masquerade = false
	}
	return p
}

// clearPolicy runs without IPsec, one uplink masqueraded without marks.
func clearPolicy() Policy {
	return Policy{
		Config: Config{},
		Facts: Facts{Tunnel: "gre1", TunnelMTU: 1476,
			Uplinks: Uplinks{List: []Uplink{{Name: "wan", Interface: "eth0", Masquerade: true}}}},
	}
}

func TestBuildGolden(t *testing.T) {
	for name, p := range map[string]Policy{"hub_kernel": hubPolicy(), "spoke_userspace": spokePolicy(), "clear": clearPolicy(), "hub_baseline": baselinePolicy()} {
		t.Run(name, func(t *testing.T) {
			rs, err := Build(p)
			if err != nil {
				t.Fatal(err)
			}
			got := rs.Text()
			path := filepath.Join("testdata", name+".nft")
			if *update {
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if d := cmp.Diff(string(want), got); d != "" {
				t.Errorf("rule text differs from %s (-want +got):\n%s", path, d)
			}
		})
	}
}

// ruleText returns the text of the named rule.
func ruleText(t *testing.T, rs *Ruleset, name string) string {
	t.Helper()
	r, _, ok := rs.Rule(name)
	if !ok {
		t.Fatalf("no rule %s", name)
	}
	return r.Text()
}

func TestBuildSecurityRules(t *testing.T) {
	tests := []struct {
		name   string
		policy Policy
		rule   string
		want   string // the rule's text without counter and comment
		absent []string
	}{
		{"kernel GRE needs a secpath", hubPolicy(), "in_gre_ipsec", "meta l4proto gre meta ipsec exists accept", []string{"in_gre"}},
		{"kernel GRE leaves only under IPsec", hubPolicy(), "out_gre_clear", "meta l4proto gre rt ipsec missing drop", nil},
		{"userspace GRE only from charon's TUN", spokePolicy(), "in_gre_ipsec", `iifname "ipsec0" meta l4proto gre accept`, nil},
		{"userspace GRE leaves only into charon's TUN", spokePolicy(), "out_gre_clear", `meta l4proto gre oifname != "ipsec0" drop`, nil},
		{"clear GRE counted", hubPolicy(), "in_gre_clear", "meta l4proto gre drop", nil},
		{"no IPsec: GRE from the internet", clearPolicy(), "in_gre", `iifname @internet meta l4proto gre accept`, []string{"out_gre_clear", "in_gre_ipsec"}},
		{"BGP on the tunnel", hubPolicy(), "in_bgp", `iifname "gre1" tcp dport 179 accept`, nil},
		{"BGP elsewhere dropped", hubPolicy(), "in_bgp_other", "tcp dport 179 drop", nil},
		{"management never from the internet", hubPolicy(), "in_management", `iifname @internet tcp dport { 9474, 9475 } drop`, nil},
		{"MSS into the tunnel", hubPolicy(), "fwd_mss_out", `oifname "gre1" tcp flags syn / syn,rst tcp option maxseg size set rt mtu`, nil},
		{"MSS out of the tunnel", hubPolicy(), "fwd_mss_in", `iifname "gre1" meta nfproto ipv4 tcp flags syn / syn,rst tcp option maxseg size > 1360 tcp option maxseg size set 1360`, nil},
		{"hub relays", hubPolicy(), "fwd_tunnel_tunnel", `iifname "gre1" oifname "gre1" accept`, nil},
		{"hub: invalid dropped unless tunnel to tunnel", hubPolicy(), "fwd_invalid", `iifname != "gre1" ct state invalid drop`, nil},
		{"hub: invalid into the tunnel from elsewhere dropped", hubPolicy(), "fwd_invalid_out", `oifname != "gre1" ct state invalid drop`, nil},
		{"spoke: invalid dropped", spokePolicy(), "fwd_invalid", "ct state invalid drop", []string{"fwd_invalid_out"}},
		{"spoke does not relay", spokePolicy(), "fwd_lan_tunnel", `iifname != @not_lan oifname "dmvpn0" accept`, []string{"fwd_tunnel_tunnel"}},
		{"LAN by default", spokePolicy(), "in_lan", `iifname != @not_lan accept`, nil},
		{"masquerade only the LAN", hubPolicy(), "nat_isp2", `oifname "wan1" iifname @lan masquerade`, nil},
		{"masquerade without LAN list skips the router's own", clearPolicy(), "nat_wan", `oifname "eth0" iif != 0 iifname != @not_lan masquerade`, []string{"mark_new_wan"}},
		{"charon's marked packets left alone", hubPolicy(), "mark_out_isp1", "meta mark 0x00000000 ct mark & 0x0000ff00 == 0x00000100 meta mark set meta mark & 0xffff01ff ^ 0x00000100", nil},
		{"restore not for packets from the internet", hubPolicy(), "mark_restore_isp2", `iifname != @internet ct mark & 0x0000ff00 == 0x00000200 meta mark set meta mark & 0xffff02ff ^ 0x00000200`, nil},
		{"save the first uplink", hubPolicy(), "mark_save_isp2", `oifname "wan1" ct mark & 0x0000ff00 == 0x00000000 ct mark set ct mark & 0xffff02ff ^ 0x00000200`, nil},
		{"user rule", hubPolicy(), "user_2", `iifname @internet oifname @lan tcp dport { 80, 443 } ip daddr 10.1.0.10 accept`, nil},
		{"user reject", hubPolicy(), "user_3", `iifname "gre1" oifname @lan udp dport 53 ip saddr 172.16.0.0/16 reject`, nil},
		{"policy drop counted", hubPolicy(), "in_drop", "drop", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rs, err := Build(tt.policy)
			if err != nil {
				t.Fatal(err)
			}
			r, _, ok := rs.Rule(tt.rule)
			if !ok {
				t.Fatalf("no rule %s", tt.rule)
			}
			got := strings.TrimSpace(strings.Replace(r.Text(), `counter name "`+r.Name+`" `, "", 1))
			if i := strings.Index(got, " comment "); i >= 0 {
				got = got[:i]
			}
			if got != tt.want {
				t.Errorf("rule %s:\n got %s\nwant %s", tt.rule, got, tt.want)
			}
			for _, a := range tt.absent {
				if _, _, ok := rs.Rule(a); ok {
					t.Errorf("rule %s present", a)
				}
			}
		})
	}
}

// The rules that keep GRE in IPsec come before anything that could accept
// GRE, and the counted drop of the rest is last.
func TestBuildOrder(t *testing.T) {
	for name, p := range map[string]Policy{"hub": hubPolicy(), "spoke": spokePolicy()} {
		rs, err := Build(p)
		if err != nil {
			t.Fatal(err)
		}
		in := rs.Chains[0]
		if in.Name != "input" || !in.Drop {
			t.Fatalf("%s: first chain %s (drop %v)", name, in.Name, in.Drop)
		}
		idx := map[string]int{}
		for i, r := range in.Rules {
			idx[r.Name] = i
		}
		if idx["in_gre_clear"] < idx["in_gre_ipsec"] || idx["in_gre_clear"] > idx["in_lan"] || idx["in_gre_clear"] > idx["in_ping"] {
			t.Errorf("%s: GRE drop out of place: %v", name, idx)
		}
		if idx["in_bgp_other"] > idx["in_lan"] {
			t.Errorf("%s: BGP drop after the LAN accept", name)
		}
		// conntrack takes GRE in clear for a reply of the router's own
		// GRE: GRE and BGP are judged before the connection state.
		for _, r := range []string{"in_gre_clear", "in_bgp_other", "in_management"} {
			if i, ok := idx[r]; ok && i > idx["in_established"] {
				t.Errorf("%s: %s after in_established", name, r)
			}
		}
		if last := in.Rules[len(in.Rules)-1]; last.Name != "in_drop" || len(last.Match) != 0 {
			t.Errorf("%s: last input rule %s", name, last.Name)
		}
		if mp, ok := idx["in_management"]; ok && (mp > idx["user_1"] && idx["user_1"] > 0) {
			t.Errorf("%s: management drop after a user rule", name)
		}
	}
}

func TestBuildRefuses(t *testing.T) {
	tests := []struct {
		name string
		edit func(*Policy)
		want string
	}{
		{"no internet zone", func(p *Policy) { p.Internet, p.Uplinks = nil, Uplinks{} }, "internet zone has no interface"},
		{"mask on charon's mark", func(p *Policy) { p.Uplinks.MarkMask = 0xff }, "overlaps charon's mark"},
		{"mark outside the mask", func(p *Policy) { p.Uplinks.List[0].Mark = 0x10000 }, "outside the mask"},
		{"same mark twice", func(p *Policy) { p.Uplinks.List[1].Mark = 0x100 }, "is also uplink isp1's"},
		{"interface in two zones", func(p *Policy) { p.LAN = []string{"wan1"} }, "also in the internet zone"},
		{"tunnel as LAN", func(p *Policy) { p.LAN = []string{"gre1"} }, "also in the tunnel zone"},
		{"wildcard zone", func(p *Policy) { p.LAN = []string{"eth*"} }, "no wildcards"},
		{"ports without tcp", func(p *Policy) { p.Rules[0].Protocol = ProtoICMP }, "firewall.rules[0] (line 12): ports need protocol tcp or udp"},
		{"bad zone", func(p *Policy) { p.Rules[1].From = "dmz" }, "rule 2: zones"},
		{"from local", func(p *Policy) { p.Rules[1].From = ZoneLocal }, "from local"},
		{"bad action", func(p *Policy) { p.Rules[1].Action = "log" }, `action "log"`},
		{"bad MTU", func(p *Policy) { p.TunnelMTU = 0 }, "tunnel MTU 0"},
		{"baseline with zones and rules", func(p *Policy) { p.Baseline = true }, "the baseline policy has no zones or rules"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := hubPolicy()
			tt.edit(&p)
			_, err := Build(p)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want one containing %q", err, tt.want)
			}
		})
	}
}

// The zones are named sets; by default the LAN is what is not loopback,
// the tunnel, the internet or charon's TUN.
func TestBuildZoneSets(t *testing.T) {
	rs, err := Build(spokePolicy())
	if err != nil {
		t.Fatal(err)
	}
	want := []Set{{Name: "internet", Names: []string{"eth0"}}, {Name: "not_lan", Names: []string{"lo", "dmvpn0", "eth0", "ipsec0"}}}
	if d := cmp.Diff(want, rs.Sets); d != "" {
		t.Errorf("sets (-want +got):\n%s", d)
	}
	p := hubPolicy()
	p.Internet = []string{"wan0", "wan2"}
	if rs, err = Build(p); err != nil {
		t.Fatal(err)
	}
	want = []Set{{Name: "internet", Names: []string{"wan0", "wan2", "wan1"}}, {Name: "lan", Names: []string{"lan0"}}}
	if d := cmp.Diff(want, rs.Sets); d != "" {
		t.Errorf("sets (-want +got):\n%s", d)
	}
}

// The baseline (IPsec, no firewall section) holds only the protective
// rules, in the same words as the full policy's, and accepts the rest by
// policy; without uplinks it has no internet zone and no management rule.
func TestBuildBaseline(t *testing.T) {
	full, err := Build(hubPolicy())
	if err != nil {
		t.Fatal(err)
	}
	rs, err := Build(baselinePolicy())
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, c := range rs.Chains {
		if (c.Name == "input" || c.Name == "forward") && c.Drop {
			t.Errorf("chain %s drops by policy", c.Name)
		}
		for _, r := range c.Rules {
			names = append(names, r.Name)
			if fr, _, ok := full.Rule(r.Name); !ok || fr.Text() != r.Text() {
				t.Errorf("rule %s is not the full policy's: %s", r.Name, r.Text())
			}
		}
	}
	want := []string{"in_management", "in_gre_ipsec", "in_gre_clear", "in_bgp", "in_bgp_other", "fwd_mss_out", "fwd_mss_in", "fwd_mss_in6",
		"out_gre_clear", "mark_new_isp1", "mark_new_isp2", "mark_restore_isp1", "mark_restore_isp2", "mark_out_isp1", "mark_out_isp2",
		"mark_save_isp1", "mark_save_isp2"}
	if d := cmp.Diff(want, names); d != "" {
		t.Errorf("baseline rules (-want +got):\n%s", d)
	}
	p := spokePolicy()
	p.Config = Config{Baseline: true}
	p.ManagementPorts = []uint16{9474}
	if rs, err = Build(p); err != nil {
		t.Fatal(err)
	}
	if _, _, ok := rs.Rule("in_management"); ok {
		t.Error("a management rule without an internet zone")
	}
	for _, st := range rs.Sets {
		if st.Name == setInternet {
			t.Errorf("an internet set without uplinks: %v", st)
		}
	}
	if got := ruleText(t, rs, "in_gre_ipsec"); !strings.HasPrefix(got, `iifname "ipsec0" meta l4proto gre`) {
		t.Errorf("in_gre_ipsec = %s", got)
	}
}

// Without charon's TUN known yet, userspace mode accepts no GRE at all and
// lets none leave.
func TestBuildUserspaceWithoutTUN(t *testing.T) {
	p := spokePolicy()
	p.IPsecTUN = ""
	rs, err := Build(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, ok := rs.Rule("in_gre_ipsec"); ok {
		t.Error("GRE accepted without charon's TUN")
	}
	if got := ruleText(t, rs, "out_gre_clear"); !strings.HasPrefix(got, `meta l4proto gre counter`) {
		t.Errorf("out_gre_clear = %s", got)
	}
}

// locate names the first refused rule with a logarithmic number of checks.
func TestLocate(t *testing.T) {
	rs, err := Build(hubPolicy())
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < rs.Len(); i++ {
		bad, _ := rs.ruleAt(i)
		checks := 0
		got, _ := locate(rs, func(p *Ruleset) error {
			checks++
			if _, _, ok := p.Rule(bad.Name); ok {
				return os.ErrInvalid
			}
			return nil
		})
		if got != i {
			t.Fatalf("rule %d (%s): located %d", i, bad.Name, got)
		}
		if checks > 10 {
			t.Errorf("rule %d: %d checks", i, checks)
		}
	}
}
