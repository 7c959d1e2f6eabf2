//go:build linux

package lab

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/opendmvpn/dmvpn/bgp"
	"github.com/opendmvpn/dmvpn/daemon/control"
	"github.com/opendmvpn/dmvpn/lab/testbed"
)

// bgpConverge waits until BGP carries every LAN: each hub has a session
// with every spoke and every other hub and a kernel route to every
// spoke's LAN; each spoke has a session with every hub and the summary in
// its kernel.
func (l *Lab) bgpConverge(ctx context.Context, t Topology, st *State, timeout time.Duration) error {
	started := time.Now()
	for _, n := range t.Nodes {
		if n.Rogue() {
			continue
		}
		ns, _ := st.node(n.Site.Name)
		c := control.NewClient(ns.Daemon.Socket)
		want := len(t.hubs())
		if n.Site.Kind == testbed.Hub {
			want = len(t.spokes()) + len(t.hubs()) - 1
		}
		var last string
		var down []bgp.NeighborStatus
		err := waitUntil(ctx, timeout-time.Since(started), func() (bool, error) {
			var s control.BGPSummary
			if err := c.Get(ctx, control.PathBGPSummary, &s); err != nil {
				last = err.Error()
				return false, daemonDied(ns, err)
			}
			up := 0
			down = down[:0]
			for _, nb := range s.Neighbors {
				if nb.State == bgp.StateEstablished {
					up++
				} else {
					down = append(down, nb)
				}
			}
			routes := len(t.spokes())
			if n.Site.Kind == testbed.Spoke {
				routes = 1 // the summary
			}
			last = fmt.Sprintf("%d of %d BGP sessions established, %d of %d routes in the kernel", up, want, s.KernelRoutes, routes)
			return up == want && s.KernelRoutes >= routes, nil
		})
		if err != nil {
			return fmt.Errorf("%s: BGP did not converge (%s): %w\n%s%s", n.Site.Name, last, err, tail(ns.Daemon.Log), t.sessionsDown(st, down))
		}
	}
	fmt.Fprintf(l.Out, "BGP converged in %.1f s: every hub routes every spoke's LAN, every spoke has the summary %s.\n",
		time.Since(started).Seconds(), summary)
	return nil
}

// sessionsDown describes the sessions that are not established: state,
// since when, why the last one ended, and the log of the node at the
// other end, so a failed convergence shows both sides.
func (t Topology) sessionsDown(st *State, down []bgp.NeighborStatus) string {
	var b strings.Builder
	for _, nb := range down {
		name := nb.Address.String()
		var log string
		for _, n := range t.Nodes {
			if n.Tunnel.Addr() == nb.Address {
				name = n.Site.Name
				if ns, err := st.node(name); err == nil && ns.Daemon != nil {
					log = tail(ns.Daemon.Log)
				}
			}
		}
		fmt.Fprintf(&b, "\n  session with %s (%s, AS %d): %s", name, nb.Address, nb.AS, nb.State)
		if !nb.Since.IsZero() {
			fmt.Fprintf(&b, " since %s", nb.Since.Format("15:04:05.000"))
		}
		if nb.LastError != "" {
			fmt.Fprintf(&b, ", last down: %s", nb.LastError)
		}
		if log != "" {
			fmt.Fprintf(&b, "\n  %s's log:\n%s", name, log)
		}
	}
	return b.String()
}
