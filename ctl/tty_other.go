//go:build !linux

package ctl

import "os"

// isTerminal reports whether f is a terminal; outside Linux the shell
// reads commands line by line.
func isTerminal(f *os.File) bool { return false }
