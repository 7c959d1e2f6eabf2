//go:build !linux

package ebpf

import (
	"errors"

	"github.com/opendmvpn/dmvpn/gre"
)

// Device is the ebpf data plane; it exists only on Linux.
type Device struct{ gre.Device }

// Open fails: TC BPF programs are Linux's.
func Open(gre.Config) (*Device, error) {
	return nil, errors.New("ebpf: the ebpf data plane needs Linux")
}

// Available fails: TC BPF programs are Linux's.
func Available() error { return errors.New("ebpf: the ebpf data plane needs Linux") }
