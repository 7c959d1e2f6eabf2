//go:build linux

package packaging

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/opendmvpn/dmvpn/daemon/control"
	"github.com/opendmvpn/dmvpn/gre/ebpf"
	"github.com/opendmvpn/dmvpn/internal/pki"
	"github.com/opendmvpn/dmvpn/lab/testbed"
	"github.com/opendmvpn/dmvpn/nhrp"
)

// setprivArgs is the command prefix that gives a process the unit's
// capabilities as systemd would: its bounding set (and so, for root, its
// effective and permitted sets) exactly caps, nothing inheritable or
// ambient, and no new privileges as the unit's NoNewPrivileges=yes asks.
func setprivArgs(caps []string) []string {
	var b strings.Builder
	b.WriteString("-all")
	for _, c := range caps {
		b.WriteString(",+" + c)
	}
	return []string{"setpriv", "--bounding-set=" + b.String(), "--inh-caps=-all", "--ambient-caps=-all", "--no-new-privs", "--"}
}

// capMask is a capability set as /proc/PID/status prints it.
func capMask(t *testing.T, caps []string) uint64 {
	var m uint64
	for _, c := range caps {
		i := -1
		for n, name := range capNames {
			if name == c {
				i = n
			}
		}
		if i < 0 {
			t.Fatalf("unknown capability %s", c)
		}
		m |= 1 << i
	}
	return m
}

// procCaps reads a process's bounding and effective sets.
func procCaps(pid int) (bnd, eff uint64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(line, ":")
		switch k {
		case "CapBnd":
			bnd, _ = strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		case "CapEff":
			eff, _ = strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		}
	}
	return bnd, eff, nil
}

// charonOf finds the managed charon whose strongswan.conf is in dir.
func charonOf(dir string) int {
	want := "STRONGSWAN_CONF=" + filepath.Join(dir, "strongswan.conf")
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		comm, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "comm"))
		env, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if strings.TrimSpace(string(comm)) == "charon" && strings.Contains(string(env), want) {
			return pid
		}
	}
	return 0
}

// capsNode is a node's configuration for the capability test.
func capsNodeYAML(name, role, addr, dataplane, extra, ipsec string) string {
	return fmt.Sprintf(`node: %s
role: %s
tunnel:
  interface: gre1
  address: %s/24
  key: 42
  dataplane: %s
  holding_time: 60
%s
logging:
  level: debug
metrics:
  enabled: false
control:
  socket: "@SOCKET@"
%s`, name, role, addr, dataplane, extra, ipsec)
}

