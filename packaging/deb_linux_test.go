//go:build linux

package packaging

import (
	"bytes"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/opendmvpn/dmvpn/internal/pki"
)

// TestDebInstall installs the package on this machine (CI's is thrown
// away; the test purges it again, pass or fail), runs the installed
// dmvpnd --check on the installed example — refused while the
// certificates it names are missing, accepted once they are in
// /etc/dmvpn/pki — checks the unit with systemd-analyze verify and finds
// the manual pages, then purges the package and checks it left nothing.
func TestDebInstall(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: installing a package needs root")
	}
	deb := builtDeb(t)
	const pkiDir = "/etc/dmvpn/pki"
	if _, err := os.Stat(pkiDir); err == nil {
		t.Fatalf("%s exists on this machine: not touching its keys", pkiDir)
	}
	run := func(name string, args ...string) (string, string, error) {
		t.Helper()
		var out, errb bytes.Buffer
		cmd := exec.Command(name, args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		return out.String(), errb.String(), err
	}
	t.Cleanup(func() {
		os.RemoveAll(pkiDir)
		if _, errb, err := run("dpkg", "--purge", Name); err != nil {
			t.Errorf("dpkg --purge: %v\n%s", err, errb)
		}
		os.Remove("/etc/dmvpn")
	})
	if out, errb, err := run("dpkg", "-i", deb); err != nil {
		t.Fatalf("dpkg -i: %v\n%s%s", err, out, errb)
	}
	if st, _, _ := run("dpkg-query", "-W", "-f=${Status}", Name); st != "install ok installed" {
		t.Fatalf("after dpkg -i the package is %q", st)
	}
	if out, _, err := run("/usr/sbin/dmvpnd", "--version"); err != nil || !strings.HasPrefix(out, "dmvpnd ") {
		t.Errorf("installed dmvpnd --version: %q %v", out, err)
	}

	// The example names certificates the operator provides.
	_, errb, err := run("/usr/sbin/dmvpnd", "--check", "-c", "/etc/dmvpn/dmvpnd.yaml")
	if err == nil || !strings.Contains(errb, pkiDir+"/") {
		t.Errorf("--check without the example's certificates: %v, %q (want a refusal naming %s)", err, errb, pkiDir)
	}
	if err := os.Mkdir(pkiDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := pki.WriteSet(pkiDir, map[string]string{
		"hub1": "C=FI, O=Example, OU=GRE=172.16.0.1, OU=AS=65000, CN=hub1",
	}); err != nil {
		t.Fatal(err)
	}
	out, errb, err := run("/usr/sbin/dmvpnd", "--check", "-c", "/etc/dmvpn/dmvpnd.yaml")
	if err != nil || out != "/etc/dmvpn/dmvpnd.yaml: configuration OK (node hub1, hub)\n" {
		t.Errorf("installed dmvpnd --check on the installed example: %v\nstdout %q\nstderr %q", err, out, errb)
	}
	t.Logf("dmvpnd --check -c /etc/dmvpn/dmvpnd.yaml: %s%s", out, errb)

	if _, err := exec.LookPath("systemd-analyze"); err == nil {
		// Verifies the unit's syntax, its commands and its man: links.
		if out, errb, err := run("systemd-analyze", "verify", "/lib/systemd/system/dmvpnd.service"); err != nil || strings.Contains(out+errb, "dmvpnd.service:") {
			t.Errorf("systemd-analyze verify: %v\n%s%s", err, out, errb)
		}
	}
	if _, err := exec.LookPath("man"); err == nil {
		for _, page := range []string{"dmvpnd", "dmvpnctl"} {
			if out, _, err := run("man", "-w", "8", page); err != nil || strings.TrimSpace(out) != "/usr/share/man/man8/"+page+".8.gz" {
				t.Errorf("man -w 8 %s: %q %v", page, out, err)
			}
		}
	}

	if _, errb, err := run("dpkg", "--purge", Name); err != nil {
		t.Fatalf("dpkg --purge: %v\n%s", err, errb)
	}
	for _, f := range []string{"/usr/sbin/dmvpnd", "/usr/sbin/dmvpnctl", "/etc/dmvpn/dmvpnd.yaml", "/lib/systemd/system/dmvpnd.service", "/usr/share/man/man8/dmvpnd.8.gz"} {
		if _, err := os.Stat(f); err == nil {
			t.Errorf("%s left after dpkg --purge", f)
		}
	}
}
