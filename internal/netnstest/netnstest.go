// Package netnstest runs a test again in a fresh network namespace: the
// test binary re-executes itself under `ip netns exec` with only that test
// selected, and the child runs the body. Tests that change links, routes
// or rules use it so the machine's own network is never touched.
package netnstest

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// envChild names the test the child process runs.
const envChild = "NETNSTEST_CHILD"

// Run runs the calling test again in a new namespace whose name starts
// with prefix (the loopback is up), with env added to the environment,
// and fails t when the child does not pass. It returns true in the child,
// where the test body runs, and false in the parent, which then returns.
// Without root or the ip command the test is skipped, saying so.
func Run(t *testing.T, prefix string, env ...string) bool {
	t.Helper()
	if os.Getenv(envChild) == t.Name() {
		return true
	}
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root (a network namespace)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("skipping: needs the ip command (iproute2)")
	}
	ns := fmt.Sprintf("%s%dx%d", prefix, os.Getpid(), time.Now().UnixNano()%1e6)
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	defer exec.Command("ip", "netns", "del", ns).Run()
	exec.Command("ip", "-n", ns, "link", "set", "lo", "up").Run()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", ns, exe, "-test.run", "^"+t.Name()+"$", "-test.v", "-test.count=1")
	cmd.Env = append(append(os.Environ(), envChild+"="+t.Name()), env...)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: "+t.Name()) {
		t.Fatalf("in namespace %s: %v\n%s", ns, err, out)
	}
	return false
}
