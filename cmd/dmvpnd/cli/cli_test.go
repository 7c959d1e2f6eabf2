package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestREADMESpelling: the README's dmvpnd synopsis is the one --help
// prints, and every flag the README's text mentions is spelled as the
// flag set spells it (-c, --check: not -check).
func TestREADMESpelling(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join("..", "..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	fs, _ := NewFlagSet(&bytes.Buffer{})
	syn := Synopsis(fs)
	if syn != "dmvpnd [-c FILE] [--check] [--keep-routes] [--unchecked-credentials] [--version]" {
		t.Errorf("synopsis %q", syn)
	}
	if !bytes.Contains(readme, []byte("\n    "+syn+"\n")) {
		t.Errorf("README.md does not show the synopsis %q", syn)
	}
	var help bytes.Buffer
	PrintUsage(&help, fs)
	if !strings.HasPrefix(help.String(), "usage: "+syn+"\n") {
		t.Errorf("--help starts %q", strings.SplitN(help.String(), "\n", 2)[0])
	}
	for _, f := range Flags(fs) {
		// In the README, `dmvpnd … -flag` must use the flag set's dashes.
		wrong := "-" + f.Name
		if Spelling(f) == wrong {
			wrong = "--" + f.Name
		}
		re := regexp.MustCompile(`dmvpnd[^\n` + "`" + `]*[ \[]` + regexp.QuoteMeta(wrong) + `\b`)
		if m := re.Find(readme); m != nil && !strings.Contains(string(m), Spelling(f)) {
			t.Errorf("README.md spells %s as %s: %q", Spelling(f), wrong, m)
		}
		if !strings.Contains(help.String(), "  "+Spelling(f)) {
			t.Errorf("--help does not list %s", Spelling(f))
		}
	}
}

func TestSpelling(t *testing.T) {
	fs, _ := NewFlagSet(&bytes.Buffer{})
	var got []string
	for _, f := range Flags(fs) {
		got = append(got, strings.TrimSpace(Spelling(f)+" "+Arg(f)))
	}
	if diff := cmp.Diff([]string{"-c FILE", "--check", "--keep-routes", "--unchecked-credentials", "--version"}, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}
