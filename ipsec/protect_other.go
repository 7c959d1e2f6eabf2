//go:build !linux

package ipsec

import "errors"

// Protect needs Linux.
func Protect(mode Mode) (func() error, error) { return nil, errors.New("ipsec: needs Linux") }

// IngressFilter needs Linux; elsewhere nothing passes.
func IngressFilter() func(ifindex int) bool { return func(int) bool { return false } }
