package packaging

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/md5"
	"embed"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/opendmvpn/dmvpn/internal/pkglist"
)

// files are the package's hand-written parts: the service definitions,
// maintainer scripts and copyright.
//
//go:embed files
var files embed.FS

// Package names.
const (
	// Name is the Debian package's name.
	Name = "dmvpn"
	// Maintainer is its Maintainer field.
	Maintainer = "dmvpn maintainers <maintainers@users.noreply.h-seed-a558ff36.example>"
	// ExampleConfig is the example installed as /etc/dmvpn/dmvpnd.yaml.
	ExampleConfig = "examples/hub1.yaml"
)

// Options say what to build.
type Options struct {
	// Root is the repository (go.mod, examples/, scripts/packages.list).
	Root string
	// Out is the directory the .deb is written to.
	Out string
	// Version is the package's version; BinaryVersion the one compiled
	// into the commands (internal/version, as make build sets it).
	Version       string
	BinaryVersion string
	// Arch is the Debian architecture (amd64); GOARCH follows it.
	Arch string
	// Date stamps the changelog and the manual pages (the last commit's,
	// so two builds of one commit are alike).
	Date time.Time
	// Go is the go command (default "go").
	Go string
}

// goarch maps Debian architectures to Go's.
var goarch = map[string]string{"amd64": "amd64", "arm64": "arm64", "armhf": "arm", "i386": "386"}

// entry is one file of the package.
type entry struct {
	path string // in the package, absolute
	mode os.FileMode
	data []byte
}

// FileName is the package's file name: dmvpn_<version>_<arch>.deb.
func FileName(version, arch string) string {
	return fmt.Sprintf("%s_%s_%s.deb", Name, version, arch)
}

// Build builds the commands and the package and returns its path.
func Build(ctx context.Context, o Options) (string, error) {
	if o.Go == "" {
		o.Go = "go"
	}
	ga, ok := goarch[o.Arch]
	if !ok {
		return "", fmt.Errorf("packaging: no Go architecture for Debian's %q", o.Arch)
	}
	stage, err := os.MkdirTemp("", "dmvpn-deb-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(stage)
	root := filepath.Join(stage, "root")

	var ents []entry
	for _, cmd := range []string{"dmvpnd", "dmvpnctl"} {
		bin := filepath.Join(stage, cmd)
		build := exec.CommandContext(ctx, o.Go, "build", "-trimpath", "-buildmode=pie",
			"-ldflags", "-s -w -X github.com/opendmvpn/dmvpn/internal/version.Version="+o.BinaryVersion,
			"-o", bin, "./cmd/"+cmd)
		build.Dir = o.Root
		build.Env = append(os.Environ(), "GOOS=linux", "GOARCH="+ga, "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			return "", fmt.Errorf("packaging: building %s: %w\n%s", cmd, err, out)
		}
		data, err := os.ReadFile(bin)
		if err != nil {
			return "", err
		}
		ents = append(ents, entry{"/usr/sbin/" + cmd, 0o755, data})
	}
	gen, err := generated(o)
	if err != nil {
		return "", err
	}
	ents = append(ents, gen...)
	hand, err := handWritten(o)
	if err != nil {
		return "", err
	}
	ents = append(ents, hand...)

	size := int64(0)
	for _, e := range ents {
		if err := writeEntry(root, e); err != nil {
			return "", err
		}
		size += (int64(len(e.data)) + 1023) / 1024
	}
	// The audit log's directory (the example's ipsec.audit_log).
	// (Mode 0755 as Debian wants; the audit log itself is made 0600.)
	if err := writeDir(root, "/var/log/dmvpn"); err != nil {
		return "", err
	}

	list, err := pkglist.Load(filepath.Join(o.Root, pkglist.RepoPath))
	if err != nil {
		return "", err
	}
	control := Control(o.Version, o.Arch, size, list.Tagged(pkglist.TagNode))
	deb := filepath.Join(root, "DEBIAN")
	meta := []entry{
		{"control", 0o644, []byte(control)},
		{"conffiles", 0o644, []byte(Conffiles)},
		{"md5sums", 0o644, md5sums(ents)},
	}
	for _, s := range []string{"postinst", "prerm", "postrm"} {
		data, err := files.ReadFile("files/" + s)
		if err != nil {
			return "", err
		}
		meta = append(meta, entry{s, 0o755, data})
	}
	for _, m := range meta {
		if err := writeEntry(deb, entry{"/" + m.path, m.mode, m.data}); err != nil {
			return "", err
		}
	}
	if err := os.MkdirAll(o.Out, 0o755); err != nil {
		return "", err
	}
	out := filepath.Join(o.Out, FileName(o.Version, o.Arch))
	cmd := exec.CommandContext(ctx, "dpkg-deb", "--root-owner-group", "-Zxz", "--build", root, out)
	cmd.Env = append(os.Environ(), fmt.Sprintf("SOURCE_DATE_EPOCH=%d", o.Date.Unix()))
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("packaging: dpkg-deb: %w\n%s", err, b)
	}
	return out, nil
}

