// Package leakcheck fails a test that leaves goroutines behind: the
// project's one leak check, on go.uber.org/goleak.
package leakcheck

import (
	"testing"

	"go.uber.org/goleak"
)

// Check records the goroutines running now and, at the test's cleanup,
// fails it if any other goroutine is still running (goleak retries for a
// while before it reports, with the survivors' stacks).
func Check(t testing.TB, opts ...goleak.Option) {
	t.Helper()
	opts = append(opts, goleak.IgnoreCurrent())
	t.Cleanup(func() { goleak.VerifyNone(t, opts...) })
}
