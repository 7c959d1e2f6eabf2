//go:build !linux

package ipsec

// IngressFilter needs Linux; elsewhere nothing passes.
func IngressFilter() func(ifindex int) bool { return func(int) bool { return false } }
