package config

import (
	"bytes"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/opendmvpn/dmvpn/daemon"
	"github.com/opendmvpn/dmvpn/gre"
	"github.com/opendmvpn/dmvpn/gre/backend"
	"github.com/opendmvpn/dmvpn/internal/pki"
	"github.com/opendmvpn/dmvpn/nhrp"
)

// minimal is the smallest valid spoke; bad files are built from it.
const minimal = `node: s1
role: spoke
tunnel:
  interface: gre1
  address: 172.16.1.1/16
  nhs:
    - address: 172.16.0.1
      nbma: 192.0.2.1
`

// errorLines parses a file that must be invalid and returns its errors,
// one string each.
func errorLines(t *testing.T, file string) []string {
	t.Helper()
	c, err := Parse([]byte(file), "test.yaml")
	if err == nil {
		t.Fatalf("Parse accepted:\n%s\nas %+v", file, c)
	}
	if c != nil {
		t.Errorf("Parse returned a Config with its error")
	}
	if !errors.Is(err, ErrInvalid) {
		t.Errorf("error %v does not wrap ErrInvalid", err)
	}
	var es *Errors
	if !errors.As(err, &es) {
		t.Fatalf("error %T is not *Errors", err)
	}
	var out []string
	for _, e := range es.List {
		out = append(out, e.Error())
	}
	return out
}

// inClear adds `ipsec: off` at the end of a file (after every line the
// tests count): a node without IPsec must say so.
func inClear(file string) string { return file + "ipsec: off\n" }

