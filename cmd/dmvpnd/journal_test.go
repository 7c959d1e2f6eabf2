package main

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"go.uber.org/zap"

	"github.com/opendmvpn/dmvpn/daemon/config"
)

// TestJournalPriorities: with standard error the journal's stream, each
// line starts with its syslog priority (a refused registration, logged as
// a warning, gets <4>); on any other stream lines are left alone.
func TestJournalPriorities(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skipf("skipping: needs Linux (systemd's journal reads the priority prefixes there); this is %s", runtime.GOOS)
	}
	path := filepath.Join(t.TempDir(), "stderr")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dev, ino, _ := fileID(f)
	for _, tc := range []struct {
		stream string
		want   []string
	}{
		{fmt.Sprintf("%d:%d", dev, ino), []string{"<7>", "<6>", "<4>", "<3>"}},
		{fmt.Sprintf("%d:%d", dev, ino+1), []string{"", "", "", ""}},
	} {
		for _, format := range []string{"console", "json"} {
			t.Setenv("JOURNAL_STREAM", tc.stream)
			f.Truncate(0)
			f.Seek(0, 0)
			log, _, err := newLogger(config.Logging{Level: "debug", Format: format}, f)
			if err != nil {
				t.Fatal(err)
			}
			log.Debug("debug line")
			log.Info("info line")
			log.Warn("registration refused", zap.String("reason", "gre_mismatch"))
			log.Error("error line")
			data, _ := os.ReadFile(path)
			lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
			if len(lines) != 4 {
				t.Fatalf("%s: %d lines: %q", format, len(lines), data)
			}
			for i, l := range lines {
				first := l[:1]
				if tc.want[i] == "" && first == "<" || tc.want[i] != "" && !strings.HasPrefix(l, tc.want[i]) {
					t.Errorf("stream %s, %s line %d: %q, want prefix %q", tc.stream, format, i, l, tc.want[i])
				}
			}
		}
	}
}
