//go:build !linux

package dphelper

// MaybeRun returns at once: helpers run only on Linux.
func MaybeRun() {}
