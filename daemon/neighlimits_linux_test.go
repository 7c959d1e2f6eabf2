package daemon

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestRaiseNeighLimits: the limits are raised to at least neighLimits and
// never lowered; where the kernel has no such sysctls (any network
// namespace but the initial one), nothing is written and no error comes
// back, so a hub starts in a namespace or a container.
func TestRaiseNeighLimits(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "net", "ipv4", "neigh", "default")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, v := range map[string]string{"gc_thresh1": "128\n", "gc_thresh2": "100000\n", "gc_thresh3": "1024\n"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	raised, err := raiseNeighLimits(root, "ipv4")
	if err != nil || !raised {
		t.Fatalf("raiseNeighLimits = %v, %v; want true, nil", raised, err)
	}
	got := map[string]string{}
	for _, name := range []string{"gc_thresh1", "gc_thresh2", "gc_thresh3"} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		got[name] = strings.TrimSpace(string(b))
	}
	want := map[string]string{"gc_thresh1": "16384", "gc_thresh2": "100000", "gc_thresh3": "65536"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("limits (-want +got):\n%s", diff)
	}

	// A namespace: the directory exists, the gc_thresh files do not.
	nsRoot := t.TempDir()
	if err := os.MkdirAll(filepath.Join(nsRoot, "net", "ipv4", "neigh", "default"), 0o755); err != nil {
		t.Fatal(err)
	}
	raised, err = raiseNeighLimits(nsRoot, "ipv4")
	if err != nil || raised {
		t.Fatalf("in a namespace: raiseNeighLimits = %v, %v; want false, nil", raised, err)
	}
	if ents, _ := os.ReadDir(filepath.Join(nsRoot, "net", "ipv4", "neigh", "default")); len(ents) != 0 {
		t.Errorf("files written in a namespace: %v", ents)
	}

	// Limits that cannot be written are an error.
	bad := t.TempDir()
	for _, name := range []string{"gc_thresh1", "gc_thresh2", "gc_thresh3"} {
		if err := os.MkdirAll(filepath.Join(bad, "net", "ipv6", "neigh", "default", name), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := raiseNeighLimits(bad, "ipv6"); err == nil {
		t.Error("no error for an unwritable limit")
	}
}

// TestConfirmNeighbors: with shortcut_idle on ip_gre, the tunnel's
// neighbours are confirmed within a quarter of it (never below 1 s, never
// raised above the kernel's 30 s).
func TestConfirmNeighbors(t *testing.T) {
	for _, c := range []struct {
		idle time.Duration
		base string // "" : nothing written
	}{
		{8 * time.Second, "2000"},
		{2 * time.Second, "1000"},
		{60 * time.Second, "15000"},
		{2 * time.Minute, ""},
	} {
		root := t.TempDir()
		dir := filepath.Join(root, "net", "ipv4", "neigh", "gre1")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := confirmNeighbors(root, "ipv4", "gre1", c.idle); err != nil {
			t.Fatalf("idle %v: %v", c.idle, err)
		}
		got := map[string]string{}
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			b, _ := os.ReadFile(filepath.Join(dir, e.Name()))
			got[e.Name()] = string(b)
		}
		want := map[string]string{}
		if c.base != "" {
			want = map[string]string{"base_reachable_time_ms": c.base, "delay_first_probe_time": "1"}
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("idle %v (-want +got):\n%s", c.idle, diff)
		}
	}
	if err := confirmNeighbors(t.TempDir(), "ipv4", "gre1", 8*time.Second); err == nil {
		t.Error("no error without the device's sysctls")
	}
}
