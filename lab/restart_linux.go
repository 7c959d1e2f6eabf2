package lab

import (
	"context"
	"fmt"
	"syscall"
	"time"
)

// Restart stops the dmvpnd of a hub or spoke and starts it again with the
// same configuration: with kill by SIGKILL, as a crash would (no purge, no
// cleanup: its tunnel, routes and charon stay for the next run to adopt),
// otherwise by SIGTERM. It returns once the new dmvpnd answers.
func (l *Lab) Restart(ctx context.Context, node string, kill bool) error {
	st, err := l.load()
	if err != nil {
		return err
	}
	if st == nil {
		return fmt.Errorf("no lab is up in %s", l.Dir)
	}
	var ns *NodeState
	for i := range st.Nodes {
		if st.Nodes[i].Name == node {
			ns = &st.Nodes[i]
		}
	}
	if ns == nil {
		return fmt.Errorf("no node %q in the lab", node)
	}
	if ns.Daemon == nil {
		return fmt.Errorf("%s runs no dmvpnd (it is a %s)", node, ns.Kind)
	}
	dmvpnd, err := binary("dmvpnd")
	if err != nil {
		return err
	}
	t, err := FindTopology(st.Topology)
	if err != nil {
		return err
	}
	var extra []string
	if st.Rogue {
		for _, n := range t.withRogue().Nodes {
			if n.Site.Name == node && n.Rogue() {
				extra = append(extra, "--unchecked-credentials")
			}
		}
	}
	sig, how := syscall.SIGTERM, "stopped (SIGTERM)"
	if kill {
		sig, how = syscall.SIGKILL, "killed (SIGKILL)"
	}
	old := ns.Daemon.Pid
	if alive(old) {
		if err := syscall.Kill(old, sig); err != nil {
			return fmt.Errorf("signalling %s's dmvpnd (pid %d): %w", node, old, err)
		}
		if err := waitUntil(ctx, 10*time.Second, func() (bool, error) { return !alive(old), nil }); err != nil {
			return fmt.Errorf("%s's dmvpnd (pid %d) did not exit: %w", node, old, err)
		}
	}
	start := time.Now()
	if err := spawn(ns.Daemon, node, ns.NS, dmvpnd, extra, 0); err != nil {
		return err
	}
	if err := l.save(st); err != nil {
		return err
	}
	if err := l.ready(ctx, ns); err != nil {
		return err
	}
	fmt.Fprintf(l.Out, "%s: dmvpnd (pid %d) %s, started again (pid %d), answering after %.2f s.\n",
		node, old, how, ns.Daemon.Pid, time.Since(start).Seconds())
	return nil
}
