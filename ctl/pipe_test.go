package ctl

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/opendmvpn/dmvpn/daemon/control"
)

// TestPipeWriter filters the same text each way, written in pieces that
// split lines (as a command's many small writes do).
func TestPipeWriter(t *testing.T) {
	text := "head\nalpha 1\nbeta 2\nalpha 3\ntail"
	for _, tc := range []struct {
		line []string
		want string
	}{
		{[]string{"include", "alpha"}, "alpha 1\nalpha 3\n"},
		{[]string{"inc", "^b"}, "beta 2\n"},
		{[]string{"exclude", "alpha"}, "head\nbeta 2\ntail\n"},
		{[]string{"begin", "beta"}, "beta 2\nalpha 3\ntail\n"},
		{[]string{"count"}, "Number of lines which match regexp = 5\n"},
		{[]string{"count", "alpha"}, "Number of lines which match regexp = 2\n"},
		{[]string{"include", "alpha", "[13]"}, "alpha 1\nalpha 3\n"}, // the rest of the line is the regex
		{[]string{"include", "nothing"}, ""},
	} {
		_, spec, err := splitPipe(append([]string{"show", "x", "|"}, tc.line...))
		if err != nil {
			t.Fatalf("%v: %v", tc.line, err)
		}
		var out bytes.Buffer
		w := newPipeWriter(spec, &out)
		for i := 0; i < len(text); i += 3 {
			w.Write([]byte(text[i:min(i+3, len(text))]))
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(tc.want, out.String()); diff != "" {
			t.Errorf("| %s (-want +got):\n%s", strings.Join(tc.line, " "), diff)
		}
	}
}

func TestSplitPipeErrors(t *testing.T) {
	for _, line := range []string{
		"show dmvpn |",
		"show dmvpn | frobnicate x",
		"show dmvpn | include",
		"show dmvpn | include (",
		"show dmvpn | e", // exclude only, but "e" is unique: not an error
	} {
		_, _, err := splitPipe(strings.Fields(line))
		if line == "show dmvpn | e" {
			if err == nil {
				t.Errorf("%q: want exclude's missing regex", line)
			}
			continue
		}
		if !errors.Is(err, ErrPipe) {
			t.Errorf("%q: err %v, want ErrPipe", line, err)
		}
	}
	args, spec, err := splitPipe(strings.Fields("show dmvpn |include 10\\.0"))
	if err != nil || spec.kind != "include" || spec.re.String() != `10\.0` || strings.Join(args, " ") != "show dmvpn" {
		t.Errorf("glued modifier: %q %+v %v", args, spec, err)
	}
}

// TestShowPipes runs show commands with modifiers against the control
// server over the in-memory daemon, one-shot and as script lines, and
// refuses a modifier after anything but show.
func TestShowPipes(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "d.sock")
	s := control.NewServer(fakeDaemon{}, nil)
	if err := s.ListenUnix(sock, control.OwnerOnly); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	full, _, _ := runCtl(t, "--socket", sock, "show", "dmvpn")
	for line, want := range map[string]string{
		"sh dmvpn | include UP": "     1 192.0.2.1            172.16.0.1    UP 01:00:0",
		"sh dmvpn | count UP":   "Number of lines which match regexp = 2\n",
		"sh dmvpn | count":      "Number of lines which match regexp = ",
		"sh dmvpn | begin ^ --": " ----- ",
		"sh dmvpn | exclude .":  "",
	} {
		out, errb, code := runCtl(t, append([]string{"--socket", sock}, strings.Fields(line)...)...)
		if code != 0 || errb != "" {
			t.Fatalf("%s: exit %d, stderr %q", line, code, errb)
		}
		if !strings.HasPrefix(out, want) {
			t.Errorf("%s: output does not start with %q:\n%s", line, want, out)
		}
		switch {
		case strings.Contains(line, "include"):
			for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
				if !strings.Contains(l, "UP") {
					t.Errorf("%s: line without UP: %q", line, l)
				}
			}
		case strings.HasSuffix(line, "| count"):
			if want := "Number of lines which match regexp = " + strconv.Itoa(strings.Count(full, "\n")) + "\n"; out != want {
				t.Errorf("%s: %q, want %q", line, out, want)
			}
		case strings.Contains(line, "begin"):
			if !strings.HasSuffix(full, out) || strings.Contains(out, "Legend") {
				t.Errorf("%s: not the tail of the table from its rule:\n%s", line, out)
			}
		}
	}
	// As script lines (dmvpnctl < file), and the refusals.
	var out, errb bytes.Buffer
	code := Run(context.Background(), []string{"--socket", sock}, strings.NewReader("show dmvpn | count UP\nclear ip nhrp | count\nshow dmvpn | nosuch x\n"), &out, &errb, nil)
	if code != 1 || out.String() != "Number of lines which match regexp = 2\n" {
		t.Errorf("script: exit %d, out %q", code, out.String())
	}
	for _, w := range []string{"% output modifier: `|` follows show commands only", "% output modifier: unknown modifier \"nosuch\""} {
		if !strings.Contains(errb.String(), w) {
			t.Errorf("script: stderr lacks %q:\n%s", w, errb.String())
		}
	}
}
