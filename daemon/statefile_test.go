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
	s := stateFile{path: filepath.Join(dir, "sub", "gre1.state")}
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
	// The write went through a temporary file, now gone.
	ents, _ := os.ReadDir(filepath.Dir(s.path))
	if len(ents) != 1 {
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
