// Package backend chooses and opens a GRE data plane: the kernel's ip_gre
// where the kernel can create one, else the ebpf fast path (TC BPF
// programs around the userspace backend's TUN) where BPF programs can be
// attached, else the userspace TUN + raw-socket relay. It returns a
// one-line reason for the daemon's log.
package backend

import (
	"errors"
	"fmt"
	"strings"

	"github.com/opendmvpn/dmvpn/gre"
	"github.com/opendmvpn/dmvpn/gre/ebpf"
	"github.com/opendmvpn/dmvpn/gre/kernel"
	"github.com/opendmvpn/dmvpn/gre/userspace"
)

// Kind names a backend choice in the configuration.
type Kind string

// Backend choices. Auto is the default.
const (
	Auto      Kind = "auto"
	Kernel    Kind = "kernel"
	Ebpf      Kind = "ebpf"
	Userspace Kind = "userspace"
)

// ErrKind is wrapped by ParseKind for an unknown name.
var ErrKind = errors.New("backend: unknown data plane")

// ParseKind parses a configuration value; empty means Auto.
func ParseKind(s string) (Kind, error) {
	switch Kind(s) {
	case "":
		return Auto, nil
	case Auto, Kernel, Ebpf, Userspace:
		return Kind(s), nil
	}
	return "", fmt.Errorf("%w %q (want auto, kernel, ebpf or userspace)", ErrKind, s)
}

// The openers, replaced in tests.
var (
	openKernel = func(cfg gre.Config) (gre.Device, error) {
		d, err := kernel.Open(cfg)
		if err != nil {
			return nil, err
		}
		return d, nil
	}
	openEbpf = func(cfg gre.Config) (gre.Device, error) {
		d, err := ebpf.Open(cfg)
		if err != nil {
			return nil, err
		}
		return d, nil
	}
	openUserspace = func(cfg gre.Config) (gre.Device, error) {
		d, err := userspace.Open(cfg)
		if err != nil {
			return nil, err
		}
		return d, nil
	}
)

// Open opens the data plane of the given kind. Auto tries the kernel
// backend, then ebpf, and falls back to userspace when neither can be
// had. reason says which backend runs and why, in one line.
func Open(cfg gre.Config, kind Kind) (dev gre.Device, reason string, err error) {
	switch kind {
	case Kernel:
		if dev, err = openKernel(cfg); err != nil {
			return nil, "", fmt.Errorf("backend kernel: %w", err)
		}
		return dev, "data plane: kernel (ip_gre multipoint device), as configured", nil
	case Ebpf:
		if dev, err = openEbpf(cfg); err != nil {
			return nil, "", fmt.Errorf("backend ebpf: %w", err)
		}
		return dev, "data plane: ebpf (TC BPF fast path on a TUN), as configured", nil
	case Userspace:
		if dev, err = openUserspace(cfg); err != nil {
			return nil, "", fmt.Errorf("backend userspace: %w", err)
		}
		return dev, "data plane: userspace (TUN + raw GRE socket), as configured", nil
	case Auto, "":
		kdev, kerr := openKernel(cfg)
		if kerr == nil {
			return kdev, "data plane: kernel (ip_gre multipoint device), chosen by auto: the kernel creates GRE devices", nil
		}
		edev, eerr := openEbpf(cfg)
		if eerr == nil {
			return edev, fmt.Sprintf("data plane: ebpf (TC BPF fast path on a TUN), chosen by auto: kernel backend unavailable: %v", oneLine(kerr)), nil
		}
		udev, uerr := openUserspace(cfg)
		if uerr != nil {
			return nil, "", fmt.Errorf("backend auto: kernel: %w; ebpf: %w; userspace: %w", kerr, eerr, uerr)
		}
		return udev, fmt.Sprintf("data plane: userspace (TUN + raw GRE socket), chosen by auto: kernel backend unavailable: %v; ebpf backend unavailable: %v", oneLine(kerr), oneLine(eerr)), nil
	}
	return nil, "", fmt.Errorf("%w %q", ErrKind, kind)
}

// oneLine keeps an error's first line (a verifier log has many).
func oneLine(err error) string {
	s := err.Error()
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i] + " …"
	}
	return s
}

// Capabilities returns what a data plane of the given kind does, before
// opening it; false for Auto, which is known only once opened
// (Info().Caps).
func Capabilities(kind Kind) (gre.Capabilities, bool) {
	switch kind {
	case Kernel:
		return kernel.Caps, true
	case Ebpf:
		return ebpf.Caps(), true
	case Userspace:
		return userspace.Caps(), true
	}
	return gre.Capabilities{}, false
}
