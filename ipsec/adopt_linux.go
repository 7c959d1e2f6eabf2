//go:build linux

package ipsec

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// pidFile is where the process id of a managed charon is kept, so that
// the next dmvpnd of the node finds a charon a crashed one left running.
func (c *charon) pidFile() string { return filepath.Join(c.cfg.Dir, "charon.pid") }

// writePID records the process id of the charon this run started.
func (c *charon) writePID(pid int) {
	if err := os.WriteFile(c.pidFile(), []byte(strconv.Itoa(pid)+"\n"), 0o600); err != nil {
		c.log.Warn("recording charon's pid", zap.Error(err))
	}
}

// leftover returns the process id of a charon a previous dmvpnd of this
// node started (the pid file names it, it runs, it is charon and its
// environment names this state directory's strongswan.conf), 0 if none.
func (c *charon) leftover(conf string) int {
	b, err := os.ReadFile(c.pidFile())
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 || syscall.Kill(pid, 0) != nil {
		return 0
	}
	comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	env, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if strings.TrimSpace(string(comm)) != "charon" || !bytes.Contains(env, []byte("STRONGSWAN_CONF="+conf+"\x00")) {
		return 0
	}
	return pid
}

// adopt takes over the charon a previous dmvpnd of this node left running
// when it crashed, so that its SAs — and the traffic they carry — live
// through the restart: only when its configuration is the one this run
// would write and its VICI socket answers. A leftover charon that cannot
// be adopted is stopped, so a new one can bind the IKE ports.
func (c *charon) adopt(conf string, want []byte) bool {
	pid := c.leftover(conf)
	if pid == 0 {
		return false
	}
	have, _ := os.ReadFile(conf)
	conn, err := net.DialTimeout("unix", c.cfg.Socket, time.Second)
	if err == nil {
		conn.Close()
	}
	fd, perr := unix.PidfdOpen(pid, 0)
	if !bytes.Equal(have, want) || err != nil || perr != nil {
		c.log.Info("stopping the charon a previous run left", zap.Int("pid", pid),
			zap.Bool("same_config", bytes.Equal(have, want)), zap.NamedError("vici", err))
		if perr == nil {
			unix.Close(fd)
		}
		syscall.Kill(-pid, syscall.SIGTERM)
		for deadline := time.Now().Add(3 * time.Second); syscall.Kill(pid, 0) == nil; time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				syscall.Kill(-pid, syscall.SIGKILL)
				break
			}
		}
		return false
	}
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		defer unix.Close(fd)
		for {
			// A pidfd polls readable once the process has exited.
			_, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, -1)
			if err != unix.EINTR {
				return
			}
		}
	}()
	c.mu.Lock()
	c.proc, c.exited = pid, exited
	c.mu.Unlock()
	c.log.Info("charon adopted: the previous run left it running, its SAs stay", zap.Int("pid", pid), zap.String("vici", c.cfg.Socket))
	return true
}
