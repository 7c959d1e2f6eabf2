package packaging

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/opendmvpn/dmvpn/cmd/dmvpnd/cli"
	"github.com/opendmvpn/dmvpn/ctl"
)

var testDate = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// render formats a manual page with groff as man(1) does, failing on any
// warning; without groff the roff text itself is returned.
func render(t *testing.T, src []byte) string {
	t.Helper()
	groff, err := exec.LookPath("groff")
	if err != nil {
		return string(src)
	}
	var stderr bytes.Buffer
	cmd := exec.Command(groff, "-man", "-Tutf8", "-ww", "-P-cbou", "-rLL=200n")
	cmd.Stdin = bytes.NewReader(src)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil || stderr.Len() > 0 {
		t.Fatalf("groff: %v: %s", err, stderr.String())
	}
	return string(out)
}

// TestDmvpndMan: every flag of dmvpnd's flag set is in its page, spelled
// as --help spells it, with its description.
func TestDmvpndMan(t *testing.T) {
	var b bytes.Buffer
	DmvpndMan(&b, "1.2.3", testDate)
	page := strings.Join(strings.Fields(render(t, b.Bytes())), " ")
	for _, f := range dmvpndFlags() {
		spelled := strings.TrimSpace(cli.Spelling(f) + " " + cli.Arg(f))
		if !strings.Contains(page, spelled+" "+strings.Join(strings.Fields(cli.Usage(f)), " ")) {
			t.Errorf("dmvpnd(8) lacks %q with its description", spelled)
		}
		if !strings.Contains(page, "["+spelled+"]") {
			t.Errorf("dmvpnd(8)'s synopsis lacks [%s]", spelled)
		}
	}
	for _, want := range []string{"DMVPND(8)", "dmvpnd - " + cli.Short, cli.DefaultConfig, "EXIT STATUS", "dmvpnctl(8)"} {
		if !strings.Contains(page, want) {
			t.Errorf("dmvpnd(8) lacks %q", want)
		}
	}
}

// TestDmvpnctlMan: every command of dmvpnctl's tree that runs is in its
// page, with its keywords, argument and flags.
func TestDmvpnctlMan(t *testing.T) {
	var b bytes.Buffer
	if err := DmvpnctlMan(&b, "1.2.3", testDate); err != nil {
		t.Fatal(err)
	}
	page := strings.Join(strings.Fields(render(t, b.Bytes())), " ")
	cmds, err := shellCommands(ctl.NewRoot(ctl.Options{}))
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, c := range cmds {
		lines = append(lines, c.line())
		if !strings.Contains(page, c.line()+" "+strings.Join(strings.Fields(c.short), " ")) {
			t.Errorf("dmvpnctl(8) lacks %q with its description", c.line())
		}
	}
	// A few the README documents, as they must read.
	for _, want := range []string{"show dmvpn [detail] [json]", "show ip nhrp shortcut [detail] [json]", "clear crypto sa PEER", "decode [--text] FILE", "debug nhrp [packets] [json]"} {
		if !slices.Contains(lines, want) {
			t.Errorf("dmvpnctl(8) commands lack %q:\n%s", want, strings.Join(lines, "\n"))
		}
	}
	for _, want := range []string{"--socket PATH", ctl.EnvSocket, ctl.DefaultSocket, "| include REGEX", "| count [REGEX]"} {
		if !strings.Contains(page, want) {
			t.Errorf("dmvpnctl(8) lacks %q", want)
		}
	}
}

// TestCompletions runs the completions in bash (with bash-completion, as
// Debian loads them) and checks the zsh ones parse.
func TestCompletions(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("skipping: needs bash")
	}
	const bc = "/usr/share/bash-completion/bash_completion"
	if _, err := os.Stat(bc); err != nil {
		t.Skipf("skipping: needs bash-completion (%s; scripts/install-deps.sh installs it)", bc)
	}
	dir := t.TempDir()
	build := exec.Command("go", "build", "-o", dir, "../cmd/dmvpnctl")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	var dmvpnd, dmvpnctl, zd, zc bytes.Buffer
	DmvpndBash(&dmvpnd)
	if err := DmvpnctlBash(&dmvpnctl); err != nil {
		t.Fatal(err)
	}
	DmvpndZsh(&zd)
	if err := DmvpnctlZsh(&zc); err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{"dmvpnd.bash": dmvpnd.Bytes(), "dmvpnctl.bash": dmvpnctl.Bytes(), "_dmvpnd": zd.Bytes(), "_dmvpnctl": zc.Bytes()}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	complete := func(script, fn string, words ...string) []string {
		t.Helper()
		line := strings.Join(words, " ")
		var q []string
		for _, w := range words {
			q = append(q, "'"+w+"'")
		}
		prog := "source " + bc + "; source " + filepath.Join(dir, script) + "; COMP_WORDS=(" + strings.Join(q, " ") + "); " +
			"COMP_CWORD=" + strconv.Itoa(len(words)-1) + "; COMP_LINE='" + line + "'; COMP_POINT=${#COMP_LINE}; " + fn + "; printf '%s\\n' \"${COMPREPLY[@]}\""
		cmd := exec.Command(bash, "-c", prog)
		cmd.Env = append(os.Environ(), "PATH="+dir+":"+os.Getenv("PATH"))
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%s %q: %v", fn, words, err)
		}
		return strings.Fields(string(out))
	}
	for _, tc := range []struct {
		script, fn string
		words      []string
		want       []string
	}{
		{"dmvpnd.bash", "_dmvpnd", []string{"dmvpnd", "--ch"}, []string{"--check"}},
		{"dmvpnd.bash", "_dmvpnd", []string{"dmvpnd", "-"}, []string{"-c", "--check", "--keep-routes", "--unchecked-credentials", "--version", "--help"}},
		{"dmvpnctl.bash", "__start_dmvpnctl", []string{"dmvpnctl", "sh", "ip", "nhrp", ""}, []string{"cache", "nhs", "shortcut", "traffic", "detail", "json", "|"}},
		{"dmvpnctl.bash", "__start_dmvpnctl", []string{"dmvpnctl", "show", "dm"}, []string{"dmvpn"}},
	} {
		got := complete(tc.script, tc.fn, tc.words...)
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("%q (-want +got):\n%s", tc.words, diff)
		}
	}
	if zsh, err := exec.LookPath("zsh"); err == nil {
		for _, f := range []string{"_dmvpnd", "_dmvpnctl"} {
			if out, err := exec.Command(zsh, "-n", filepath.Join(dir, f)).CombinedOutput(); err != nil {
				t.Errorf("zsh -n %s: %v\n%s", f, err, out)
			}
		}
		if !strings.HasPrefix(zd.String(), "#compdef dmvpnd\n") || !strings.HasPrefix(zc.String(), "#compdef dmvpnctl") {
			t.Error("zsh completions without their #compdef line")
		}
	} else if os.Getenv("CI") != "" {
		t.Error("zsh is missing although scripts/install-deps.sh ran")
	}
}
