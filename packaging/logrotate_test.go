package packaging

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestLogrotate: /etc/logrotate.d/dmvpn rotates the audit log the
// installed example writes, without a postrotate (dmvpnd reopens the file
// by itself once it is moved; a SIGHUP would reload the whole
// configuration), under names apart from dmvpnd's own size rotation; and
// logrotate, run on it, moves the file and leaves the new one to dmvpnd.
func TestLogrotate(t *testing.T) {
	conf, err := files.ReadFile("files/logrotate")
	if err != nil {
		t.Fatal(err)
	}
	ex, err := os.ReadFile(filepath.Join("..", ExampleConfig))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^\s*audit_log:\s*(\S+)`).FindSubmatch(ex)
	if m == nil {
		t.Fatalf("%s sets no ipsec.audit_log", ExampleConfig)
	}
	audit := string(m[1])
	if !strings.Contains(string(conf), "\n"+audit+" {\n") {
		t.Errorf("the logrotate file does not name the example's audit log %s", audit)
	}
	for _, l := range strings.Split(string(conf), "\n") {
		if strings.HasPrefix(l, "#") {
			continue
		}
		for _, bad := range []string{"postrotate", "kill", "HUP", "reload", "copytruncate"} {
			if strings.Contains(l, bad) {
				t.Errorf("the logrotate file has %q: %q", bad, l)
			}
		}
	}
	for _, want := range []string{"\tdateext\n", "\tnocreate\n", "\tdelaycompress\n"} {
		if !strings.Contains(string(conf), want) {
			t.Errorf("the logrotate file lacks %q", strings.TrimSpace(want))
		}
	}

	lr, err := exec.LookPath("logrotate")
	if err != nil {
		t.Skip("skipping the run: needs logrotate, not installed here (scripts/install-deps.sh installs it); the file was checked")
	}
	dir := t.TempDir()
	log := filepath.Join(dir, "audit.jsonl")
	if err := os.WriteFile(log, []byte(`{"msg":"registration accepted"}`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	local := filepath.Join(dir, "dmvpn")
	if err := os.WriteFile(local, []byte(strings.ReplaceAll(string(conf), audit, log)), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(lr, "-f", "-s", filepath.Join(dir, "state"), local).CombinedOutput(); err != nil {
		t.Fatalf("logrotate: %v\n%s", err, out)
	}
	if _, err := os.Stat(log); !os.IsNotExist(err) {
		t.Errorf("after rotation %s exists (%v): dmvpnd makes the new file", log, err)
	}
	moved, _ := filepath.Glob(log + "-*")
	if len(moved) != 1 || strings.HasSuffix(moved[0], ".gz") {
		t.Errorf("rotated files %q: want one, dated, not yet compressed", moved)
	}
}