func TestBadFiles(t *testing.T) {
	tests := []struct {
		name string
		file string
		want []string
	}{
		{"empty", ``, []string{"the file is empty"}},
		{"syntax", "node: a\n  role: [\n", []string{"line 2, column 7: YAML syntax: mapping values are not allowed in this context"}},
		// yaml v3 said "line 5: did not find expected key": the
		// line where the mapping began, counted from 0.
		{"syntax: a key indented wrong", "node: a\nrole: hub\ntunnel:\n  interface: gre1\n  address: 172.16.0.1/16\n key: 5\n", []string{
			"line 6, column 2: YAML syntax: did not find expected key (while parsing a block mapping at line 1, column 1)"}},
		{"syntax: an unclosed list", "node: a\nrole: hub\nnetworks: [10.1.0.0/24\ntunnel: {}\n", []string{
			"line 4, column 7: YAML syntax: did not find expected ',' or ']' (while parsing a flow sequence at line 3, column 11)"}},
		{"syntax: a tab", "node: a\n\trole: hub\n", []string{
			"line 2, column 1: YAML syntax: found a tab character that violates indentation (while scanning a plain scalar at line 1, column 7)"}},
		{"syntax: an unknown alias", "node: *n\n", []string{"line 1, column 7: YAML syntax: unknown anchor 'n' referenced"}},
		{"two servers with one tunnel address", minimal + "    - address: 172.16.0.1\n      nbma: 192.0.2.17\n", []string{
			"line 9: tunnel.nhs[1].address: 172.16.0.1 is also tunnel.nhs[0]'s, at another NBMA address: one server, one NBMA address"}},
		{"not a mapping", "- a\n- b\n", []string{"line 1: want a mapping of sections (node, role, tunnel, …), got a list"}},
		{"no ipsec section", minimal, []string{"ipsec: missing: configure IPsec (ca, cert and key), or write `ipsec: off` to run NHRP and GRE in clear"}},
		{"ipsec neither a section nor off", minimal + "ipsec: on\n", []string{`line 9: ipsec: want a mapping (mode, ca, cert, key, …) or off, got the string "on"`}},
		{"unknown top-level section", minimal + "zebra:\n  asn: 65000\n", []string{
			`line 9: zebra: unknown key "zebra" (known keys: bgp, control, firewall, forwarding, ipsec, limits, logging, metrics, networks, node, policy, role, tunnel, uplinks)`}},
		{"unknown nested key", strings.Replace(minimal, "  interface: gre1\n", "  interface: gre1\n  mode: gre\n", 1), []string{
			`line 5: tunnel.mode: unknown key "mode" (known keys: address, authentication, dataplane, holding_time, interface, key, max_nhs, max_registration_holding, max_send, mtu, multicast, multicast_nbma, nhs, no_unique, purge_on_shutdown, redirect, redirect_group, registration_interval, shortcut, shortcut_idle, shortcut_protocol, shortcut_rule_priority, shortcut_table, source, state_file, static_maps, ttl)`}},
		{"key set twice", minimal + "node: s2\n", []string{"line 9: node: set twice"}},
		{"missing everything in tunnel", "node: s1\nrole: hub\ntunnel: {}\n", []string{
			"line 3: tunnel.interface: missing (the tunnel interface name)",
			"line 3: tunnel.address: missing (the tunnel address with its prefix length, like 172.16.1.1/16)"}},
		{"wrong role", strings.Replace(minimal, "role: spoke", "role: router", 1), []string{
			`line 2: role: "router" is not one of hub, spoke`}},
		{"bad node name", strings.Replace(minimal, "node: s1", "node: spoke 1", 1), []string{
			`line 1: node: "spoke 1": use 1-63 letters, digits, '.', '_' or '-'`}},
		{"number as name", strings.Replace(minimal, "interface: gre1", "interface: 1", 1), []string{
			"line 4: tunnel.interface: want a string, got the number 1 (quote it)"}},
		{"address without prefix", strings.Replace(minimal, "172.16.1.1/16", "172.16.1.1", 1), []string{
			`line 5: tunnel.address: "172.16.1.1" has no prefix length (write it like 172.16.1.1/24)`}},
		{"host address as tunnel address", strings.Replace(minimal, "172.16.1.1/16", "172.16.1.1/32", 1), []string{
			"line 5: tunnel.address: 172.16.1.1/32: give the tunnel network's prefix length (a /32 leaves no room for peers)"}},
		{"bad nbma", strings.Replace(minimal, "nbma: 192.0.2.1", "nbma: 192.0.2.300", 1), []string{
			`line 8: tunnel.nhs[0].nbma: "192.0.2.300" is neither an IP address nor a DNS name`}},
		{"ipv6 nbma", strings.Replace(minimal, "nbma: 192.0.2.1", "nbma: 2001:db8::1", 1), []string{
			"line 8: tunnel.nhs[0].nbma: 2001:db8::1: the NBMA network is IPv4"}},
		{"nhs outside the tunnel network", strings.Replace(minimal, "address: 172.16.0.1", "address: 10.0.0.1", 1), []string{
			"line 7: tunnel.nhs[0].address: 10.0.0.1 is outside the tunnel network 172.16.0.0/16"}},
		{"nhs is ourselves", strings.Replace(minimal, "address: 172.16.0.1", "address: 172.16.1.1", 1), []string{
			"line 7: tunnel.nhs[0].address: 172.16.1.1 is this node's own tunnel address"}},
		{"nhs without nbma", strings.Replace(minimal, "      nbma: 192.0.2.1\n", "      priority: 2\n", 1), []string{
			"line 7: tunnel.nhs[0].nbma: missing (the server's NBMA address or DNS name)"}},
		{"duplicate nhs", minimal + "    - nbma: 192.0.2.1\n", []string{
			"line 9: tunnel.nhs[1].nbma: 192.0.2.1 is also tunnel.nhs[0]"}},
		{"priority out of range", minimal + "      priority: 256\n", []string{
			"line 9: tunnel.nhs[0].priority: 256 out of range 0-255"}},
		{"spoke without nhs", strings.SplitAfter(minimal, "172.16.1.1/16\n")[0], []string{
			"line 3: tunnel.nhs: a spoke needs at least one next hop server"}},
		{"redirect on a spoke", minimal + "  redirect: true\n", []string{
			"line 9: tunnel.redirect: redirect is a hub setting (role is spoke)"}},
		{"policy on a spoke", minimal + "policy:\n  allow: all\n", []string{
			"line 9: policy: the registration policy is a hub setting (role is spoke)"}},
		{"empty allow list", "node: h\nrole: hub\ntunnel: {interface: gre1, address: 172.16.0.1/16}\npolicy:\n  allow: []\n", []string{
			"line 5: policy.allow: an empty list allows nobody; write all, or list prefixes"}},
		{"wrong types", minimal + "  key: abc\n  mtu: 100\n  redirect: yes please\n  holding_time: 10x\nforwarding: 1\n", []string{
			`line 9: tunnel.key: want a whole number, got the string "abc"`,
			"line 10: tunnel.mtu: 100 out of range 576-65507",
			`line 11: tunnel.redirect: want true or false, got the string "yes please"`,
			`line 12: tunnel.holding_time: want a duration (seconds, or like 90s, 10m, 2h), got "10x"`,
			"line 13: forwarding: want true or false, got the number 1"}},
		{"key too large", minimal + "  key: 0x100000000\n", []string{"line 9: tunnel.key: 4294967296 out of range 0-4294967295"}},
		{"registration interval not below holding time", minimal + "  holding_time: 60\n  registration_interval: 2m\n", []string{
			"line 10: tunnel.registration_interval: 2m0s must be shorter than the holding time (1m0s)"}},
		{"long password", minimal + "  authentication: waytoolong\n", []string{
			"line 9: tunnel.authentication: longer than 8 bytes (Cisco's limit)"}},
		{"reserved shortcut table", minimal + "  shortcut_table: 254\n", []string{
			"line 9: tunnel.shortcut_table: 254 is a table the kernel reserves (default, main, local)"}},
		{"static multicast without list", minimal + "  multicast: static\n", []string{
			"line 9: tunnel.multicast: static needs tunnel.multicast_nbma"}},
		{"multicast list without static", minimal + "  multicast_nbma: [192.0.2.9]\n", []string{
			"line 9: tunnel.multicast_nbma: only used with multicast: static (multicast is nhs)"}},
		{"static map problems", minimal + "  static_maps:\n    - address: 172.16.9.0/24\n      nbma: 192.0.2.9\n    - address: 172.16.9.0/24\n    - {nbma: 192.0.2.10}\n", []string{
			"line 12: tunnel.static_maps[1].nbma: missing",
			"line 12: tunnel.static_maps[1].address: 172.16.9.0/24 is also tunnel.static_maps[0]",
			"line 13: tunnel.static_maps[2].address: missing"}},
		{"network problems", minimal + "networks: [10.1.0.1/24, 10.1.0.0/16, 172.16.5.0/24]\n", []string{
			"line 9: networks[0]: 10.1.0.1/24 has host bits set (the network is 10.1.0.0/24)",
			"line 9: networks[2]: 172.16.5.0/24 overlaps the tunnel network 172.16.0.0/16"}},
		{"overlapping networks", minimal + "networks:\n  - 10.1.0.0/24\n  - 10.1.0.0/16\n", []string{
			"line 11: networks[1]: 10.1.0.0/16 overlaps 10.1.0.0/24"}},
		{"logging and listeners", minimal + "logging: {level: loud, format: xml}\nmetrics: {listen: 'localhost'}\ncontrol: {socket: dmvpnd.sock, listen: '127.0.0.1:9474'}\n", []string{
			`line 9: logging.level: "loud" is not one of debug, info, warn, error`,
			`line 9: logging.format: "xml" is not one of json, console`,
			`line 10: metrics.listen: "localhost" is not address:port (like 127.0.0.1:9474)`,
			`line 11: control.socket: "dmvpnd.sock" is not an absolute path`,
			"line 11: control.listen: 127.0.0.1:9474 is also metrics.listen"}},
		{"list where a mapping belongs", minimal + "logging: [info]\n", []string{"line 9: logging: want a mapping, got a list"}},
		{"many at once, sorted by line", "node: a b\nrole: spoke\ntunnel:\n  interface: gre1\n  address: 172.16.1.1/16\n  mtu: 9\n  nhs:\n    - nbma: hubs..example\nx: 1\n", []string{
			`line 1: node: "a b": use 1-63 letters, digits, '.', '_' or '-'`,
			"line 6: tunnel.mtu: 9 out of range 576-65507",
			`line 8: tunnel.nhs[0].nbma: "hubs..example" is neither an IP address nor a DNS name`,
			`line 9: x: unknown key "x" (known keys: bgp, control, firewall, forwarding, ipsec, limits, logging, metrics, networks, node, policy, role, tunnel, uplinks)`}},
	}
	// These are parsed as they are; the others run without IPsec on
	// purpose (inClear).
	raw := map[string]bool{"empty": true, "not a mapping": true, "no ipsec section": true, "ipsec neither a section nor off": true}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			file := tt.file
			if !raw[tt.name] {
				file = inClear(file)
			}
			got := errorLines(t, file)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("errors (-want +got):\n%s", diff)
			}
		})
	}
}

