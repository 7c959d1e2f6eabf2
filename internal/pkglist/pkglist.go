// Package pkglist reads scripts/packages.list, the one list of Debian
// packages dmvpn needs: each line a package and its tags (lab: `make lab`
// needs it; node: a node needs it at run time, the Debian package's
// Depends). scripts/install-deps.sh reads the same file.
package pkglist

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// RepoPath is the list's path inside the repository.
const RepoPath = "scripts/packages.list"

// Tags of the list.
const (
	// TagLab marks what `make lab` installs.
	TagLab = "lab"
	// TagNode marks what a hub or spoke needs at run time.
	TagNode = "node"
)

// Package is one line of the list.
type Package struct {
	Name string
	Tags []string
	Line int
}

// List is the parsed file, in file order.
type List []Package

// Parse reads the list's text: '#' starts a comment, blank lines are
// skipped, the first field is the package and the others its tags. A
// package listed twice is an error.
func Parse(data []byte) (List, error) {
	var l List
	seen := map[string]int{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line, _, _ := strings.Cut(sc.Text(), "#")
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if prev, ok := seen[f[0]]; ok {
			return nil, fmt.Errorf("line %d: %s listed again (first on line %d)", n, f[0], prev)
		}
		seen[f[0]] = n
		l = append(l, Package{Name: f[0], Tags: f[1:], Line: n})
	}
	return l, sc.Err()
}

// Load reads the list from a file.
func Load(path string) (List, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	l, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return l, nil
}

// LoadRepo reads the list of the repository that holds the working
// directory (found by walking up to go.mod), as tests and build tools run.
func LoadRepo() (List, error) {
	root, err := RepoRoot()
	if err != nil {
		return nil, err
	}
	return Load(filepath.Join(root, RepoPath))
}

// RepoRoot is the nearest directory at or above the working directory
// that holds go.mod.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("pkglist: no go.mod above the working directory")
		}
		dir = parent
	}
}

// Names returns every package, in file order.
func (l List) Names() []string {
	out := make([]string, 0, len(l))
	for _, p := range l {
		out = append(out, p.Name)
	}
	return out
}

// Tagged returns the packages carrying tag, in file order.
func (l List) Tagged(tag string) []string {
	var out []string
	for _, p := range l {
		if slices.Contains(p.Tags, tag) {
			out = append(out, p.Name)
		}
	}
	return out
}

// Has reports whether pkg is listed with tag.
func (l List) Has(pkg, tag string) bool {
	return slices.Contains(l.Tagged(tag), pkg)
}
