package layout

import (
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/opendmvpn/dmvpn"

// layers ranks the module's homes, by the longest matching prefix: a
// package may import only packages of a lower rank or of its own home.
var layers = []struct {
	prefix string
	rank   int
}{
	{"gre", 0}, {"host", 0}, {"nhrp/wire", 0}, {"internal", 0}, {"cmd/dmvpnd/cli", 0},
	{"nhrp", 1}, {"failover", 1}, {"firewall", 1},
	{"ipsec", 2}, {"bgp", 2},
	{"daemon", 3},
	{"ctl", 4},
	{"lab", 5},
	{"cmd", 6},
	{"packaging", 7}, {"integration", 7},
}

// home returns a package's home (its layer's prefix) and rank.
func home(pkg string) (string, int, bool) {
	best, rank, ok := "", 0, false
	for _, l := range layers {
		if (pkg == l.prefix || strings.HasPrefix(pkg, l.prefix+"/")) && len(l.prefix) > len(best) {
			best, rank, ok = l.prefix, l.rank, true
		}
	}
	return best, rank, ok
}

// TestImportsRunDownward lists every package of the module with its
// non-test imports (go list) and checks each import against the layers;
// nhrp in particular imports nothing of the module but gre and its codec,
// and no shipped package imports the integration tests' tree.
func TestImportsRunDownward(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("needs the go tool in PATH to list the packages: %v", err)
	}
	out, err := exec.Command(goTool, "list", "-f", `{{.ImportPath}} {{join .Imports " "}}`, module+"/...").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) < 40 {
		t.Fatalf("go list gave %d packages: %s", len(lines), out)
	}
	checked := 0
	for _, line := range lines {
		f := strings.Fields(line)
		pkg := strings.TrimPrefix(f[0], module+"/")
		if f[0] == module {
			continue
		}
		h, rank, ok := home(pkg)
		if !ok {
			t.Errorf("%s: in no layer of this test (a new home? rank it)", pkg)
			continue
		}
		for _, imp := range f[1:] {
			if !strings.HasPrefix(imp, module+"/") {
				continue
			}
			dep := strings.TrimPrefix(imp, module+"/")
			dh, drank, ok := home(dep)
			switch {
			case !ok:
				t.Errorf("%s imports %s, in no layer", pkg, dep)
			case dh == h:
			case drank >= rank:
				t.Errorf("%s (%s, rank %d) imports %s (%s, rank %d): imports run downward", pkg, h, rank, dep, dh, drank)
			}
			checked++
		}
	}
	if checked < 100 {
		t.Errorf("checked only %d imports", checked)
	}
}

// TestNHRPDeps is the README's check: go list -deps of nhrp shows no
// package of this module above it.
func TestNHRPDeps(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("needs the go tool in PATH to list the packages: %v", err)
	}
	out, err := exec.Command(goTool, "list", "-deps", module+"/nhrp").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	var own []string
	for _, p := range strings.Fields(string(out)) {
		if strings.HasPrefix(p, module+"/") {
			own = append(own, strings.TrimPrefix(p, module+"/"))
		}
	}
	allowed := map[string]bool{"nhrp": true, "nhrp/wire": true, "gre": true, "gre/internal/inet": true}
	for _, p := range own {
		if !allowed[p] {
			t.Errorf("nhrp depends on %s (all: %v)", p, own)
		}
	}
	if got := strings.Join(own, " "); !strings.Contains(got, "nhrp/wire") || !strings.Contains(got, "gre") {
		t.Errorf("nhrp's dependencies in this module lack its codec or gre: %v", own)
	}
}
