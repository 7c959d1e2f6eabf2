package testbed

import (
	"os/exec"
	"testing"
)

// SkipUnavailable skips t, saying what is missing, when this machine cannot
// build a testbed (not root, no iproute2) or lacks one of tools. CI is
// root and `make test` installs the tools, so there it never skips.
func SkipUnavailable(t testing.TB, tools ...string) {
	t.Helper()
	if err := Available(); err != nil {
		t.Skipf("skipping: needs root and iproute2 to build network namespaces, and this machine lacks one: %v", err)
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("skipping: needs the %s command, which is not installed (scripts/install-deps.sh installs it)", tool)
		}
	}
}
