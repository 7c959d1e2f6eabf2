// Command mkdeb builds dmvpn's Debian package (make deb):
// dmvpn_<version>_<arch>.deb in -out, versions from git unless given.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"

	"github.com/opendmvpn/dmvpn/internal/pkglist"
	"github.com/opendmvpn/dmvpn/packaging"
)

func main() {
	out := flag.String("out", "bin", "directory for the package")
	arch := flag.String("arch", "amd64", "Debian architecture")
	ver := flag.String("version", "", "package version (default from git: 0.0.<commits>+g<hash>)")
	flag.Parse()
	if err := run(*out, *arch, *ver); err != nil {
		fmt.Fprintf(os.Stderr, "mkdeb: %v\n", err)
		os.Exit(1)
	}
}

func run(out, arch, ver string) error {
	ctx := context.Background()
	root, err := pkglist.RepoRoot()
	if err != nil {
		return err
	}
	deb, bin, date, err := packaging.GitVersions(ctx, root)
	if err != nil {
		return err
	}
	if ver != "" {
		deb = ver
	}
	path, err := packaging.Build(ctx, packaging.Options{Root: root, Out: out, Version: deb, BinaryVersion: bin, Arch: arch, Date: date})
	if err != nil {
		return err
	}
	fmt.Println(path)
	return nil
}
