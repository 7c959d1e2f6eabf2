package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/opendmvpn/dmvpn/daemon"
	"github.com/opendmvpn/dmvpn/daemon/config"
	"github.com/opendmvpn/dmvpn/daemon/control"
	"github.com/opendmvpn/dmvpn/gre"
	"github.com/opendmvpn/dmvpn/ipsec"
)

const spokeFile = `node: spoke1
role: spoke
tunnel:
  interface: gre1
  address: 172.16.1.1/16
  holding_time: 600
  nhs:
    - {address: 172.16.0.1, nbma: 192.0.2.1}
logging: {level: info}
control: {socket: /run/test/dmvpnd.sock}
ipsec: off
`

// fakeNode records what the App applies.
type fakeNode struct {
	applied  []daemon.Config
	checked  []daemon.Config // dry runs
	reopened int             // ReopenLogs calls
	changes  []string
	err      error
}

func (f *fakeNode) Engine() control.Engine         { return nil }
func (f *fakeNode) Counters() (gre.Counters, bool) { return gre.Counters{}, false }
func (f *fakeNode) Dataplane() (string, string)    { return "userspace", "test" }
func (f *fakeNode) ReopenLogs() error              { f.reopened++; return nil }

func (f *fakeNode) CheckReload(_ context.Context, cfg daemon.Config) ([]string, error) {
	if f.err != nil {
		return nil, f.err
	}
	f.checked = append(f.checked, cfg)
	return f.changes, nil
}

func (f *fakeNode) Reload(_ context.Context, cfg daemon.Config) ([]string, error) {
	if f.err != nil {
		return nil, f.err
	}
	f.applied = append(f.applied, cfg)
	return f.changes, nil
}

// newTestApp writes spokeFile and starts an App on it with a fake node.
func newTestApp(t *testing.T) (*App, *fakeNode, string, *bytes.Buffer) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "dmvpnd.yaml")
	if err := os.WriteFile(path, []byte(spokeFile), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	level := zap.NewAtomicLevelAt(zap.InfoLevel)
	log := zap.New(zapcore.NewCore(zapcore.NewConsoleEncoder(zap.NewDevelopmentEncoderConfig()), zapcore.AddSync(&logs), level))
	n := &fakeNode{}
	return newApp(path, cfg, config.Runtime{}, n, log, level), n, path, &logs
}

