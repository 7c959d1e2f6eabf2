//go:build linux

package ipsec

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/opendmvpn/dmvpn/internal/pkglist"
)

// confPlugins returns the load list of the strongswan.conf a managed
// charon gets in mode.
func confPlugins(t *testing.T, mode Mode) []string {
	t.Helper()
	conf := strongswanConf(Config{Managed: true, Dir: "/run/x"}.withDefaults(), mode)
	for _, line := range strings.Split(conf, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "load = "); ok {
			return strings.Fields(v)
		}
	}
	t.Fatalf("no load line in:\n%s", conf)
	return nil
}

// TestPluginsAreWhatTheConfLoads: the list the checks use is the one the
// generated strongswan.conf loads, in both modes.
func TestPluginsAreWhatTheConfLoads(t *testing.T) {
	for _, mode := range []Mode{ModeKernel, ModeUserspace} {
		if diff := cmp.Diff(Plugins(mode), confPlugins(t, mode)); diff != "" {
			t.Errorf("%s (-Plugins +strongswan.conf):\n%s", mode, diff)
		}
	}
}

// TestPluginPackages holds the lab's package list (and the Debian
// package's Depends, which packaging derives from the same list) to what
// the managed charon loads: for every plugin of the generated
// strongswan.conf, in both modes, dpkg -S names the package that ships
// its shared object, and that package must be tagged lab and node in
// scripts/packages.list (and be the one CheckInstalled names). It reads
// what the conf loads and who ships it, so it cannot pass because a
// package happens to be installed.
func TestPluginPackages(t *testing.T) {
	if _, err := exec.LookPath("dpkg"); err != nil {
		t.Skip("skipping: needs dpkg (a Debian system) to find which package ships each plugin")
	}
	list, err := pkglist.LoadRepo()
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{DefaultCharon: CharonPackage}
	for _, mode := range []Mode{ModeKernel, ModeUserspace} {
		for _, p := range confPlugins(t, mode) {
			files[PluginFile(DefaultCharon, p)] = PluginPackage(p)
		}
	}
	var names []string
	for file := range files {
		if _, err := os.Stat(file); err != nil {
			// Not installed here: dpkg cannot say who ships it. CI
			// installs the whole list, so there this is a failure.
			if os.Getenv("CI") != "" {
				t.Fatalf("%s is not installed although scripts/install-deps.sh ran: %v", file, err)
			}
			t.Skipf("skipping: needs %s (package %s), not installed here; scripts/install-deps.sh installs it", file, files[file])
		}
		names = append(names, file)
	}
	out, err := exec.Command("dpkg", append([]string{"-S"}, names...)...).Output()
	if err != nil {
		t.Fatalf("dpkg -S: %v", err)
	}
	for file, want := range files {
		got := dpkgOwner(string(out), file)
		if got != want {
			t.Errorf("%s ships in %q, but the ipsec package names %s", file, got, want)
		}
		for _, tag := range []string{pkglist.TagLab, pkglist.TagNode} {
			if !list.Has(got, tag) {
				t.Errorf("%s (for %s) is not tagged %s in %s", got, file, tag, pkglist.RepoPath)
			}
		}
	}
}

// dpkgOwner reads the package of dpkg -S's answer for file ("pkg: file";
// diversion lines are skipped).
func dpkgOwner(out, file string) string {
	for _, line := range strings.Split(out, "\n") {
		pkg, path, ok := strings.Cut(line, ": ")
		if ok && path == file && !strings.HasPrefix(pkg, "diversion ") {
			return strings.TrimSuffix(strings.Split(pkg, ",")[0], ":amd64")
		}
	}
	return ""
}
