package pkglist

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParse(t *testing.T) {
	l, err := Parse([]byte("# comment\n\na lab node # why\nb   lab\nc\n"))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"a", "b", "c"}, l.Names()); diff != "" {
		t.Errorf("names (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"a", "b"}, l.Tagged(TagLab)); diff != "" {
		t.Errorf("lab (-want +got):\n%s", diff)
	}
	if !l.Has("a", TagNode) || l.Has("b", TagNode) {
		t.Errorf("node tags wrong: %+v", l)
	}
	if _, err := Parse([]byte("a\nb\na lab\n")); err == nil || !strings.Contains(err.Error(), "line 3: a listed again (first on line 1)") {
		t.Errorf("duplicate: got %v", err)
	}
}

// TestInstallDepsReadsTheList: install-deps.sh's selection (its own awk,
// run here through the script's dry listing) is the list's.
func TestInstallDepsReadsTheList(t *testing.T) {
	l, err := LoadRepo()
	if err != nil {
		t.Fatal(err)
	}
	root, _ := RepoRoot()
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{nil, l.Names()},
		{[]string{"--lab"}, l.Tagged(TagLab)},
	} {
		cmd := exec.Command("sh", append([]string{root + "/scripts/install-deps.sh", "--print"}, tc.args...)...)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("install-deps.sh --print %v: %v", tc.args, err)
		}
		if diff := cmp.Diff(tc.want, strings.Fields(string(out))); diff != "" {
			t.Errorf("install-deps.sh --print %v (-want +got):\n%s", tc.args, diff)
		}
	}
}
