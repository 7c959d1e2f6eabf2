package vm

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

var shared struct {
	once sync.Once
	img  *Image
	skip string
	err  error
}

// Require returns the image for the installed kernel, prepared once per test
// process (in CacheDir, reused across runs). It skips t when not root or when
// QEMU cannot start at all, giving the reason; a missing kernel or busybox, or
// a failed build, fails t: `make test` installs them.
func Require(t testing.TB) *Image {
	t.Helper()
	if InGuest() {
		t.Fatal("vm.Require called inside the guest; branch on vm.InGuest() first")
	}
	shared.once.Do(func() {
		if os.Geteuid() != 0 {
			shared.skip = "root (9p of the host root, TAP devices), and this process is not root"
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		if err := Probe(ctx); err != nil {
			shared.skip = "QEMU (qemu-system-x86, installed by make test), and it cannot start here: " + err.Error()
			return
		}
		k, err := FindKernel()
		if err != nil {
			shared.err = err
			return
		}
		dir, err := CacheDir()
		if err != nil {
			shared.err = err
			return
		}
		shared.img, shared.err = Prepare(ctx, dir, k)
	})
	if shared.skip != "" {
		t.Skipf("skipping: VM tests need %s", shared.skip)
	}
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	return shared.img
}

// InGuest reports whether this process runs inside a VM started by Run.
// A test that runs itself in the guest (RunTest) branches on it.
func InGuest() bool {
	b, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return false
	}
	for _, f := range strings.Fields(string(b)) {
		if f == guestMarker {
			return true
		}
	}
	return false
}

// TestCommand returns the command line that runs test t, and only it, from
// this very test binary (os.Executable, visible in the guest through the
// host root), verbosely, followed by extra flags.
func TestCommand(t testing.TB, extra ...string) []string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	var pattern []string
	for _, part := range strings.Split(t.Name(), "/") {
		pattern = append(pattern, "^"+regexp.QuoteMeta(part)+"$")
	}
	return append([]string{exe, "-test.run=" + strings.Join(pattern, "/"), "-test.v", "-test.count=1"}, extra...)
}

// RunTest runs test t inside a VM booted from img (see TestCommand): the
// test's body runs there, guarded by InGuest. It logs the guest's output
// and fails t unless the test passed in the guest: a failure, a skip, a
// missing run or a VM error all fail it. It returns the run's Result.
func RunTest(ctx context.Context, t testing.TB, img *Image, cfg Config, extra ...string) *Result {
	t.Helper()
	res, err := img.Run(ctx, cfg, TestCommand(t, extra...)...)
	if res != nil {
		t.Logf("guest (waited %v for a VM slot, boot %v, total %v, exit %d):\n%s", res.Queued.Round(time.Millisecond),
			res.Boot.Round(time.Millisecond), res.Elapsed.Round(time.Millisecond), res.ExitCode, res.Output)
	}
	if err != nil {
		t.Fatalf("VM run of %s: %v", t.Name(), err)
	}
	if res.ExitCode != 0 || !bytes.Contains(res.Output, []byte("--- PASS: "+t.Name()+" ")) {
		t.Fatalf("%s did not pass in the guest (exit status %d)", t.Name(), res.ExitCode)
	}
	return res
}

// GoBuild builds the main package pkg ("./cmd/dmvpnd": a path relative to
// the repository root, or an import path) on the host into a temporary
// directory of t and returns the binary's path, which the guest sees too:
// run it there with Image.Run. It fails t if the build fails.
func GoBuild(t testing.TB, pkg string) string {
	t.Helper()
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	out := filepath.Join(t.TempDir(), path.Base(pkg))
	cmd := exec.Command(goTool, "build", "-o", out, pkg)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	return out
}