func TestErrorsMessage(t *testing.T) {
	_, err := Parse([]byte(inClear(minimal+"x: 1\ny: 2\n")), "/etc/dmvpn/dmvpnd.yaml")
	want := `/etc/dmvpn/dmvpnd.yaml: invalid configuration, 2 errors
  line 9: x: unknown key "x" (known keys: bgp, control, firewall, forwarding, ipsec, limits, logging, metrics, networks, node, policy, role, tunnel, uplinks)
  line 10: y: unknown key "y" (known keys: bgp, control, firewall, forwarding, ipsec, limits, logging, metrics, networks, node, policy, role, tunnel, uplinks)`
	if err == nil || err.Error() != want {
		t.Errorf("got\n%v\nwant\n%s", err, want)
	}
}

func TestDefaults(t *testing.T) {
	c, err := Parse([]byte(inClear(minimal)), "m.yaml")
	if err != nil {
		t.Fatal(err)
	}
	want := &Config{
		Node: "s1", Role: "spoke",
		Tunnel: Tunnel{
			Interface: "gre1", Address: netip.MustParsePrefix("172.16.1.1/16"),
			Dataplane: backend.Auto, HoldingTime: 7200 * time.Second,
			NHS:      []NHS{{Address: netip.MustParseAddr("172.16.0.1"), NBMA: netip.MustParseAddr("192.0.2.1")}},
			Shortcut: true, ShortcutTable: 42, ShortcutProtocol: 42, ShortcutRulePriority: 1000,
			Multicast: "nhs", PurgeOnShutdown: true, RedirectGroup: 1, StateFile: "/run/dmvpnd/dmvpnd.gre1.state",
		},
		Forwarding: true,
		Logging:    Logging{Level: "info", Format: "console"},
		Metrics:    Metrics{Enabled: true, Listen: "127.0.0.1:9474"},
		Control:    Control{Socket: "/run/dmvpnd/dmvpnd.sock", GID: -1},
		IPsecOff:   true,
	}
	if diff := cmp.Diff(want, c, cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
		cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
		t.Errorf("defaults (-want +got):\n%s", diff)
	}
	hub, err := Parse([]byte(inClear("node: h\nrole: hub\ntunnel: {interface: gre1, address: 172.16.0.1/16}\n")), "h.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !hub.Tunnel.Redirect || hub.Tunnel.Shortcut || hub.Tunnel.Multicast != "dynamic" {
		t.Errorf("hub defaults: redirect %v shortcut %v multicast %s", hub.Tunnel.Redirect, hub.Tunnel.Shortcut, hub.Tunnel.Multicast)
	}
	// Secure by default: the tunnel network, not everything.
	if diff := cmp.Diff(Policy{Allow: []netip.Prefix{netip.MustParsePrefix("172.16.0.0/16")}}, hub.Policy, cmpNet...); diff != "" {
		t.Errorf("hub policy default (-want +got):\n%s", diff)
	}
}

