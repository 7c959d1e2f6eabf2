package ipsec

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeStrongSwan lays out a charon and its plugins directory in a
// temporary directory, without the plugins named in without.
func fakeStrongSwan(t *testing.T, mode Mode, without ...string) string {
	t.Helper()
	dir := t.TempDir()
	charon := filepath.Join(dir, "charon")
	if err := os.WriteFile(charon, nil, 0o755); err != nil {
		t.Fatal(err)
	}
	os.Mkdir(PluginDir(charon), 0o755)
	for _, p := range Plugins(mode) {
		if !strings.Contains(" "+strings.Join(without, " ")+" ", " "+p+" ") {
			if err := os.WriteFile(PluginFile(charon, p), nil, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	return charon
}

func TestCheckInstalled(t *testing.T) {
	for _, tc := range []struct {
		name    string
		mode    Mode
		without []string
		want    string
	}{
		{"complete", ModeUserspace, nil, ""},
		{"no vici", ModeKernel, []string{"vici"}, "charon cannot load the vici plugin: install strongswan-swanctl ("},
		{"no libipsec", ModeUserspace, []string{"kernel-libipsec"}, "charon cannot load the kernel-libipsec plugin: install libcharon-extra-plugins ("},
		{"several", ModeUserspace, []string{"vici", "kernel-libipsec", "certexpire"},
			"charon cannot load the kernel-libipsec, vici, certexpire plugins: install libcharon-extra-plugins strongswan-swanctl (missing in "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckInstalled(fakeStrongSwan(t, tc.mode, tc.without...), tc.mode)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("got %v, want nil", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("got %v, want it to contain %q", err, tc.want)
			}
		})
	}
	if err := CheckInstalled(filepath.Join(t.TempDir(), "charon"), ModeKernel); err == nil || !strings.Contains(err.Error(), "install strongswan-charon") {
		t.Errorf("without charon: got %v", err)
	}
}

func TestReadCharonLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "charon.log")
	old := "00[LIB] plugin 'gmp': failed to load - an old run\n"
	now := `00[DMN] Starting IKE charon daemon (strongSwan 5.9.8, Linux 6.1.0, x86_64)
00[LIB] plugin 'vici': failed to load - vici_plugin_create not found and no plugin file available
00[LIB] loaded plugins: charon random nonce openssl pem x509 kernel-netlink socket-default updown
`
	if err := os.WriteFile(path, []byte(old+now), 0o600); err != nil {
		t.Fatal(err)
	}
	l := readCharonLog(path, int64(len(old)))
	want := "charon cannot load the vici plugin: install strongswan-swanctl (charon.log: failed to load - vici_plugin_create not found and no plugin file available)"
	if !l.loaded || l.reason() != want {
		t.Errorf("got loaded=%v reason %q, want %q", l.loaded, l.reason(), want)
	}
	os.WriteFile(path, []byte("00[DMN] Starting IKE charon daemon\n00[NET] could not open socket: Address in use\n"), 0o600)
	if got := readCharonLog(path, 0).reason(); got != "charon.log ends with: 00[NET] could not open socket: Address in use" {
		t.Errorf("without plugin failures: %q", got)
	}
}