// Conffiles are the package's files under /etc, which dpkg keeps as the
// administrator edited them.
const Conffiles = "/etc/dmvpn/dmvpnd.yaml\n/etc/logrotate.d/dmvpn\n"

// Control is the package's control file.
func Control(version, arch string, installedKiB int64, depends []string) string {
	return fmt.Sprintf(`Package: %s
Version: %s
Architecture: %s
Maintainer: %s
Installed-Size: %d
Depends: %s
Section: net
Priority: optional
Description: hub and spoke router for DMVPN (NHRP, mGRE, IPsec)
 dmvpnd runs a DMVPN hub or spoke from one YAML file: a multipoint GRE
 tunnel, NHRP with Cisco's extensions (phases 1 to 3: registrations,
 redirects and spoke-to-spoke shortcuts), and IPsec through a strongSwan
 charon it runs and drives over VICI, where a hub accepts a spoke only
 when its certificate names the tunnel address it registers.
 .
 dmvpnctl is its vtysh-like shell (show dmvpn, show ip nhrp, show crypto
 sa, clear, debug). The package installs a systemd unit (not enabled) and
 an example hub configuration in /etc/dmvpn/dmvpnd.yaml.
`, Name, version, arch, Maintainer, installedKiB, strings.Join(depends, ", "))
}

// generated are the manual pages and completions.
func generated(o Options) ([]entry, error) {
	var ents []entry
	var b bytes.Buffer
	DmvpndMan(&b, o.Version, o.Date)
	ents = append(ents, entry{"/usr/share/man/man8/dmvpnd.8.gz", 0o644, gz(b.Bytes())})
	b.Reset()
	if err := DmvpnctlMan(&b, o.Version, o.Date); err != nil {
		return nil, err
	}
	ents = append(ents, entry{"/usr/share/man/man8/dmvpnctl.8.gz", 0o644, gz(b.Bytes())})
	for _, c := range []struct {
		path string
		gen  func(io.Writer) error
	}{
		{"/usr/share/bash-completion/completions/dmvpnd", func(w io.Writer) error { DmvpndBash(w); return nil }},
		{"/usr/share/bash-completion/completions/dmvpnctl", DmvpnctlBash},
		{"/usr/share/zsh/vendor-completions/_dmvpnd", func(w io.Writer) error { DmvpndZsh(w); return nil }},
		{"/usr/share/zsh/vendor-completions/_dmvpnctl", DmvpnctlZsh},
	} {
		b.Reset()
		if err := c.gen(&b); err != nil {
			return nil, err
		}
		ents = append(ents, entry{c.path, 0o644, bytes.Clone(b.Bytes())})
	}
	ents = append(ents, entry{"/usr/share/doc/dmvpn/changelog.gz", 0o644, gz([]byte(changelog(o)))})
	return ents, nil
}

