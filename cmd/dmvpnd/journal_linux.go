//go:build linux

package main

import (
	"os"
	"syscall"
)

// fileID returns the device and inode of an open file.
func fileID(f *os.File) (uint64, uint64, bool) {
	fi, err := f.Stat()
	if err != nil {
		return 0, 0, false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, 0, false
	}
	return uint64(st.Dev), st.Ino, true
}
