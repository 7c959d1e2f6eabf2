//go:build !linux

package kernel

import (
	"errors"

	"github.com/opendmvpn/dmvpn/gre"
)

// ErrUnsupported is returned by Open where there is no ip_gre (every
// platform but Linux).
var ErrUnsupported = errors.New("kernel: the kernel GRE backend needs Linux")

// Device is the kernel data plane; it exists only on Linux.
type Device struct{ gre.Device }

// Open fails: the backend needs Linux.
func Open(cfg gre.Config) (*Device, error) { return nil, ErrUnsupported }