// changelog is the package's Debian changelog: one entry, this build.
func changelog(o Options) string {
	return fmt.Sprintf("%s (%s) unstable; urgency=medium\n\n  * Built from dmvpn %s.\n\n -- %s  %s\n",
		Name, o.Version, o.BinaryVersion, Maintainer, o.Date.UTC().Format(time.RFC1123Z))
}

// handWritten are the files of packaging/files and the examples.
func handWritten(o Options) ([]entry, error) {
	read := func(p string) ([]byte, error) { return os.ReadFile(filepath.Join(o.Root, p)) }
	var ents []entry
	add := func(path string, mode os.FileMode, data []byte, err error) error {
		if err != nil {
			return err
		}
		ents = append(ents, entry{path, mode, data})
		return nil
	}
	emb := func(name string) ([]byte, error) { return files.ReadFile("files/" + name) }
	unit, err := emb("dmvpnd.service")
	if err := add("/lib/systemd/system/dmvpnd.service", 0o644, unit, err); err != nil {
		return nil, err
	}
	cp, err := emb("copyright")
	if err := add("/usr/share/doc/dmvpn/copyright", 0o644, cp, err); err != nil {
		return nil, err
	}
	ov, err := emb("lintian-overrides")
	if err := add("/usr/share/lintian/overrides/dmvpn", 0o644, ov, err); err != nil {
		return nil, err
	}
	ex, err := read(ExampleConfig)
	if err := add("/etc/dmvpn/dmvpnd.yaml", 0o640, ex, err); err != nil {
		return nil, err
	}
	lr, err := emb("logrotate")
	if err := add("/etc/logrotate.d/dmvpn", 0o644, lr, err); err != nil {
		return nil, err
	}
	openrc, err := emb("dmvpnd.openrc")
	if err := add("/usr/share/doc/dmvpn/examples/dmvpnd.openrc", 0o644, openrc, err); err != nil {
		return nil, err
	}
	examples, err := filepath.Glob(filepath.Join(o.Root, "examples", "*.yaml"))
	if err != nil {
		return nil, err
	}
	for _, e := range examples {
		data, err := os.ReadFile(e)
		if err := add("/usr/share/doc/dmvpn/examples/"+filepath.Base(e), 0o644, data, err); err != nil {
			return nil, err
		}
	}
	readme, err := read("README.md")
	if err := add("/usr/share/doc/dmvpn/README.md.gz", 0o644, gz(readme), err); err != nil {
		return nil, err
	}
	return ents, nil
}

// writeEntry writes e under root with its mode (whatever the umask),
// its directories 0755.
func writeEntry(root string, e entry) error {
	p := filepath.Join(root, e.path)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	for d := filepath.Dir(p); len(d) > len(root); d = filepath.Dir(d) {
		os.Chmod(d, 0o755)
	}
	if err := os.WriteFile(p, e.data, e.mode); err != nil {
		return err
	}
	return os.Chmod(p, e.mode)
}

// writeDir makes an empty directory of the package, mode 0755.
func writeDir(root, dir string) error {
	p := filepath.Join(root, dir)
	if err := os.MkdirAll(p, 0o755); err != nil {
		return err
	}
	for d := p; len(d) > len(root); d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			return err
		}
	}
	return nil
}

// md5sums is DEBIAN/md5sums: every file but the conffiles.
func md5sums(ents []entry) []byte {
	sorted := append([]entry(nil), ents...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].path < sorted[j].path })
	var b bytes.Buffer
	for _, e := range sorted {
		if strings.HasPrefix(e.path, "/etc/") {
			continue
		}
		fmt.Fprintf(&b, "%x  %s\n", md5.Sum(e.data), strings.TrimPrefix(e.path, "/"))
	}
	return b.Bytes()
}

// gz compresses with maximum compression and no name or time in the
// header (reproducible, as lintian wants).
func gz(data []byte) []byte {
	var b bytes.Buffer
	w, _ := gzip.NewWriterLevel(&b, gzip.BestCompression)
	w.Write(data)
	w.Close()
	return b.Bytes()
}
