package ctl

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/opendmvpn/dmvpn/daemon/config"
	"github.com/opendmvpn/dmvpn/daemon/control"
)

// reloadDaemon answers reloads as told and records the dry runs asked.
type reloadDaemon struct {
	fakeDaemon
	changes []string
	err     error
	dry     *[]bool
}

func (d reloadDaemon) Reload(_ context.Context, dryRun bool) ([]string, error) {
	*d.dry = append(*d.dry, dryRun)
	return d.changes, d.err
}

type refusal struct{ reasons []string }

func (r refusal) Error() string {
	return "reload refused, nothing changed: /etc/dmvpn/dmvpnd.yaml: invalid configuration, 2 errors\n  line 7: a\n  line 9: b"
}
func (r refusal) Reasons() []string { return r.reasons }

func serveReload(t *testing.T, d control.Daemon) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "d.sock")
	s := control.NewServer(d, nil)
	if err := s.ListenUnix(sock, control.OwnerOnly); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return sock
}

// TestReloadCommand: reload prints what changed, --dry-run what would,
// and a refusal exits 1 with one line per reason.
func TestReloadCommand(t *testing.T) {
	var dry []bool
	sock := serveReload(t, reloadDaemon{changes: []string{"holding time 10m0s → 5m0s", "networks"}, dry: &dry})
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"reload"}, "Reloaded: 2 changes applied:\n  holding time 10m0s → 5m0s\n  networks\n"},
		{[]string{"reload", "--dry-run"}, "Dry run: the reload would apply 2 changes:\n  holding time 10m0s → 5m0s\n  networks\n"},
		{[]string{"rel", "--dry-run", "json"}, "{\n  \"dry_run\": true,\n  \"changes\": [\n    \"holding time 10m0s → 5m0s\",\n    \"networks\"\n  ]\n}\n"},
	} {
		out, errb, code := runCtl(t, append([]string{"--socket", sock}, c.args...)...)
		if code != 0 || errb != "" {
			t.Fatalf("%v: exit %d, stderr %q", c.args, code, errb)
		}
		if diff := cmp.Diff(c.want, out); diff != "" {
			t.Errorf("%v (-want +got):\n%s", c.args, diff)
		}
	}
	if diff := cmp.Diff([]bool{false, true, true}, dry); diff != "" {
		t.Errorf("dry runs asked (-want +got):\n%s", diff)
	}

	var dry2 []bool
	sock = serveReload(t, reloadDaemon{err: refusal{[]string{"line 7: a", "line 9: b"}}, dry: &dry2})
	out, errb, code := runCtl(t, "--socket", sock, "reload", "--dry-run")
	want := "% reload refused, nothing changed: /etc/dmvpn/dmvpnd.yaml: invalid configuration, 2 errors\n  line 7: a\n  line 9: b\n"
	if code != 1 || out != "" || errb != want {
		t.Errorf("refused: exit %d, stdout %q, stderr:\n%s\nwant:\n%s", code, out, errb, want)
	}
	sock = serveReload(t, reloadDaemon{err: errors.New("reload refused, nothing changed: daemon not running"), dry: &dry2})
	if _, errb, code := runCtl(t, "--socket", sock, "reload"); code != 1 || errb != "% reload refused, nothing changed: daemon not running\n" {
		t.Errorf("refused without reasons: exit %d, %q", code, errb)
	}
}

// TestConfigFlagSocket: -c FILE connects to the control.socket the file
// names (what the service units' reload runs), --socket still wins, a
// file without one means the default socket, and a file that cannot be
// read is an error naming it.
func TestConfigFlagSocket(t *testing.T) {
	var dry []bool
	sock := serveReload(t, reloadDaemon{changes: []string{"networks"}, dry: &dry})
	dir := t.TempDir()
	cfg := filepath.Join(dir, "dmvpnd.yaml")
	if err := os.WriteFile(cfg, []byte("node: s1\ncontrol:\n  socket: "+sock+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, errb, code := runCtl(t, "-c", cfg, "reload")
	if code != 0 || out != "Reloaded: 1 change applied:\n  networks\n" {
		t.Errorf("-c FILE reload: exit %d, out %q, stderr %q", code, out, errb)
	}
	if _, errb, code := runCtl(t, "--config", cfg, "--socket", filepath.Join(dir, "none.sock"), "reload"); code == 0 || !strings.Contains(errb, "none.sock") {
		t.Errorf("--socket with -c: exit %d, stderr %q; want the --socket path tried", code, errb)
	}
	if _, errb, code := runCtl(t, "-c", filepath.Join(dir, "missing.yaml"), "reload"); code == 0 || !strings.Contains(errb, "missing.yaml") {
		t.Errorf("-c of a missing file: exit %d, stderr %q", code, errb)
	}
	if len(dry) != 1 {
		t.Errorf("reloads served: %v, want the one through -c", dry)
	}
	bare := filepath.Join(dir, "bare.yaml")
	if err := os.WriteFile(bare, []byte("node: s1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if s, err := config.ControlSocket(bare); err != nil || s != DefaultSocket {
		t.Errorf("a file without control.socket: %q, %v; want %s", s, err, DefaultSocket)
	}
}
