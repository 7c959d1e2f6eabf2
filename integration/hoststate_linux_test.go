package integration

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/opendmvpn/dmvpn/lab/testbed"
)

// TestHostStateAcrossRuns: dmvpnd keeps what it must put back and what it
// owns in its host state file (SOCKET.INTERFACE.host beside the control
// socket),
// so that a crash loses neither. One spoke with an uplink (its monitor
// sets sysctls it restores on stop: fib_multipath_hash_policy and the
// uplink's rp_filter), in clear, runs four times:
//
//  1. shortcut rule at 1000, SIGKILLed;
//  2. the rule moved to 900: the start removes the crashed run's rule at
//     1000 (after adding 900); a clean stop restores the sysctls to their
//     values from before run 1, removes every rule and route of dmvpnd
//     and the state file;
//  3. as 1, SIGKILLed again;
//  4. the uplinks gone from the configuration: the start removes what the
//     crashed run's uplink monitor left (rules, routes, the default route
//     it replaced put back, sysctls restored); a clean stop leaves the
//     kernel as before run 1.
func TestHostStateAcrossRuns(t *testing.T) {
	t.Parallel()
	requireTestbed(t)
	bin := buildDmvpnd(t)
	spec := testbed.Spec{Sites: []testbed.Site{
		{Name: "hub", Kind: testbed.Hub, NBMA: netip.PrefixFrom(e2eHubNB, 24)},
		{Name: "s1", Kind: testbed.Spoke, NBMA: netip.MustParsePrefix("198.51.100.1/26"), LAN: netip.MustParsePrefix("10.1.0.1/24")},
	}}
	tb, err := testbed.New(context.Background(), spec, testbed.WithLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tb.Close() })
	n := tb.Node("s1")

	base := spokeYAML("s1", "userspace", e2eTunnel[0].String(), e2eLAN[0].String()) + "ipsec: off\n"
	uplinks := "uplinks:\n  - name: isp1\n    interface: wan0\n    probes: [198.51.100.62]\n"
	sysctls := []string{"net/ipv4/fib_multipath_hash_policy", "net/ipv4/conf/wan0/rp_filter"}
	read := func() map[string]string {
		t.Helper()
		m := map[string]string{}
		for _, k := range sysctls {
			out, err := n.Run(context.Background(), "cat", "/proc/sys/"+k)
			if err != nil {
				t.Fatal(err)
			}
			m[k] = strings.TrimSpace(out)
		}
		return m
	}
	kernel := func() string {
		return ipOut(t, n, "-4", "rule", "list") + ipOut(t, n, "route", "show", "table", "all") + fmt.Sprint(read())
	}
	before, sysBefore := kernel(), read()
	rulesBefore, defaultBefore := ipOut(t, n, "-4", "rule", "list"), ipOut(t, n, "route", "show", "default")
	if sysBefore[sysctls[0]] == "1" || sysBefore[sysctls[1]] == "2" {
		t.Fatalf("the sysctls already hold the uplink monitor's values: %v", sysBefore)
	}
	rule := func(prio int) bool {
		for _, l := range strings.Split(ipOut(t, n, "-4", "rule", "list"), "\n") {
			if strings.HasPrefix(l, fmt.Sprintf("%d:", prio)) {
				return true
			}
		}
		return false
	}
	set := func() bool {
		s := read()
		return s[sysctls[0]] == "1" && s[sysctls[1]] == "2"
	}

	d := startDaemon(t, bin, n, base+uplinks)
	state := strings.TrimSuffix(d.socket, ".sock") + ".gre1.host"
	run := func(yaml string) {
		t.Helper()
		if err := os.WriteFile(d.config, []byte(strings.ReplaceAll(yaml, "@SOCKET@", d.socket)), 0o600); err != nil {
			t.Fatal(err)
		}
		d.start()
	}
	crash := func(what string) {
		t.Helper()
		waitFor(t, 10*time.Second, what+": the shortcut rule, the uplink's sysctls", func() bool { return set() && (rule(1000) || rule(900)) })
		d.kill()
		if _, err := os.Stat(state); err != nil {
			t.Fatalf("%s, SIGKILLed: no host state file: %v", what, err)
		}
	}
	gone := func(what string) {
		t.Helper()
		if _, err := os.Stat(state); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: the host state file is left: %v", what, err)
		}
		if after := kernel(); after != before {
			t.Errorf("%s: the kernel is not as before the first run:\n%s\nwant:\n%s", what, after, before)
		}
	}

	crash("run 1")
	run(strings.Replace(base, "shortcut: true\n", "shortcut: true\n  shortcut_rule_priority: 900\n", 1) + uplinks)
	waitFor(t, 10*time.Second, "run 2: the rule at 900, the crashed run's at 1000 gone", func() bool { return rule(900) && !rule(1000) && set() })
	d.stop()
	if s := read(); s[sysctls[0]] != sysBefore[sysctls[0]] || s[sysctls[1]] != sysBefore[sysctls[1]] {
		t.Errorf("after a crash, a start and a stop the sysctls are %v, want %v (from before the first run)", s, sysBefore)
	}
	gone("run 2 stopped")

	run(base + uplinks)
	crash("run 3")
	run(base)
	waitFor(t, 10*time.Second, "run 4 without uplinks: the crashed run's uplink sysctls restored", func() bool {
		s := read()
		return rule(1000) && s[sysctls[0]] == sysBefore[sysctls[0]] && s[sysctls[1]] == sysBefore[sysctls[1]]
	})
	var rules []string
	for _, l := range strings.Split(ipOut(t, n, "-4", "rule", "list"), "\n") {
		if !strings.HasPrefix(l, "1000:") {
			rules = append(rules, l)
		}
	}
	if got := strings.Join(rules, "\n"); got != rulesBefore {
		t.Errorf("run 4 without uplinks: the rules but the shortcut rule are\n%s\nwant as before the first run:\n%s", got, rulesBefore)
	}
	if got := ipOut(t, n, "route", "show", "default"); got != defaultBefore {
		t.Errorf("run 4 without uplinks: the default route is\n%s\nwant as before the first run:\n%s", got, defaultBefore)
	}
	d.stop()
	gone("run 4 stopped")
}
