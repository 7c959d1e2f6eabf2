// Package backend chooses and opens a GRE data plane: the kernel's ip_gre
// where the kernel can create one, else the userspace TUN + raw-socket
// relay. It returns a one-line reason for the daemon's log.
package backend

import (
	"errors"
	"fmt"

	"github.com/opendmvpn/dmvpn/gre"
	"github.com/opendmvpn/dmvpn/gre/kernel"
	"github.com/opendmvpn/dmvpn/gre/userspace"
)

// Kind names a backend choice in the configuration.
type Kind string

// Backend choices. Auto is the default.
const (
	Auto      Kind = "auto"
	Kernel    Kind = "kernel"
	Userspace Kind = "userspace"
)

// ErrKind is wrapped by ParseKind for an unknown name.
var ErrKind = errors.New("backend: unknown data plane")

// ParseKind parses a configuration value; empty means Auto.
func ParseKind(s string) (Kind, error) {
	switch Kind(s) {
	case "":
		return Auto, nil
	case Auto, Kernel, Userspace:
		return Kind(s), nil
	}
	return "", fmt.Errorf("%w %q (want auto, kernel or userspace)", ErrKind, s)
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
	openUserspace = func(cfg gre.Config) (gre.Device, error) {
		d, err := userspace.Open(cfg)
		if err != nil {
			return nil, err
		}
		return d, nil
	}
)

// Open opens the data plane of the given kind. Auto tries the kernel
// backend and falls back to userspace when it cannot be had. reason says
// which backend runs and why, in one line.
func Open(cfg gre.Config, kind Kind) (dev gre.Device, reason string, err error) {
	switch kind {
	case Kernel:
		if dev, err = openKernel(cfg); err != nil {
			return nil, "", fmt.Errorf("backend kernel: %w", err)
		}
		return dev, "data plane: kernel (ip_gre multipoint device), as configured", nil
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
		udev, uerr := openUserspace(cfg)
		if uerr != nil {
			return nil, "", fmt.Errorf("backend auto: kernel: %w; userspace: %w", kerr, uerr)
		}
		return udev, fmt.Sprintf("data plane: userspace (TUN + raw GRE socket), chosen by auto: kernel backend unavailable: %v", kerr), nil
	}
	return nil, "", fmt.Errorf("%w %q", ErrKind, kind)
}