func rewrite(t *testing.T, path, from, to string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := strings.Replace(string(b), from, to, 1)
	if s == string(b) {
		t.Fatalf("%q not in the file", from)
	}
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestReloadInvalidChangesNothing: a file with errors is refused whole:
// the daemon is not asked to apply anything and the running configuration
// stays as it was.
func TestReloadInvalidChangesNothing(t *testing.T) {
	a, n, path, logs := newTestApp(t)
	before := a.RunningConfig()
	// A valid change (holding time) next to an invalid one.
	rewrite(t, path, "holding_time: 600", "holding_time: 300\n  mtu: 10\n  bogus: 1")
	changes, err := a.Reload(context.Background(), false)
	if err == nil {
		t.Fatalf("invalid file accepted: %v", changes)
	}
	if !errors.Is(err, ErrRefused) || !errors.Is(err, config.ErrInvalid) {
		t.Errorf("error %v: want ErrRefused wrapping config.ErrInvalid", err)
	}
	for _, want := range []string{"line 7: tunnel.mtu: 10 out of range 576-65507", `line 8: tunnel.bogus: unknown key "bogus"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	if len(n.applied) != 0 {
		t.Errorf("the daemon was asked to apply %d configurations", len(n.applied))
	}
	// The audit log is reopened on every reload (logrotate's postrotate),
	// refused or not.
	if n.reopened != 1 {
		t.Errorf("audit log reopened %d times, want 1", n.reopened)
	}
	if diff := cmp.Diff(string(before), string(a.RunningConfig())); diff != "" {
		t.Errorf("running config changed (-before +after):\n%s", diff)
	}
	a.reloadAndLog(context.Background())
	if !strings.Contains(logs.String(), "configuration reload refused; the running configuration is unchanged") {
		t.Errorf("log lacks the refusal:\n%s", logs)
	}
}

func TestReloadNeedsRestart(t *testing.T) {
	a, n, path, _ := newTestApp(t)
	before := a.RunningConfig()
	rewrite(t, path, "control: {socket: /run/test/dmvpnd.sock}", "control: {socket: /run/other.sock}")
	_, err := a.Reload(context.Background(), false)
	if !errors.Is(err, daemon.ErrNeedsRestart) || !strings.Contains(err.Error(), "[control]") {
		t.Errorf("socket change: %v", err)
	}
	if len(n.applied) != 0 || string(a.RunningConfig()) != string(before) {
		t.Errorf("a refused reload changed something")
	}
	// The daemon refusing (a tunnel change) changes nothing either.
	rewrite(t, path, "control: {socket: /run/other.sock}", "control: {socket: /run/test/dmvpnd.sock}")
	n.err = daemon.ErrNeedsRestart
	if _, err := a.Reload(context.Background(), false); !errors.Is(err, daemon.ErrNeedsRestart) {
		t.Errorf("daemon refusal: %v", err)
	}
	if string(a.RunningConfig()) != string(before) {
		t.Errorf("running config changed after the daemon refused")
	}
}

func TestReloadApplies(t *testing.T) {
	a, n, path, logs := newTestApp(t)
	n.changes = []string{"holding time 10m0s → 5m0s"}
	rewrite(t, path, "holding_time: 600", "holding_time: 300")
	rewrite(t, path, "logging: {level: info}", "logging: {level: debug}")
	changes, err := a.Reload(context.Background(), false)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"holding time 10m0s → 5m0s", "logging level info → debug"}
	if diff := cmp.Diff(want, changes); diff != "" {
		t.Errorf("changes (-want +got):\n%s", diff)
	}
	if len(n.applied) != 1 || n.applied[0].NHRP.HoldingTime != 300*time.Second {
		t.Errorf("applied: %+v", n.applied)
	}
	if a.Config().Tunnel.HoldingTime != 300*time.Second || !strings.Contains(string(a.RunningConfig()), "holding_time: 300") {
		t.Errorf("running config not updated:\n%s", a.RunningConfig())
	}
	if !a.level.Enabled(zap.DebugLevel) {
		t.Errorf("log level not applied")
	}
	n.changes = nil
	a.reloadAndLog(context.Background())
	if !strings.Contains(logs.String(), "configuration reloaded: nothing changed") {
		t.Errorf("log:\n%s", logs)
	}
}

// TestInfoWarnsIPsecOff: a node that runs without IPsec, or without a
// firewall, says so in its status (show dmvpn prints it); one with both
// has no such warning.
func TestInfoWarnsIPsecOff(t *testing.T) {
	a, _, _, _ := newTestApp(t)
	if diff := cmp.Diff([]string{WarnIPsecOff, WarnFirewallNone}, a.Info().Warnings); diff != "" {
		t.Errorf("warnings (-want +got):\n%s", diff)
	}
	c := *a.Config()
	c.IPsecOff, c.IPsec = false, &config.IPsec{}
	if diff := cmp.Diff([]string{WarnFirewallBaseline}, warnings(&c)); diff != "" {
		t.Errorf("IPsec without a firewall section: warnings (-want +got):\n%s", diff)
	}
	c.FirewallOff = true
	if diff := cmp.Diff([]string{WarnFirewallOff}, warnings(&c)); diff != "" {
		t.Errorf("firewall: off: warnings (-want +got):\n%s", diff)
	}
	c = *a.Config()
	c.IPsecOff, c.IPsec, c.Firewall = false, &config.IPsec{}, &config.Firewall{}
	if w := warnings(&c); len(w) != 0 {
		t.Errorf("a node with IPsec and a firewall warns %q", w)
	}
}

func TestMainCheck(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(good, []byte(spokeFile), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bad, []byte(strings.Replace(spokeFile, "role: spoke", "role: router", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	if code := Main([]string{"--check", "-c", good}, &out, &errb); code != 0 || out.String() != good+": configuration OK (node spoke1, spoke)\n" {
		t.Errorf("check good: %d %q %q", code, out.String(), errb.String())
	}
	out.Reset()
	errb.Reset()
	if code := Main([]string{"-c", bad, "--check"}, &out, &errb); code != 1 || errb.String() != "dmvpnd: "+bad+": invalid configuration, 1 error\n  line 2: role: \"router\" is not one of hub, spoke\n" {
		t.Errorf("check bad: %d %q", code, errb.String())
	}
	errb.Reset()
	if code := Main([]string{"-c", good, "extra"}, &out, &errb); code != 2 {
		t.Errorf("extra argument: exit %d", code)
	}
	out.Reset()
	if code := Main([]string{"--version"}, &out, &errb); code != 0 || !strings.HasPrefix(out.String(), "dmvpnd ") {
		t.Errorf("version: %d %q", code, out.String())
	}
}

// TestMainHelp: --help prints the usage on standard output and exits 0; a
// bad flag prints the synopsis on standard error and exits 2.
func TestMainHelp(t *testing.T) {
	var out, errb bytes.Buffer
	if code := Main([]string{"--help"}, &out, &errb); code != 0 || !strings.HasPrefix(out.String(), "usage: dmvpnd [-c FILE] [--check] [--keep-routes] [--unchecked-credentials] [--version]\n") {
		t.Errorf("--help: code %d, stdout %q, stderr %q", code, out.String(), errb.String())
	}
	out.Reset()
	errb.Reset()
	if code := Main([]string{"--nope"}, &out, &errb); code != 2 || !strings.Contains(errb.String(), "usage: dmvpnd [-c FILE]") || out.Len() != 0 {
		t.Errorf("--nope: code %d, stdout %q, stderr %q", code, out.String(), errb.String())
	}
}

// TestReloadDryRun: a dry run asks the daemon what would change and
// applies nothing (not even the log level); a refusal comes with its
// reasons one by one.
func TestReloadDryRun(t *testing.T) {
	a, n, path, _ := newTestApp(t)
	before := a.RunningConfig()
	n.changes = []string{"holding time 10m0s → 5m0s"}
	rewrite(t, path, "holding_time: 600", "holding_time: 300")
	rewrite(t, path, "logging: {level: info}", "logging: {level: debug}")
	changes, err := a.Reload(context.Background(), true)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"holding time 10m0s → 5m0s", "logging level info → debug"}, changes); diff != "" {
		t.Errorf("changes (-want +got):\n%s", diff)
	}
	if len(n.applied) != 0 || len(n.checked) != 1 || a.level.Enabled(zap.DebugLevel) || string(a.RunningConfig()) != string(before) || n.reopened != 0 {
		t.Errorf("a dry run applied something: applied %d, checked %d, debug %v", len(n.applied), len(n.checked), a.level.Enabled(zap.DebugLevel))
	}

	rewrite(t, path, "holding_time: 300", "holding_time: 300\n  mtu: 10\n  bogus: 1")
	_, err = a.Reload(context.Background(), true)
	var re *ReloadError
	if !errors.As(err, &re) || !errors.Is(err, ErrRefused) {
		t.Fatalf("invalid file: %v", err)
	}
	want := []string{"line 7: tunnel.mtu: 10 out of range 576-65507", `line 8: tunnel.bogus: unknown key "bogus" (known keys: `}
	if len(re.Reasons()) != 2 || re.Reasons()[0] != want[0] || !strings.HasPrefix(re.Reasons()[1], want[1]) {
		t.Errorf("reasons %q, want %q…", re.Reasons(), want)
	}
}

// TestReloadRestartReasons: settings that need a restart are each a
// reason; a daemon that failed part way is not "nothing changed".
func TestReloadRestartReasons(t *testing.T) {
	a, n, path, _ := newTestApp(t)
	rewrite(t, path, "control: {socket: /run/test/dmvpnd.sock}", "control: {socket: /run/other.sock}")
	_, err := a.Reload(context.Background(), false)
	var re *ReloadError
	if !errors.As(err, &re) || !slices.Equal(re.Reasons(), []string{"control: needs a restart"}) {
		t.Errorf("restart: %v", err)
	}
	rewrite(t, path, "control: {socket: /run/other.sock}", "control: {socket: /run/test/dmvpnd.sock}")
	n.err = fmt.Errorf("%w: loading the credentials into charon: %w", daemon.ErrRollbackFailed, errors.New("charon is not reachable"))
	_, err = a.Reload(context.Background(), false)
	if !errors.Is(err, ErrPartial) || errors.Is(err, ErrRefused) {
		t.Errorf("a reload that could not be rolled back: %v, want ErrPartial", err)
	}
}

// TestRunningConfigMasked: the running configuration the API serves
// never holds the NHRP password.
func TestRunningConfigMasked(t *testing.T) {
	a, _, path, _ := newTestApp(t)
	rewrite(t, path, "holding_time: 600", "holding_time: 600\n  authentication: s3cret")
	if _, err := a.Reload(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	if rc := string(a.RunningConfig()); strings.Contains(rc, "s3cret") || !strings.Contains(rc, "authentication: '********'") {
		t.Errorf("running config:\n%s", rc)
	}
}

// TestCertWarnings: show dmvpn warns about this node's certificate within
// 30 days of its expiry, and once it has expired.
func TestCertWarnings(t *testing.T) {
	now := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	st := func(d time.Duration) ipsec.Stats {
		return ipsec.Stats{Certificate: &ipsec.CertInfo{Subject: "CN=s1", Serial: "1a", NotAfter: now.Add(d)}}
	}
	if w := certWarnings(st(40*24*time.Hour), now); len(w) != 0 {
		t.Errorf("40 days: %q", w)
	}
	if w := certWarnings(st(12*24*time.Hour+time.Hour), now); len(w) != 1 || w[0] != "this node's certificate (CN=s1, serial 1a) expires in 12 days (2026-12-13)" {
		t.Errorf("12 days: %q", w)
	}
	if w := certWarnings(st(-time.Hour), now); len(w) != 1 || !strings.Contains(w[0], "expired on 2026-11-30: peers refuse it") {
		t.Errorf("expired: %q", w)
	}
	if w := certWarnings(ipsec.Stats{}, now); len(w) != 0 {
		t.Errorf("no certificate: %q", w)
	}
}
