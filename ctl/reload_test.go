package ctl

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"

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
