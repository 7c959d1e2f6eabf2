//go:build linux

package ipsec

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// ErrNoTUN is returned when charon holds no TUN device (yet).
var ErrNoTUN = errors.New("ipsec: charon holds no TUN device")

// TUN returns the name of the TUN device charon's kernel-libipsec reads
// and writes in userspace mode: the one charon's own process holds open
// (its fdinfo names it), found rather than assumed "ipsec0" (after a
// crash the kernel may hand out ipsec1). A charon dmvpnd runs is known by
// its pid; a system charon is looked for among the processes named
// charon in this network namespace.
func (m *Manager) TUN() (string, error) {
	if m.charon != nil {
		pid := m.charon.pid()
		if pid == 0 {
			return "", fmt.Errorf("%w: charon is not running", ErrNoTUN)
		}
		return tunOf(pid)
	}
	return systemTUN()
}

// tunOf returns the TUN device a process holds open.
func tunOf(pid int) (string, error) {
	dir := fmt.Sprintf("/proc/%d/fdinfo", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return "", fmt.Errorf("ipsec: charon's descriptors: %w", err)
	}
	for _, e := range ents {
		if name := iffOf(filepath.Join(dir, e.Name())); name != "" {
			return name, nil
		}
	}
	return "", fmt.Errorf("%w (pid %d)", ErrNoTUN, pid)
}

// iffOf reads the interface of a TUN descriptor's fdinfo ("iff:\tipsec0").
func iffOf(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "iff:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// systemTUN finds the TUN of a charon dmvpnd does not run: a process
// named charon (or charon-systemd) in this network namespace.
func systemTUN() (string, error) {
	self, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		return "", fmt.Errorf("ipsec: own network namespace: %w", err)
	}
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return "", err
	}
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if c := strings.TrimSpace(string(comm)); err != nil || c != "charon" && c != "charon-systemd" {
			continue
		}
		if ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid)); err != nil || ns != self {
			continue
		}
		if name, err := tunOf(pid); err == nil {
			return name, nil
		}
	}
	return "", ErrNoTUN
}
