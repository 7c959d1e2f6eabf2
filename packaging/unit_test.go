package packaging

import (
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// capNames are Linux's capabilities by number (linux/capability.h).
var capNames = strings.Fields(`chown dac_override dac_read_search fowner fsetid kill setgid setuid
	setpcap linux_immutable net_bind_service net_broadcast net_admin net_raw ipc_lock ipc_owner
	sys_module sys_rawio sys_chroot sys_ptrace sys_pacct sys_admin sys_boot sys_nice sys_resource
	sys_time sys_tty_config mknod lease audit_write audit_control setfcap mac_override mac_admin
	syslog wake_alarm block_suspend audit_read perfmon bpf checkpoint_restore`)

// unitSetting returns the values of a setting of the unit file, every
// line of it, space-separated lists joined.
func unitSetting(t *testing.T, unit, key string) []string {
	t.Helper()
	var out []string
	for _, line := range strings.Split(unit, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), key+"="); ok {
			out = append(out, strings.Fields(v)...)
		}
	}
	return out
}

// unitCaps reads the capability set of the unit: CapabilityBoundingSet's
// names, lower case without CAP_ (as setpriv and cap_iab write them).
func unitCaps(t *testing.T) []string {
	t.Helper()
	unit, err := os.ReadFile("files/dmvpnd.service")
	if err != nil {
		t.Fatal(err)
	}
	var caps []string
	for _, c := range unitSetting(t, string(unit), "CapabilityBoundingSet") {
		name := strings.ToLower(strings.TrimPrefix(c, "CAP_"))
		if !slices.Contains(capNames, name) {
			t.Fatalf("unknown capability %s in the unit", c)
		}
		caps = append(caps, name)
	}
	if len(caps) == 0 {
		t.Fatal("the unit has no CapabilityBoundingSet")
	}
	sort.Strings(caps)
	return caps
}

// TestOpenRCEquivalent: the OpenRC service keeps what the unit keeps —
// the capability set (every other capability dropped from the bounding
// set), no new privileges, the check before start, reload through
// dmvpnctl reload, readiness.
func TestOpenRCEquivalent(t *testing.T) {
	unitB, err := os.ReadFile("files/dmvpnd.service")
	if err != nil {
		t.Fatal(err)
	}
	rcB, err := os.ReadFile("files/dmvpnd.openrc")
	if err != nil {
		t.Fatal(err)
	}
	unit, rc := string(unitB), string(rcB)
	m := regexp.MustCompile(`(?m)^capabilities="([^"]*)"$`).FindStringSubmatch(rc)
	if m == nil {
		t.Fatal("the OpenRC service sets no capabilities")
	}
	dropped := map[string]bool{}
	for _, c := range strings.Split(m[1], ",") {
		name, ok := strings.CutPrefix(c, "!cap_")
		if !ok || !slices.Contains(capNames, name) {
			t.Fatalf("OpenRC capabilities: %q is not a dropped capability", c)
		}
		dropped[name] = true
	}
	var kept []string
	for _, c := range capNames {
		if !dropped[c] {
			kept = append(kept, c)
		}
	}
	sort.Strings(kept)
	if diff := cmp.Diff(unitCaps(t), kept); diff != "" {
		t.Errorf("capabilities (-unit +OpenRC):\n%s", diff)
	}
	if !slices.Equal(unitSetting(t, unit, "NoNewPrivileges"), []string{"yes"}) || !strings.Contains(rc, "\nno_new_privs=\"yes\"\n") {
		t.Error("no new privileges: not in both")
	}
	// Both reach the socket the configuration file names (-c), not only
	// the default one.
	if !slices.Equal(unitSetting(t, unit, "ExecReload"), []string{"/usr/sbin/dmvpnctl", "-c", "/etc/dmvpn/dmvpnd.yaml", "reload"}) ||
		!strings.Contains(rc, "\n\t/usr/sbin/dmvpnctl -c \"$cfgfile\" reload\n") ||
		!strings.Contains(rc, "/usr/sbin/dmvpnctl -c \"$cfgfile\" show dmvpn") {
		t.Error("reload and readiness: not dmvpnctl -c FILE in both")
	}
	if !slices.Equal(unitSetting(t, unit, "ExecStart"), []string{"/usr/sbin/dmvpnd", "-c", "/etc/dmvpn/dmvpnd.yaml"}) {
		t.Error("ExecStart does not run the file ExecReload reads")
	}
	if !strings.Contains(strings.Join(unitSetting(t, unit, "ExecStartPre"), " "), "/usr/sbin/dmvpnd --check") || !strings.Contains(rc, `"$command" --check -c "$cfgfile"`) {
		t.Error("the configuration check before start: not in both")
	}
	if !slices.Equal(unitSetting(t, unit, "Type"), []string{"notify"}) || !strings.Contains(rc, "start_post()") {
		t.Error("readiness: Type=notify in the unit, start_post waiting in OpenRC")
	}
}
