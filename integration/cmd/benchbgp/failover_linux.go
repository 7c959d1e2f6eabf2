package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/opendmvpn/dmvpn/lab"
)

// Hub failover on the lab (dmvpn-lab up --no-ipsec, the alpine topology:
// two hubs, three spokes, BGP everywhere with the lab's 1 s/3 s timers):
// hub1's dmvpnd is killed (SIGKILL) while spoke1 reaches spoke2 through it;
// the time is from the kill until spoke1 routes the summary through hub2
// and its LAN host reaches spoke2's again. Each round builds the lab anew.

// failoverRound runs one round with the commands in bin.
func failoverRound(ctx context.Context, bin string, round int) (time.Duration, error) {
	dir, err := os.MkdirTemp("", "benchbgp-lab")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	l := labRun{bin: bin, dir: filepath.Join(dir, "lab"), prefix: fmt.Sprintf("bbgp%dr%d", os.Getpid(), round)}
	if out, err := l.run(ctx, "up", "--no-ipsec"); err != nil {
		l.run(context.Background(), "down")
		return 0, fmt.Errorf("dmvpn-lab up: %w\n%s", err, out)
	}
	defer l.run(context.Background(), "down")
	b, err := os.ReadFile(filepath.Join(l.dir, "state.json"))
	if err != nil {
		return 0, err
	}
	var st lab.State
	if err := json.Unmarshal(b, &st); err != nil {
		return 0, err
	}
	pid := 0
	for _, n := range st.Nodes {
		if n.Name == "hub1" && n.Daemon != nil {
			pid = n.Daemon.Pid
		}
	}
	if pid == 0 {
		return 0, fmt.Errorf("no hub1 daemon in the lab state")
	}
	// Through the hubs, not a shortcut: the shortcuts are cleared first,
	// and the first ping shows the path works through hub1.
	for _, s := range []string{"spoke1", "spoke2"} {
		if out, err := exec.CommandContext(ctx, filepath.Join(bin, "dmvpnctl"), "--socket", filepath.Join(l.dir, s, "dmvpnd.sock"),
			"clear", "ip", "nhrp", "shortcut").CombinedOutput(); err != nil {
			return 0, fmt.Errorf("clear ip nhrp shortcut on %s: %w: %s", s, err, out)
		}
	}
	h1 := l.prefix + "-spoke1-h1"
	if err := ping(ctx, h1, "10.2.0.2", "1"); err != nil {
		return 0, fmt.Errorf("before the kill: %w", err)
	}
	killed := time.Now()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return 0, err
	}
	for {
		out, _ := exec.CommandContext(ctx, "ip", "-n", l.prefix+"-spoke1", "-o", "route", "show", "proto", "186").Output()
		if strings.Contains(string(out), "10.0.0.0/8 via 172.16.0.2 ") && ping(ctx, h1, "10.2.0.2", "0.2") == nil {
			return time.Since(killed), nil
		}
		if time.Since(killed) > 30*time.Second {
			return 0, fmt.Errorf("spoke1's LAN does not reach spoke2's through hub2 30 s after hub1 was killed: routes %q", out)
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// labRun is a lab with its own directory and namespace prefix.
type labRun struct{ bin, dir, prefix string }

func (l labRun) run(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, filepath.Join(l.bin, "dmvpn-lab"), append([]string{"--dir", l.dir, "--prefix", l.prefix}, args...)...).CombinedOutput()
	return string(out), err
}

// ping sends one echo request from namespace ns, waiting wait seconds.
func ping(ctx context.Context, ns, dst, wait string) error {
	out, err := exec.CommandContext(ctx, "ip", "netns", "exec", ns, "ping", "-n", "-c", "1", "-W", wait, dst).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ping %s from %s: %w: %s", dst, ns, err, strings.TrimSpace(string(out)))
	}
	return nil
}
