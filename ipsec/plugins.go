package ipsec

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// pluginsBase are the charon plugins a DMVPN node needs (the compiled-in
// default list without those that change the host: resolve writes
// resolv.conf, forecast and farp listen on the LAN, dhcp, ha, stroke…);
// revocation checks certificates against CRLs and OCSP, which curl
// fetches from the URIs a certificate names.
var pluginsBase = strings.Fields("pkcs11 aesni aes rc2 sha2 sha1 md5 mgf1 rdrand random nonce x509 revocation constraints pubkey pkcs1 pkcs7 pkcs12 pgp dnskey sshkey pem openssl gcrypt pkcs8 fips-prf gmp curve25519 chapoly xcbc cmac ctr ccm gcm hmac kdf drbg curl attr")

// pluginsTail follow the base list (and kernel-libipsec in userspace
// mode): the kernel interface, the IKE socket, VICI, the updown hook,
// the counters and certificate expiry.
var pluginsTail = strings.Fields("kernel-netlink socket-default vici updown counters certexpire")

// Plugins returns the plugins a managed charon loads in mode, in its
// strongswan.conf's load order.
func Plugins(mode Mode) []string {
	out := append([]string(nil), pluginsBase...)
	if mode == ModeUserspace {
		out = append(out, "kernel-libipsec")
	}
	return append(out, pluginsTail...)
}

// CharonPackage is the Debian package that ships charon itself.
const CharonPackage = "strongswan-charon"

// pluginPackages names the Debian (12) package that ships each plugin's
// shared object; TestPluginPackages checks it against dpkg -S.
var pluginPackages = map[string]string{
	"kernel-libipsec": "libcharon-extra-plugins",
	"certexpire":      "libcharon-extra-plugins",
	"vici":            "strongswan-swanctl",
	"socket-default":  "strongswan-libcharon",
	"counters":        "strongswan-libcharon",
	"updown":          "strongswan-libcharon",
	"pkcs11":          "libstrongswan-extra-plugins",
	"curl":            "libstrongswan-extra-plugins",
	"rdrand":          "libstrongswan-extra-plugins",
	"gcrypt":          "libstrongswan-extra-plugins",
	"curve25519":      "libstrongswan-extra-plugins",
	"chapoly":         "libstrongswan-extra-plugins",
	"cmac":            "libstrongswan-extra-plugins",
	"ctr":             "libstrongswan-extra-plugins",
	"ccm":             "libstrongswan-extra-plugins",
	"aesni":           "libstrongswan-standard-plugins",
	"openssl":         "libstrongswan-standard-plugins",
	"gcm":             "libstrongswan-standard-plugins",
}

// PluginPackage returns the Debian package that ships plugin name:
// libstrongswan for the plugins not named otherwise.
func PluginPackage(name string) string {
	if p, ok := pluginPackages[name]; ok {
		return p
	}
	return "libstrongswan"
}

// PluginDir is where charon (at the path charon) loads its plugins from:
// the plugins directory beside it, /usr/lib/ipsec/plugins on Debian.
func PluginDir(charon string) string {
	return filepath.Join(filepath.Dir(charon), "plugins")
}

// PluginFile is a plugin's shared object.
func PluginFile(charon, name string) string {
	return filepath.Join(PluginDir(charon), "libstrongswan-"+name+".so")
}

// ErrMissing wraps the errors of CheckInstalled.
var ErrMissing = errors.New("strongSwan is incomplete")

// CheckInstalled reports what a managed charon at the path charon would
// lack in mode: charon itself, or a plugin it loads, each named with the
// package to install ("charon cannot load the vici plugin: install
// strongswan-swanctl").
func CheckInstalled(charon string, mode Mode) error {
	if charon == "" {
		charon = DefaultCharon
	}
	if _, err := os.Stat(charon); err != nil {
		return fmt.Errorf("%w: charon is missing (%s): install %s", ErrMissing, charon, CharonPackage)
	}
	var missing, pkgs []string
	for _, p := range Plugins(mode) {
		if _, err := os.Stat(PluginFile(charon, p)); err != nil {
			missing = append(missing, p)
			if pkg := PluginPackage(p); !slices.Contains(pkgs, pkg) {
				pkgs = append(pkgs, pkg)
			}
		}
	}
	switch len(missing) {
	case 0:
		return nil
	case 1:
		return fmt.Errorf("%w: charon cannot load the %s plugin: install %s (%s is missing)",
			ErrMissing, missing[0], pkgs[0], PluginFile(charon, missing[0]))
	}
	return fmt.Errorf("%w: charon cannot load the %s plugins: install %s (missing in %s)",
		ErrMissing, strings.Join(missing, ", "), strings.Join(pkgs, " "), PluginDir(charon))
}

// charonLog is what charon wrote to its log since it was started.
type charonLog struct {
	// failed are the plugins it could not load, as messages naming the
	// package that ships each.
	failed []string
	// loaded is set once it has logged the plugins it loaded (after the
	// failures, when there are any).
	loaded bool
	last   string
}

// readCharonLog reads charon's log from offset on.
func readCharonLog(path string, offset int64) charonLog {
	var l charonLog
	f, err := os.Open(path)
	if err != nil {
		return l
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return l
	}
	sc := bufio.NewScanner(io.LimitReader(f, 1<<20))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		l.last = line
		if strings.Contains(line, "loaded plugins:") {
			l.loaded = true
		}
		// 00[LIB] plugin 'vici': failed to load - vici_plugin_create not found and no plugin file available
		_, rest, ok := strings.Cut(line, "plugin '")
		if !ok {
			continue
		}
		name, rest, ok := strings.Cut(rest, "'")
		if ok && strings.Contains(rest, "failed to load") {
			l.failed = append(l.failed, fmt.Sprintf("charon cannot load the %s plugin: install %s (charon.log: %s)",
				name, PluginPackage(name), strings.TrimSpace(strings.TrimPrefix(rest, ":"))))
		}
	}
	return l
}

// reason says why charon is not serving: the plugins it could not load,
// or its last line; empty when the log says nothing.
func (l charonLog) reason() string {
	if len(l.failed) > 0 {
		return strings.Join(l.failed, "; ")
	}
	if l.last != "" {
		return "charon.log ends with: " + l.last
	}
	return ""
}
