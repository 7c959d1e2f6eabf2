package daemon

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/opendmvpn/dmvpn/nhrp"
)

func TestStateFile(t *testing.T) {
	dir := t.TempDir()
	s := newStateFile(filepath.Join(dir, "sub", "gre1.state"))
	defer s.close()
	if st, err := s.Load(); err != nil || st != nil {
		t.Fatalf("no file: %v %v", st, err)
	}
	now := time.Now().UTC().Truncate(time.Second)
	st := &nhrp.State{Version: nhrp.StateVersion, Tunnel: netip.MustParsePrefix("172.16.0.1/16"), Saved: now,
		Entries: []nhrp.StateEntry{{Type: nhrp.TypeDynamic, Proto: netip.MustParsePrefix("172.16.1.1/32"),
			NBMA: netip.MustParseAddr("198.51.100.1"), Created: now, Expires: now.Add(time.Hour), Holding: 7200,
			Identity: "CN=spoke1", Attrs: map[string][]string{"GRE": {"172.16.1.1"}}, Networks: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/24")}}}}
	if err := s.Save(st); err != nil {
		t.Fatal(err)
	}
	got, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(st, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
		cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
		t.Errorf("read back (-saved +read):\n%s", diff)
	}
	// The write went through a temporary file, now gone; the journal
	// (empty) is beside it.
	ents, _ := os.ReadDir(filepath.Dir(s.path))
	if len(ents) != 2 {
		t.Errorf("files beside the state: %v", ents)
	}
	if fi, err := os.Stat(s.path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("state file mode %v %v", fi.Mode(), err)
	}
	// A damaged file is an error, not a state.
	if err := os.WriteFile(s.path, []byte(`{"version":1,"entries":[{`), 0o600); err != nil {
		t.Fatal(err)
	}
	if st, err := s.Load(); err == nil || st != nil {
		t.Errorf("damaged file read: %v %v", st, err)
	}
	// So is one larger than the bound.
	if err := os.WriteFile(s.path, make([]byte, maxStateFile+1), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Load(); err == nil {
		t.Error("an oversized state file was read")
	}
}

// TestStateJournal: changes appended after a whole save are applied at
// load (replaced, added, removed, in address order); a line cut short by
// a crash ends the journal; a journal of an earlier whole state (a crash
// between the state's rename and the journal's reset) is not applied; a
// change with no whole state written is refused.
func TestStateJournal(t *testing.T) {
	dir := t.TempDir()
	s := newStateFile(filepath.Join(dir, "gre1.state"))
	defer s.close()
	now := time.Now().UTC().Truncate(time.Second)
	ent := func(addr string, exp time.Duration) nhrp.StateEntry {
		return nhrp.StateEntry{Type: nhrp.TypeDynamic, Proto: netip.MustParsePrefix(addr + "/32"),
			NBMA: netip.MustParseAddr("198.51.100.1"), Created: now, Expires: now.Add(exp), Holding: 7200}
	}
	if err := s.Append(nhrp.StateDelta{Saved: now, Put: []nhrp.StateEntry{ent("172.16.1.9", time.Hour)}}); err == nil {
		t.Error("a change appended with no whole state written")
	}
	tunnel := netip.MustParsePrefix("172.16.0.1/16")
	if err := s.Save(&nhrp.State{Version: nhrp.StateVersion, Tunnel: tunnel, Saved: now,
		Entries: []nhrp.StateEntry{ent("172.16.1.1", time.Hour), ent("172.16.1.2", time.Hour), ent("172.16.1.3", time.Hour)}}); err != nil {
		t.Fatal(err)
	}
	later := now.Add(time.Minute)
	for _, d := range []nhrp.StateDelta{
		{Saved: now.Add(time.Second), Put: []nhrp.StateEntry{ent("172.16.1.2", 2*time.Hour), ent("172.16.1.0", time.Hour)}},
		{Saved: later, Gone: []netip.Prefix{netip.MustParsePrefix("172.16.1.3/32"), netip.MustParsePrefix("172.16.9.9/32")}},
	} {
		if err := s.Append(d); err != nil {
			t.Fatal(err)
		}
	}
	want := &nhrp.State{Version: nhrp.StateVersion, Tunnel: tunnel, Saved: later,
		Entries: []nhrp.StateEntry{ent("172.16.1.0", time.Hour), ent("172.16.1.1", time.Hour), ent("172.16.1.2", 2*time.Hour)}}
	eq := []cmp.Option{cmp.Comparer(func(a, b netip.Addr) bool { return a == b }), cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })}
	check := func(what string, want *nhrp.State) {
		t.Helper()
		got, err := newStateFile(s.path).Load()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if diff := cmp.Diff(want, got, eq...); diff != "" {
			t.Errorf("%s (-want +read):\n%s", what, diff)
		}
	}
	check("after two changes", want)

	// A crash in the middle of a line: that line is not applied.
	f, err := os.OpenFile(s.journalPath(), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(`{"saved":"2030-01-01T00:00:00Z","gone":["172.16.1.1/3`)
	f.Close()
	check("a line cut short", want)

	// A journal left from before the last whole save is not applied.
	old, err := os.ReadFile(s.journalPath())
	if err != nil {
		t.Fatal(err)
	}
	whole := &nhrp.State{Version: nhrp.StateVersion, Tunnel: tunnel, Saved: later, Entries: []nhrp.StateEntry{ent("172.16.1.5", time.Hour)}}
	if err := s.Save(whole); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(s.journalPath(), old, 0o600); err != nil {
		t.Fatal(err)
	}
	check("a journal of another generation", whole)
}
