package config

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/opendmvpn/dmvpn/failover"
)

var addrs = cmp.Comparer(func(a, b netip.Addr) bool { return a == b })

const twoISPs = `uplinks:
  - name: isp1
    interface: wan0
    probes: [192.0.2.253, 192.0.2.254]
    masquerade: true
  - name: isp2
    interface: wan1
    gateway: 203.0.113.78
    probes: [192.0.2.253]
    interval: 500ms
    timeout: 300ms
    retries: 0
    weight: 3
    preference: 1
`

func TestUplinks(t *testing.T) {
	c, err := Parse([]byte(inClear(minimal+twoISPs)+"firewall:\n  zones:\n    lan: [lan0]\n"), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	got := c.Daemon(Runtime{}).Uplinks
	want := &failover.Config{RulePriority: 1100, Protocol: 44, MarkMask: 0xff00, Uplinks: []failover.Uplink{
		{Name: "isp1", Interface: "wan0", Table: 101, Mark: 0x100, Probes: []netip.Addr{netip.MustParseAddr("192.0.2.253"), netip.MustParseAddr("192.0.2.254")},
			Interval: 250 * time.Millisecond, Timeout: 200 * time.Millisecond, Retries: 4, DownAfter: 3, RepliesRequired: 4, HostsRequired: 1, Weight: 1, Masquerade: true},
		{Name: "isp2", Interface: "wan1", Gateway: netip.MustParseAddr("203.0.113.78"), Table: 102, Mark: 0x200, Probes: []netip.Addr{netip.MustParseAddr("192.0.2.253")},
			Interval: 500 * time.Millisecond, Timeout: 300 * time.Millisecond, Retries: 0, DownAfter: 3, RepliesRequired: 4, HostsRequired: 1, Weight: 3, Preference: 1},
	}}
	if d := cmp.Diff(want, got, addrs); d != "" {
		t.Errorf("uplinks (-want +got):\n%s", d)
	}
	// The running configuration reads back the same.
	again, err := Parse(c.YAML(), "running")
	if err != nil {
		t.Fatalf("running config refused: %v\n%s", err, c.YAML())
	}
	if d := cmp.Diff(got, again.Daemon(Runtime{}).Uplinks, addrs); d != "" {
		t.Errorf("running config reads back differently (-first +again):\n%s", d)
	}
	// Without a firewall section: a warning, the marks are not kept.
	c, err = Parse([]byte(inClear(minimal+"uplinks:\n  - interface: eth0\n    probes: [198.51.100.99]\n")), "test.yaml")
	if err != nil || len(c.Warnings) != 1 || !strings.Contains(c.Warnings[0].Error(), "connection marks are not kept") {
		t.Errorf("uplinks without a firewall: %v, warnings %v", err, c.Warnings)
	}
	// The mapping form, with its settings.
	c, err = Parse([]byte(inClear(minimal+"uplinks:\n  rule_priority: 2000\n  mark_mask: 0xff0000\n  list:\n    - interface: eth0\n      probes: [198.51.100.99]\n")), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if u := c.Daemon(Runtime{}).Uplinks; u.RulePriority != 2000 || u.Uplinks[0].Mark != 0x10000 || u.Uplinks[0].Name != "eth0" {
		t.Errorf("mapping form: %+v", u)
	}
}

func TestBadUplinks(t *testing.T) {
	for _, tc := range []struct {
		name, file string
		want       []string
	}{
		{"no probes", "uplinks:\n  - interface: wan0\n", []string{"line 10: uplinks[0]: no probe hosts (the addresses probed through the uplink)"}},
		{"same interface", "uplinks:\n  - interface: wan0\n    probes: [192.0.2.1]\n  - interface: wan0\n    name: b\n    probes: [192.0.2.1]\n", []string{
			"line 12: uplinks[1].interface: wan0 is also uplink 0's"}},
		{"tunnel interface", "uplinks:\n  - interface: gre1\n    probes: [192.0.2.1]\n", []string{"line 10: uplinks[0].interface: gre1 is the tunnel interface"}},
		{"charon's table", "uplinks:\n  - interface: wan0\n    table: 220\n    probes: [192.0.2.1]\n", []string{"line 11: uplinks[0].table: 220 is charon's table"}},
		{"shortcut table", "uplinks:\n  - interface: wan0\n    table: 42\n    probes: [192.0.2.1]\n", []string{"line 11: uplinks[0].table: 42 is tunnel.shortcut_table"}},
		{"timeout over interval", "uplinks:\n  - interface: wan0\n    interval: 100ms\n    timeout: 200ms\n    probes: [192.0.2.1]\n", []string{
			"line 12: uplinks[0].timeout: 200ms is longer than the interval (100ms)"}},
		{"mask over charon's mark", "uplinks:\n  mark_mask: 0xff\n  list:\n    - interface: wan0\n      probes: [192.0.2.1]\n", []string{
			"line 10: uplinks.mark_mask: 0xff overlaps charon's mark 0x42"}},
		{"mark outside the mask", "uplinks:\n  - interface: wan0\n    mark: 0x10000\n    probes: [192.0.2.1]\n", []string{
			"line 11: uplinks[0].mark: 0x10000 must be non-zero and within the mark mask 0xff00"}},
		{"rules over the shortcut rule", "uplinks:\n  rule_priority: 999\n  list:\n    - interface: wan0\n      probes: [192.0.2.1]\n", []string{
			"line 10: uplinks.rule_priority: the uplinks' rules take 999-1032, which holds tunnel.shortcut_rule_priority 1000"}},
		{"bad name", "uplinks:\n  - interface: wan0\n    name: ISP One\n    probes: [192.0.2.1]\n", []string{
			`line 11: uplinks[0].name: "ISP One": use 1-24 of a-z, 0-9, '_' and '-'`}},
		{"multicast probe", "uplinks:\n  - interface: wan0\n    probes: [224.0.0.1]\n", []string{
			"line 11: uplinks[0].probes[0]: 224.0.0.1: a probe host is a unicast IPv4 address"}},
		{"hosts required", "uplinks:\n  - interface: wan0\n    hosts_required: 2\n    probes: [192.0.2.1]\n", []string{
			"line 11: uplinks[0].hosts_required: 2 of 1 probe hosts"}},
		{"too many", "uplinks:\n" + manyUplinks(failover.MaxUplinks+1), []string{
			fmt.Sprintf("line 9: uplinks: %d uplinks: at most %d", failover.MaxUplinks+1, failover.MaxUplinks)}},
		{"masquerade without the firewall", "uplinks:\n  - interface: wan0\n    masquerade: true\n    probes: [192.0.2.1]\n", []string{
			"line 11: uplinks[0].masquerade: the firewall holds the NAT rules, and this node runs none (no firewall section and no IPsec, or firewall: off): add a firewall section"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := errorLines(t, inClear(minimal+tc.file))
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("errors (-want +got):\n%s", d)
			}
		})
	}
}

// manyUplinks lists n uplinks in the list form.
func manyUplinks(n int) string {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, "  - interface: wan%d\n    probes: [192.0.2.1]\n", i)
	}
	return b.String()
}
