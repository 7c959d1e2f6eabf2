package ctl

import (
	"bytes"
	"context"
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestComplete: cobra's completion protocol answered from the shell's own
// grammar, abbreviations included.
func TestComplete(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"__complete", ""}, "clear\tReset functions\ndebug\t"},
		{[]string{"__completeNoDesc", "sh", "ip", ""}, "bgp\nnhrp\n:4\n"},
		{[]string{"__completeNoDesc", "show", "dmvpn", ""}, "detail\njson\n|\n:4\n"},
		{[]string{"__completeNoDesc", "show", "dmvpn", "|", ""}, "begin\ncount\nexclude\ninclude\n:4\n"},
		{[]string{"__completeNoDesc", "show", "dmvpn", "|", "e"}, "exclude\n:4\n"},
		{[]string{"__completeNoDesc", "show", "dmvpn", "detail", "j"}, "json\n:4\n"},
		{[]string{"__completeNoDesc", "decode", ""}, ":0\n"},     // a file name
		{[]string{"__completeNoDesc", "--socket", ""}, ":0\n"},   // a path
		{[]string{"__completeNoDesc", "--so"}, "--socket\n:4\n"}, // flags
		{[]string{"__completeNoDesc", "nosuch", ""}, ":1\n"},     // an error: nothing
		{[]string{"__completeNoDesc", "show", "ip", "nhrp", "sh"}, "shortcut\n:4\n"},
	} {
		var out, errb bytes.Buffer
		code := Run(context.Background(), tc.args, strings.NewReader(""), &out, &errb, nil)
		if code != 0 || errb.Len() != 0 {
			t.Errorf("%q: code %d, stderr %q", tc.args, code, errb.String())
		}
		if !strings.HasPrefix(out.String(), tc.want) {
			t.Errorf("%q:\n%s", tc.args, cmp.Diff(tc.want, out.String()))
		}
	}
	// A command's own flags and the root's, each once.
	var out bytes.Buffer
	Run(context.Background(), []string{"__completeNoDesc", "reload", "--"}, strings.NewReader(""), &out, io.Discard, nil)
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	for _, want := range []string{"--dry-run", "--socket"} {
		if n := slices.Index(lines, want); n < 0 || slices.Index(lines[n+1:], want) >= 0 {
			t.Errorf("reload --<TAB>: %q, want %s once", lines, want)
		}
	}
	if lines[len(lines)-1] != ":4" {
		t.Errorf("reload --<TAB>: directive %q", lines[len(lines)-1])
	}
}
