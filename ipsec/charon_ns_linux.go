//go:build linux

package ipsec

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// A managed charon runs in a mount namespace of its own with /run on a
// fresh tmpfs: its pid file and stroke socket are compiled in under /run,
// so two charons on one machine (one per network namespace: the lab, the
// tests) would collide. The namespace is made without a shell or an
// unshare(1) process: a goroutine locks its OS thread, unshares the mount
// namespace of that thread alone, mounts in Go, and starts charon from
// it, so charon inherits the namespace. The thread is never unlocked: Go
// ends it with the goroutine, which lives until charon exits (charon's
// parent-death signal follows the thread that forked it). This needs
// CAP_SYS_ADMIN (unshare, mount), and nothing else beyond what charon
// itself needs.

// startPrivateRun starts cmd in a new mount namespace whose /run is a
// fresh tmpfs, with stateDir (resolved) still visible when it lies under
// /run. It returns once cmd has started; wait receives cmd.Wait's result.
func startPrivateRun(cmd *exec.Cmd, stateDir string) (wait <-chan error, err error) {
	started := make(chan error, 1)
	waited := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// Deliberately never unlocked: the thread's mount namespace is not
		// the process's, so the thread must die with this goroutine.
		if err := privateRun(stateDir); err != nil {
			started <- err
			return
		}
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		waited <- cmd.Wait()
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return waited, nil
}

// privateRun moves the calling (locked) thread into a new mount
// namespace with private propagation and mounts a tmpfs on /run, binding
// stateDir back over it when it lies under /run.
func privateRun(stateDir string) error {
	if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
		return fmt.Errorf("a mount namespace for charon (unshare, needs CAP_SYS_ADMIN): %w", err)
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("making charon's mounts private: %w", err)
	}
	under := stateDir == "/run" || strings.HasPrefix(stateDir, "/run/")
	fd := -1
	if under {
		// Held open across the tmpfs mount: /proc/self/fd/N still names
		// the directory hidden under it, and is bound back from there.
		var err error
		if fd, err = unix.Open(stateDir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err != nil {
			return fmt.Errorf("charon's state directory: %w", err)
		}
		defer unix.Close(fd)
	}
	if err := unix.Mount("tmpfs", "/run", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755"); err != nil {
		return fmt.Errorf("a private /run for charon: %w", err)
	}
	if !under {
		return nil
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return fmt.Errorf("charon's state directory in its /run: %w", err)
	}
	if err := unix.Mount(filepath.Join("/proc/self/fd", fmt.Sprint(fd)), stateDir, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("binding charon's state directory into its /run: %w", err)
	}
	return nil
}
