// Package leakcheck fails a test that leaves goroutines behind.
package leakcheck

import (
	"runtime"
	"strings"
	"time"
)

// TB is the part of testing.TB the check needs.
type TB interface {
	Helper()
	Errorf(format string, args ...any)
	Cleanup(func())
}

// Check records the goroutines running now and, at cleanup, fails the test
// if more are still running after a grace period of two seconds. The stacks
// of the survivors are printed.
func Check(t TB) {
	t.Helper()
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(2 * time.Second)
		for {
			n := runtime.NumGoroutine()
			if n <= before {
				return
			}
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				buf = buf[:runtime.Stack(buf, true)]
				t.Errorf("leakcheck: %d goroutines before, %d after:\n%s", before, n, interesting(string(buf)))
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
}

// interesting drops the test framework's own goroutines from a dump.
func interesting(dump string) string {
	var out []string
	for _, g := range strings.Split(dump, "\n\n") {
		if strings.Contains(g, "testing.(*T).Run") || strings.Contains(g, "testing.tRunner") && strings.Contains(g, "leakcheck") {
			continue
		}
		out = append(out, g)
	}
	return strings.Join(out, "\n\n")
}
