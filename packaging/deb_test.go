package packaging

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/opendmvpn/dmvpn/internal/pkglist"
)

// The package is built once for the tests that need it.
var (
	debOnce sync.Once
	debPath string
	debErr  error
	debDir  string
)

// builtDeb builds the package (make deb's way) into a directory that
// TestMain removes.
func builtDeb(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("dpkg-deb"); err != nil {
		t.Skip("skipping: needs dpkg-deb (a Debian system)")
	}
	debOnce.Do(func() {
		root, err := pkglist.RepoRoot()
		if err != nil {
			debErr = err
			return
		}
		ctx := context.Background()
		v, bin, date, err := GitVersions(ctx, root)
		if err != nil {
			debErr = err
			return
		}
		debPath, debErr = Build(ctx, Options{Root: root, Out: debDir, Version: v, BinaryVersion: bin, Arch: "amd64", Date: date})
	})
	if debErr != nil {
		t.Fatal(debErr)
	}
	return debPath
}

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "dmvpn-deb-test-")
	if err != nil {
		panic(err)
	}
	debDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// TestDeb: make deb's package has the commands, the unit, the example
// as a conffile, the completions and manual pages; its Depends are the
// packages tagged node (ipsec.TestPluginPackages holds those to what
// charon loads); lintian finds no error or warning in it (what it
// warns of by design is overridden in the package, with the reason).
func TestDeb(t *testing.T) {
	deb := builtDeb(t)
	if !strings.HasPrefix(filepath.Base(deb), "dmvpn_0.0.") || !strings.HasSuffix(deb, "_amd64.deb") {
		t.Errorf("package file %s", filepath.Base(deb))
	}
	field := func(name string) string {
		out, err := exec.Command("dpkg-deb", "-f", deb, name).Output()
		if err != nil {
			t.Fatalf("dpkg-deb -f %s: %v", name, err)
		}
		return strings.TrimSpace(string(out))
	}
	list, err := pkglist.LoadRepo()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(list.Tagged(pkglist.TagNode), strings.Split(field("Depends"), ", ")); diff != "" {
		t.Errorf("Depends (-node tagged +package):\n%s", diff)
	}
	for _, p := range []string{"strongswan-charon", "strongswan-swanctl", "libcharon-extra-plugins", "iproute2", "nftables"} {
		if !strings.Contains(field("Depends"), p) {
			t.Errorf("Depends lacks %s", p)
		}
	}
	out, err := exec.Command("dpkg-deb", "-c", deb).Output()
	if err != nil {
		t.Fatal(err)
	}
	modes := map[string]string{}
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		if len(f) >= 6 {
			modes[strings.TrimPrefix(f[5], ".")] = f[0] + " " + f[1]
		}
	}
	for path, mode := range map[string]string{
		"/usr/sbin/dmvpnd":                                "-rwxr-xr-x root/root",
		"/usr/sbin/dmvpnctl":                              "-rwxr-xr-x root/root",
		"/lib/systemd/system/dmvpnd.service":              "-rw-r--r-- root/root",
		"/etc/dmvpn/dmvpnd.yaml":                          "-rw-r----- root/root",
		"/usr/share/man/man8/dmvpnd.8.gz":                 "-rw-r--r-- root/root",
		"/usr/share/man/man8/dmvpnctl.8.gz":               "-rw-r--r-- root/root",
		"/usr/share/bash-completion/completions/dmvpnd":   "-rw-r--r-- root/root",
		"/usr/share/bash-completion/completions/dmvpnctl": "-rw-r--r-- root/root",
		"/usr/share/zsh/vendor-completions/_dmvpnd":       "-rw-r--r-- root/root",
		"/usr/share/zsh/vendor-completions/_dmvpnctl":     "-rw-r--r-- root/root",
		"/usr/share/doc/dmvpn/copyright":                  "-rw-r--r-- root/root",
		"/etc/logrotate.d/dmvpn":                          "-rw-r--r-- root/root",
	} {
		if modes[path] != mode {
			t.Errorf("%s: %q, want %q", path, modes[path], mode)
		}
	}
	ctrl := t.TempDir()
	if out, err := exec.Command("dpkg-deb", "-e", deb, ctrl).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb -e: %v\n%s", err, out)
	}
	if b, _ := os.ReadFile(filepath.Join(ctrl, "conffiles")); string(b) != "/etc/dmvpn/dmvpnd.yaml\n/etc/logrotate.d/dmvpn\n" {
		t.Errorf("conffiles: %q", b)
	}

	lintian, err := exec.LookPath("lintian")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("lintian is missing although scripts/install-deps.sh ran")
		}
		t.Skip("skipping the lintian check: needs lintian (scripts/install-deps.sh installs it)")
	}
	lout, _ := exec.Command(lintian, "--tag-display-limit", "0", deb).CombinedOutput()
	// Neither errors nor warnings: what lintian warns of and is meant
	// (the conffile's mode, static PIE binaries) is overridden in the
	// package with the reason (packaging/files/lintian-overrides).
	var errs []string
	for _, l := range strings.Split(string(lout), "\n") {
		if strings.HasPrefix(l, "E: ") || strings.HasPrefix(l, "W: ") {
			errs = append(errs, l)
		}
	}
	if len(errs) > 0 {
		t.Errorf("lintian errors and warnings:\n%s", strings.Join(errs, "\n"))
	}
	t.Logf("lintian:\n%s", lout)
}
