//go:build !linux

package main

import "errors"

// sendDatagram: the notify protocol is systemd's, on Linux only.
func sendDatagram(addr, msg string) error {
	return errors.New("sd_notify: only on Linux")
}

// monotonicUsec is not needed off Linux.
func monotonicUsec() int64 { return 0 }