var cmpNet = []cmp.Option{
	cmpopts.IgnoreFields(FirewallRule{}, "Line"),
	cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
	cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }),
}

// examplePKI writes the certificates the examples name (the layout of
// /etc/dmvpn/pki/) into a temporary directory and returns a function
// that points a file's paths there.
func examplePKI(t *testing.T) func([]byte) []byte {
	t.Helper()
	dir := t.TempDir()
	if _, err := pki.WriteSet(dir, map[string]string{
		"hub1":   "C=FI, O=Example, OU=GRE=172.16.0.1, OU=AS=65000, CN=hub1",
		"hub2":   "C=FI, O=Example, OU=GRE=172.16.0.2, OU=AS=65000, CN=hub2",
		"spoke1": "C=FI, O=Example, OU=GRE=172.16.1.1, OU=AS=65001, OU=NET=10.1.0.0/24, CN=spoke1",
	}); err != nil {
		t.Fatal(err)
	}
	return func(b []byte) []byte { return bytes.ReplaceAll(b, []byte("/etc/dmvpn/pki/"), []byte(dir+"/")) }
}

// TestExamples checks that the shipped examples (complete IPsec
// configurations, read with certificates made for them) are valid and
// that the rendered running configuration reads back to the same Config.
func TestExamples(t *testing.T) {
	files, err := filepath.Glob("../../examples/*.yaml")
	if err != nil || len(files) < 3 {
		t.Fatalf("examples: %v %v", files, err)
	}
	rewrite := examplePKI(t)
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			c, err := Parse(rewrite(b), f)
			if err != nil {
				t.Fatal(err)
			}
			if c.IPsec == nil {
				t.Errorf("%s runs without IPsec", f)
			}
			back, err := Parse(c.YAML(), "rendered")
			if err != nil {
				t.Fatalf("rendered config does not parse: %v\n%s", err, c.YAML())
			}
			if diff := cmp.Diff(c, back, cmpNet...); diff != "" {
				t.Errorf("render round trip (-file +rendered):\n%s", diff)
			}
		})
	}
}

