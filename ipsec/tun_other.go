//go:build !linux

package ipsec

import "errors"

// ErrNoTUN is returned when charon holds no TUN device (yet).
var ErrNoTUN = errors.New("ipsec: charon holds no TUN device")

// TUN returns the name of charon's TUN device; Linux only.
func (m *Manager) TUN() (string, error) { return "", ErrNoTUN }
