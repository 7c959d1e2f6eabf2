//go:build !linux

package host

// NewKernel needs Linux.
func NewKernel() (Kernel, error) { return nil, ErrUnsupported }