func TestDaemonConfig(t *testing.T) {
	file := minimal + `  key: 0x12345678
  source: 198.51.100.1
  authentication: secret
  holding_time: 10m
  static_maps:
    - {address: 172.16.0.9, nbma: 192.0.2.9}
networks: [10.1.0.0/24]
`
	c, err := Parse([]byte(inClear(file)), "f.yaml")
	if err != nil {
		t.Fatal(err)
	}
	got := c.Daemon(Runtime{KeepRoutes: true})
	want := daemon.Config{
		Node: "s1",
		Tunnel: gre.Config{Name: "gre1", Key: 0x12345678, Prefix: netip.MustParsePrefix("172.16.1.1/16"),
			Local: netip.MustParseAddr("198.51.100.1"), KeepState: true},
		Dataplane: backend.Auto,
		NHRP: nhrp.Config{
			Role: nhrp.RoleSpoke, HoldingTime: 10 * time.Minute, AuthPassword: []byte("secret"),
			NHS:        []nhrp.NHSConfig{{Proto: netip.MustParseAddr("172.16.0.1"), NBMA: netip.MustParseAddr("192.0.2.1")}},
			StaticMaps: []nhrp.StaticMap{{Proto: netip.MustParsePrefix("172.16.0.9/32"), NBMA: netip.MustParseAddr("192.0.2.9")}},
			Shortcut:   true, ShortcutTable: 42, ShortcutProtocol: 42, Multicast: nhrp.MulticastNHS,
			PurgeOnShutdown: true, KeepKernelState: true,
		},
		Networks:             []netip.Prefix{netip.MustParsePrefix("10.1.0.0/24")},
		RedirectGroup:        1,
		ShortcutRulePriority: 1000,
		Forwarding:           true,
		IPsecOff:             true,
		HostStateFile:        "/run/dmvpnd/dmvpnd.gre1.host", // beside the control socket
		StateFile:            "/run/dmvpnd/dmvpnd.gre1.state",
	}
	if diff := cmp.Diff(want, got, append(cmpNet, cmp.Comparer(func(a, b func(int) bool) bool { return a == nil && b == nil }))...); diff != "" {
		t.Errorf("daemon config (-want +got):\n%s", diff)
	}
	if err := got.NHRP.Validate(); err != nil {
		t.Errorf("the engine refuses the config: %v", err)
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "none.yaml"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load of a missing file: %v", err)
	}
}

// TestMaskedYAML: the running configuration shown never holds the NHRP
// password, and still parses.
func TestMaskedYAML(t *testing.T) {
	c, err := Parse([]byte(inClear(minimal+"  authentication: s3cret\n")), "f.yaml")
	if err != nil {
		t.Fatal(err)
	}
	m := string(c.MaskedYAML())
	if strings.Contains(m, "s3cret") || !strings.Contains(m, "authentication: '********' # masked: the password is not shown\n") {
		t.Errorf("masked running configuration:\n%s", m)
	}
	back, err := Parse([]byte(m), "masked")
	if err != nil || back.Tunnel.Authentication != Masked {
		t.Errorf("masked configuration: %v, authentication %q", err, back.Tunnel.Authentication)
	}
	if !strings.Contains(string(c.YAML()), "authentication: s3cret\n") {
		t.Errorf("YAML (for the daemon's own use) lost the password:\n%s", c.YAML())
	}
}

// TestPolicyPrefixes: policy.prefixes is off unless set, decodes, and
// survives a render and a parse of the rendering.
func TestPolicyPrefixes(t *testing.T) {
	src := inClear("node: h\nrole: hub\ntunnel: {interface: gre1, address: 172.16.0.1/16}\npolicy: {allow: all, prefixes: true}\n")
	c, err := Parse([]byte(src), "h.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !c.Policy.Prefixes || !c.Policy.AllowAll {
		t.Fatalf("policy %+v: want all and prefixes", c.Policy)
	}
	again, err := Parse(c.YAML(), "rendered.yaml")
	if err != nil {
		t.Fatalf("the rendering does not parse: %v\n%s", err, c.YAML())
	}
	if diff := cmp.Diff(c.Policy, again.Policy, cmpNet...); diff != "" {
		t.Errorf("policy after a render (-want +got):\n%s", diff)
	}
	def, err := Parse([]byte(inClear("node: h\nrole: hub\ntunnel: {interface: gre1, address: 172.16.0.1/16}\n")), "h.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if def.Policy.Prefixes {
		t.Errorf("prefixes on by default")
	}
}
