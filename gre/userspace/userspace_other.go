//go:build !linux

package userspace

import (
	"errors"

	"github.com/opendmvpn/dmvpn/gre"
)

// ErrUnsupported is returned by Open where there is no TUN and raw-socket
// support (every platform but Linux).
var ErrUnsupported = errors.New("userspace: the userspace GRE backend needs Linux")

// Device is the userspace data plane; it exists only on Linux.
type Device struct{ gre.Device }

// Open fails: the backend needs Linux.
func Open(cfg gre.Config) (*Device, error) { return nil, ErrUnsupported }

// ProtoRouted is false: raw GRE sends exist only on Linux.
func ProtoRouted() bool { return false }
