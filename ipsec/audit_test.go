package ipsec

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
)

func readLines(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Fields(string(b))
}

// TestAuditReopens: after logrotate moves the audit log away, the next
// line goes to a new file at the path — on Reopen (SIGHUP, reload) at
// once, and by itself once the move is noticed.
func TestAuditReopens(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.jsonl")
	log, af, err := newAuditLogger(path, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer af.Close()
	af.mu.Lock()
	af.checkEvery = time.Hour // the move is not noticed by itself yet
	af.mu.Unlock()
	log.Info("one")
	if err := os.Rename(path, path+".1"); err != nil { // logrotate's move …
		t.Fatal(err)
	}
	log.Info("two")                     // not noticed: still the moved file
	if err := af.Reopen(); err != nil { // … then its postrotate reload
		t.Fatal(err)
	}
	log.Info("three")
	if got := readLines(t, path+".1"); len(got) != 2 || !strings.Contains(got[0], `"event":"one"`) || !strings.Contains(got[1], `"event":"two"`) {
		t.Errorf("rotated file: %q", got)
	}
	if got := readLines(t, path); len(got) != 1 || !strings.Contains(got[0], `"event":"three"`) {
		t.Errorf("new file after Reopen: %q", got)
	}
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("new file mode %v, %v; want 0600", st.Mode(), err)
	}

	// Without a signal: the move is noticed on the next write once
	// checkEvery has passed.
	af.mu.Lock()
	af.checkEvery = 0
	af.mu.Unlock()
	if err := os.Rename(path, path+".2"); err != nil {
		t.Fatal(err)
	}
	log.Info("four")
	if got := readLines(t, path); len(got) != 1 || !strings.Contains(got[0], `"event":"four"`) {
		t.Errorf("new file after the move was noticed: %q", got)
	}
	// Removed (logrotate's create after a delete): the same.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	log.Info("five")
	if got := readLines(t, path); len(got) != 1 || !strings.Contains(got[0], `"event":"five"`) {
		t.Errorf("new file after a removal: %q", got)
	}
}

// TestAuditRotatesBySize: a line that would take the file past its size
// moves it to PATH.1 (and PATH.1 to PATH.2 …); only keep rotated files
// stay, so the audit log never takes more than (keep+1) × maxSize.
func TestAuditRotatesBySize(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.jsonl")
	log, af, err := newAuditLogger(path, 200, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer af.Close()
	for i := range 40 {
		log.Info("registration accepted", zap.Int("n", i))
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
		if st, err := os.Stat(filepath.Join(dir, e.Name())); err != nil || st.Size() > 200 {
			t.Errorf("%s: %v bytes (%v), over the maximum of 200", e.Name(), st.Size(), err)
		}
	}
	if want := []string{"audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"}; !slices.Equal(names, want) {
		t.Fatalf("files %v, want %v", names, want)
	}
	// The newest lines are in the file, the ones before in .1, then .2.
	last := readLines(t, path)
	prev := readLines(t, path+".1")
	if len(last) == 0 || !strings.Contains(last[len(last)-1], `"n":39`) {
		t.Errorf("the last line is not in the file: %q", last)
	}
	if len(prev) == 0 || strings.Contains(prev[len(prev)-1], `"n":39`) {
		t.Errorf("rotated file: %q", prev)
	}
}
