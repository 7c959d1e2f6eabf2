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

// IKE's ports: a managed charon binds both, on every address.
var ikePorts = []int{500, 4500}

// ErrPortsTaken wraps the error of a managed charon that cannot start
// because another process (Debian's strongswan-starter charon, mostly)
// holds the IKE ports in this network namespace.
var ErrPortsTaken = errors.New("the IKE ports are taken")

// portHolder is a process holding a UDP port.
type portHolder struct {
	port int
	pid  int    // 0 when no process could be found for the socket
	comm string // its command name
	unit string // its systemd unit, when it runs under one
}

// checkIKEPorts fails when a process other than ours holds UDP 500 or
// 4500 in this network namespace, naming it, and saying how to stop it or
// to use it (charon: system).
func checkIKEPorts() error {
	holders := ikePortHolders()
	if len(holders) == 0 {
		return nil
	}
	h := holders[0]
	who := "a process this one cannot see"
	if h.pid != 0 {
		who = fmt.Sprintf("%s (pid %d", h.comm, h.pid)
		if h.unit != "" {
			who += ", " + h.unit
		}
		who += ")"
	}
	how := "stop it"
	switch {
	case h.unit != "":
		how = "stop and disable it (systemctl disable --now " + h.unit + ")"
	case h.comm == "charon" || h.comm == "starter":
		how = "stop it (on Debian: systemctl disable --now strongswan-starter; OpenRC: rc-service strongswan stop)"
	}
	return fmt.Errorf("%w: UDP port %d is held by %s, so a managed charon cannot start beside it: %s, "+
		"or use that charon with ipsec.charon: system", ErrPortsTaken, h.port, who, how)
}

// ikePortHolders lists who holds the IKE ports: the sockets bound to them
// in /proc/net/udp{,6}, and the processes whose descriptors are those
// sockets.
func ikePortHolders() []portHolder {
	inodes := map[string]int{} // socket inode → port
	for _, f := range []string{"/proc/net/udp", "/proc/net/udp6"} {
		for ino, port := range udpSockets(f) {
			for _, p := range ikePorts {
				if port == p {
					inodes[ino] = port
				}
			}
		}
	}
	if len(inodes) == 0 {
		return nil
	}
	var out []portHolder
	found := map[string]bool{}
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		fds, _ := os.ReadDir(filepath.Join("/proc", p.Name(), "fd"))
		for _, fd := range fds {
			link, err := os.Readlink(filepath.Join("/proc", p.Name(), "fd", fd.Name()))
			if err != nil {
				continue
			}
			ino, ok := strings.CutPrefix(link, "socket:[")
			if !ok {
				continue
			}
			ino = strings.TrimSuffix(ino, "]")
			if port, ok := inodes[ino]; ok && !found[ino] {
				found[ino] = true
				out = append(out, portHolder{port: port, pid: pid, comm: procComm(pid), unit: procUnit(pid)})
			}
		}
	}
	for ino, port := range inodes {
		if !found[ino] {
			out = append(out, portHolder{port: port})
		}
	}
	return out
}

// udpSockets reads a /proc/net/udp table: inode → local port.
func udpSockets(path string) map[string]int {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	out := map[string]int{}
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for sc.Scan() {
		// sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
		f := strings.Fields(sc.Text())
		if len(f) < 10 {
			continue
		}
		_, portHex, ok := strings.Cut(f[1], ":")
		if !ok {
			continue
		}
		port, err := strconv.ParseUint(portHex, 16, 16)
		if err != nil {
			continue
		}
		out[f[9]] = int(port)
	}
	return out
}

func procComm(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return strings.TrimSpace(string(b))
}

// procUnit returns the systemd service a process runs in, from its
// cgroup (0::/system.slice/strongswan-starter.service).
func procUnit(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	for _, line := range strings.Split(string(b), "\n") {
		_, path, ok := strings.Cut(line, "::")
		if !ok {
			continue
		}
		base := filepath.Base(path)
		if strings.HasSuffix(base, ".service") {
			return base
		}
	}
	return ""
}