// TestUnitCapabilities runs a hub and a spoke with IPsec (each its own
// managed charon, started the way the unit's dmvpnd starts it) under
// exactly the capability set of the systemd unit — read from
// files/dmvpnd.service — and no new privileges: the hub tells a fake
// service manager READY=1 only once charon answers, and the spoke
// registers over IPsec. Without CAP_SYS_ADMIN the hub does not start and
// says why.
func TestUnitCapabilities(t *testing.T) {
	testbed.SkipUnavailable(t, "setpriv")
	if _, err := os.Stat("/usr/lib/ipsec/charon"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("strongSwan's charon is missing although scripts/install-deps.sh ran")
		}
		t.Skip("skipping: needs strongSwan's charon (scripts/install-deps.sh installs it)")
	}
	caps := unitCaps(t)
	t.Logf("the unit's capabilities: %v", caps)
	dir := t.TempDir()
	bin := filepath.Join(dir, "dmvpnd")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/dmvpnd").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	ca, err := pki.NewCA("C=FI, O=Example, CN=Example DMVPN CA")
	if err != nil {
		t.Fatal(err)
	}
	caF, err := ca.WriteCA(dir, "ca")
	if err != nil {
		t.Fatal(err)
	}
	// The state directories under /run, as the unit's (/run/dmvpnd/ipsec):
	// charon's private /run must not hide them.
	run, err := os.MkdirTemp("/run", "dmvpn-caps-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(run) })
	ipsecSection := func(name, dn string) string {
		is, err := ca.IssueDN(dn)
		if err != nil {
			t.Fatal(err)
		}
		cert, key, err := is.Write(dir, name)
		if err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf("ipsec:\n  mode: userspace\n  ca: %s\n  cert: %s\n  key: %s\n  charon: managed\n  state_dir: %s\n  audit_log: %s\n",
			caF, cert, key, filepath.Join(run, name), filepath.Join(dir, name+"-audit.jsonl"))
	}
	hubIPsec := ipsecSection("hub", "C=FI, O=Example, OU=GRE=10.0.0.1, OU=AS=65000, CN=hub")
	spokeIPsec := ipsecSection("s1", "C=FI, O=Example, OU=GRE=10.0.0.11, OU=AS=65011, OU=NET=10.1.0.0/24, CN=s1")
	hubDP := "userspace"
	if ebpf.Available() == nil {
		hubDP = "ebpf" // its BPF programs load under the unit's set too
	}

	tb, err := testbed.New(context.Background(), testbed.Spec{Sites: []testbed.Site{
		{Name: "hub", Kind: testbed.Hub, NBMA: netip.MustParsePrefix("192.0.2.1/24")},
		{Name: "s1", Kind: testbed.Spoke, NBMA: netip.MustParsePrefix("198.51.100.1/24")},
	}}, testbed.WithLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tb.Close() })

	start := func(n *testbed.Node, name string, caps []string, yaml string, env ...string) (*testbed.Proc, *control.Client) {
		t.Helper()
		sock := filepath.Join(dir, name+".sock")
		cfg := filepath.Join(dir, name+".yaml")
		if err := os.WriteFile(cfg, []byte(strings.ReplaceAll(yaml, "@SOCKET@", sock)), 0o600); err != nil {
			t.Fatal(err)
		}
		p, err := n.Start(testbed.ProcSpec{Name: name, Args: append(setprivArgs(caps), bin, "-c", cfg), Env: env})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			p.Stop()
			if t.Failed() {
				t.Logf("%s output:\n%s", name, p.Output())
			}
		})
		return p, control.NewClient(sock)
	}
	hubYAML := func(dp string) string {
		return capsNodeYAML("hub", "hub", "10.0.0.1", dp, "policy:\n  allow: all", hubIPsec)
	}

	// Without CAP_SYS_ADMIN: no mount namespace for charon, no start.
	var less []string
	for _, c := range caps {
		if c != "sys_admin" {
			less = append(less, c)
		}
	}
	p, _ := start(tb.Node("hub"), "hub-nosysadmin", less, hubYAML("userspace"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.Wait(ctx); err == nil || !strings.Contains(p.Output(), "needs CAP_SYS_ADMIN") {
		t.Fatalf("hub without CAP_SYS_ADMIN: exit %v, want a refusal naming CAP_SYS_ADMIN:\n%s", err, p.Output())
	}
	if i := strings.Index(p.Output(), "needs CAP_SYS_ADMIN"); i >= 0 {
		line := p.Output()[strings.LastIndex(p.Output()[:i], "\n")+1:]
		t.Logf("hub without CAP_SYS_ADMIN: %s", strings.SplitN(line, "\n", 2)[0])
	}

	// With the unit's set: ready, and the spoke registers.
	notify := filepath.Join(dir, "notify")
	mgr, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notify, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer mgr.Close()
	hub, hubCtl := start(tb.Node("hub"), "hub", caps, hubYAML(hubDP), "NOTIFY_SOCKET="+notify)
	mgr.SetReadDeadline(time.Now().Add(60 * time.Second))
	buf := make([]byte, 4096)
	n, err := mgr.Read(buf)
	if err != nil {
		t.Fatalf("no READY=1 from the hub: %v", err)
	}
	msg := string(buf[:n])
	if !strings.HasPrefix(msg, "READY=1\n") {
		t.Fatalf("first notification %q, want READY=1", msg)
	}
	if c, err := net.Dial("unix", filepath.Join(run, "hub", "charon.vici")); err != nil {
		t.Errorf("READY=1 (%q) came while charon does not answer: %v", msg, err)
	} else {
		c.Close()
	}
	if !strings.Contains(msg, hubDP+" data plane") {
		t.Errorf("hub status %q, want the %s data plane", msg, hubDP)
	}
	t.Logf("hub under the unit's capabilities: %q", msg)

	want := capMask(t, caps)
	if bnd, eff, err := procCaps(hub.Pid()); err != nil || bnd != want || eff != want {
		t.Errorf("hub dmvpnd: CapBnd %x CapEff %x (%v), want %x", bnd, eff, err, want)
	}
	if pid := charonOf(filepath.Join(run, "hub")); pid == 0 {
		t.Error("the hub's charon is not running")
	} else if bnd, eff, err := procCaps(pid); err != nil || bnd != want || eff&^want != 0 {
		t.Errorf("hub charon: CapBnd %x CapEff %x (%v), want within %x", bnd, eff, err, want)
	}

	_, _ = start(tb.Node("s1"), "s1", caps, capsNodeYAML("s1", "spoke", "10.0.0.11", "userspace",
		"  nhs:\n    - address: 10.0.0.1\n      nbma: 192.0.2.1", spokeIPsec))
	deadline := time.Now().Add(60 * time.Second)
	for {
		var cache control.CacheResponse
		gctx, gcancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := hubCtl.Get(gctx, control.PathCache, &cache)
		gcancel()
		var reg *nhrp.CacheEntry
		for i, e := range cache.Entries {
			if e.Proto == netip.MustParsePrefix("10.0.0.11/32") && e.Type == nhrp.TypeDynamic {
				reg = &cache.Entries[i]
			}
		}
		if err == nil && reg != nil {
			if !strings.Contains(reg.Identity, "OU=GRE=10.0.0.11") {
				t.Errorf("registration without the spoke's certificate: %+v", reg)
			}
			t.Logf("the spoke registered over IPsec: %s via %s, %s", reg.Proto, reg.NBMA, reg.Identity)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the spoke did not register with the hub under the unit's capabilities (last: %v, %d entries)", err, len(cache.Entries))
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Nothing was refused for want of a capability: not dmvpnd, not charon.
	perm := regexp.MustCompile(`(?i)operation not permitted|permission denied|missing capability|requires? CAP_`)
	if perm.MatchString(hub.Output()) {
		t.Errorf("the hub hit a permission error:\n%s", hub.Output())
	}
	for _, node := range []string{"hub", "s1"} {
		log, err := os.ReadFile(filepath.Join(run, node, "charon.log"))
		if err != nil {
			t.Errorf("%s: charon.log: %v", node, err)
		}
		if m := perm.Find(log); m != nil {
			t.Errorf("%s's charon hit a permission error (%q):\n%s", node, m, log)
		}
	}
}
