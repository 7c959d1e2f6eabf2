package config

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/opendmvpn/dmvpn/firewall"
)

// withFirewall is a file with a firewall section; the control API on TCP
// needs TLS and a token (their files in dir), written as a flow mapping
// over the two lines the listener had.
func withFirewall(t *testing.T) string {
	dir := t.TempDir()
	cert, key := writeTLS(t, dir)
	tok := filepath.Join(dir, "token")
	if err := os.WriteFile(tok, []byte("0123456789abcdef0123\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf(withFirewallFmt, cert, key, tok)
}

const withFirewallFmt = minimal + `ipsec: off
metrics:
  listen: 0.0.0.0:9474
control: {tls_cert: %s, tls_key: %s, token_file: %s,
  listen: 192.0.2.10:9475}
firewall:
  zones:
    internet: [eth0, eth1]
    lan: [eth2]
  rules:
    - from: lan
      to: local
      protocol: tcp
      ports: 22
      action: accept
    - from: internet
      to: lan
      protocol: udp
      ports: [53, 5353]
      destination: 10.1.0.10
      action: accept
    - from: tunnel
      to: lan
      protocol: 132
      source: 172.16.0.0/16
      action: reject
`

func TestFirewallSection(t *testing.T) {
	c, err := Parse([]byte(withFirewall(t)), "fw.yaml")
	if err != nil {
		t.Fatal(err)
	}
	got := c.Daemon(Runtime{})
	want := &firewall.Config{
		Internet: []string{"eth0", "eth1"},
		LAN:      []string{"eth2"},
		Rules: []firewall.UserRule{
			{From: "lan", To: "local", Protocol: firewall.ProtoTCP, Ports: []uint16{22}, Action: "accept", Where: "firewall.rules[0] (line 19)"},
			{From: "internet", To: "lan", Protocol: firewall.ProtoUDP, Ports: []uint16{53, 5353}, Destination: netip.MustParsePrefix("10.1.0.10/32"), Action: "accept", Where: "firewall.rules[1] (line 24)"},
			{From: "tunnel", To: "lan", Protocol: 132, Source: netip.MustParsePrefix("172.16.0.0/16"), Action: "reject", Where: "firewall.rules[2] (line 30)"},
		},
	}
	if d := cmp.Diff(want, got.Firewall, cmpNet...); d != "" {
		t.Errorf("firewall (-want +got):\n%s", d)
	}
	if d := cmp.Diff([]uint16{9475, 9474}, got.ManagementPorts); d != "" {
		t.Errorf("management ports (-want +got):\n%s", d)
	}
	back, err := Parse(c.YAML(), "rendered")
	if err != nil {
		t.Fatalf("rendered: %v\n%s", err, c.YAML())
	}
	if d := cmp.Diff(c, back, cmpNet...); d != "" {
		t.Errorf("round trip (-file +rendered):\n%s", d)
	}
	// The policy builds.
	if _, err := firewall.Build(firewall.Policy{Config: *got.Firewall, Facts: firewall.Facts{Tunnel: "gre1", TunnelMTU: 1400}}); err != nil {
		t.Errorf("Build: %v", err)
	}
	// Without the section: no firewall, and loopback listeners are no
	// management ports.
	c, err = Parse([]byte(minimal+"ipsec: off\n"), "min.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if d := c.Daemon(Runtime{}); d.Firewall != nil || len(d.ManagementPorts) != 0 {
		t.Errorf("firewall %v, ports %v", d.Firewall, d.ManagementPorts)
	}
}

// Without a firewall section a node with IPsec runs the baseline; the
// file turns even that off with `firewall: off`, which renders back.
func TestFirewallBaselineAndOff(t *testing.T) {
	c := &Config{IPsec: &IPsec{}}
	if d := cmp.Diff(&firewall.Config{Baseline: true}, c.FirewallPolicy()); d != "" {
		t.Errorf("IPsec without a section (-want +got):\n%s", d)
	}
	c.FirewallOff = true
	if p := c.FirewallPolicy(); p != nil {
		t.Errorf("firewall: off runs %+v", p)
	}
	c, err := Parse([]byte(minimal+"ipsec: off\nfirewall: off\n"), "off.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !c.FirewallOff || c.Firewall != nil || c.Daemon(Runtime{}).Firewall != nil {
		t.Errorf("firewall: off parsed as off %v, section %v", c.FirewallOff, c.Firewall)
	}
	if !strings.Contains(string(c.YAML()), "\nfirewall: \"off\"\n") && !strings.Contains(string(c.YAML()), "\nfirewall: off\n") {
		t.Errorf("rendered without firewall: off:\n%s", c.YAML())
	}
	back, err := Parse(c.YAML(), "rendered")
	if err != nil || !back.FirewallOff {
		t.Errorf("rendered file: %v, off %v", err, back != nil && back.FirewallOff)
	}
	got := errorLines(t, minimal+"ipsec: off\nfirewall: on\n")
	if d := cmp.Diff([]string{`line 10: firewall: want a mapping (zones, rules) or off, got the string "on"`}, got); d != "" {
		t.Errorf("firewall: on (-want +got):\n%s", d)
	}
}

func TestFirewallSectionErrors(t *testing.T) {
	base := minimal + "ipsec: off\n"
	tests := []struct {
		name, file string
		want       []string
	}{
		{"no internet zone", base + "firewall:\n  zones:\n    lan: [eth1]\n",
			[]string{"line 11: firewall.zones.internet: missing: list the internet (uplink) interfaces, or configure uplinks"}},
		{"interface twice", base + "firewall:\n  zones:\n    internet: [eth0]\n    lan: [eth1, eth0]\n",
			[]string{"line 13: firewall.zones.lan[1]: eth0 is also in the internet zone"}},
		{"tunnel in a zone", base + "firewall:\n  zones:\n    internet: [gre1]\n",
			[]string{"line 12: firewall.zones.internet[0]: gre1 is also the tunnel"}},
		{"wildcard", base + "firewall:\n  zones:\n    internet: [\"eth*\"]\n",
			[]string{`line 12: firewall.zones.internet[0]: "eth*": an interface name is 1-15 bytes without '/', '*', quotes or spaces`}},
		{"rule errors", base + `firewall:
  zones:
    internet: [eth0]
  rules:
    - from: local
      to: dmz
      protocol: sctpx
      ports: [0, 22]
      action: log
    - to: local
      protocol: icmp
      ports: 22
`, []string{
			`line 14: firewall.rules[0].from: "local" is not one of internet, tunnel, lan`,
			`line 15: firewall.rules[0].to: "dmz" is not one of internet, tunnel, lan, local`,
			`line 16: firewall.rules[0].protocol: "sctpx": want tcp, udp, icmp, icmpv6, gre, esp or a protocol number`,
			"line 17: firewall.rules[0].ports[0]: 0 out of range 1-65535",
			`line 18: firewall.rules[0].action: "log" is not one of accept, drop, reject`,
			"line 19: firewall.rules[1].from: missing (internet, tunnel or lan)",
			"line 19: firewall.rules[1].action: missing (accept, drop or reject)",
			"line 21: firewall.rules[1].ports: ports need protocol tcp or udp",
		}},
		{"unknown key", base + "firewall:\n  zones:\n    internet: [eth0]\n  policy: drop\n",
			[]string{`line 13: firewall.policy: unknown key "policy" (known keys: rules, zones)`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if d := cmp.Diff(tt.want, errorLines(t, tt.file)); d != "" {
				t.Errorf("errors (-want +got):\n%s", d)
			}
		})
	}
}
