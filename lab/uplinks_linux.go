//go:build linux

package lab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/opendmvpn/dmvpn/daemon/control"
	"github.com/opendmvpn/dmvpn/lab/testbed"
)

// ispRouter names the internet router of an ISP of the lab: isp1 is the
// first internet router (every site's wan0), isp2 the second (wan1 of the
// sites with two ISPs).
func ispRouter(isp string) (string, error) {
	switch isp {
	case "isp1":
		return "inet", nil
	case "isp2":
		return "inet2", nil
	}
	return "", fmt.Errorf("unknown ISP %q (isp1 or isp2)", isp)
}

// Fail cuts a node's ISP — with mode drop an nftables rule on the ISP's
// router drops everything to and from the node (its link stays up), with
// mode link the router's end of the link goes down — then follows what
// the node does: the uplink going down, the default route moving, the
// registration with every hub from the new address, and shows the node's
// uplinks.
func (l *Lab) Fail(ctx context.Context, node, isp string, mode testbed.CutMode) error {
	return l.cutOrRestore(ctx, node, isp, func(router *NodeState) error {
		return testbed.Cut(ctx, router.NS, "to-"+node, mode)
	}, fmt.Sprintf("cut (%s)", map[testbed.CutMode]string{testbed.CutDrop: "nftables drop on the ISP's router, link up", testbed.CutLink: "link down"}[mode]))
}

// Restore undoes Fail and follows the node back to its preferred uplink.
func (l *Lab) Restore(ctx context.Context, node, isp string) error {
	return l.cutOrRestore(ctx, node, isp, func(router *NodeState) error {
		return testbed.Restore(ctx, router.NS, "to-"+node)
	}, "restored")
}

func (l *Lab) cutOrRestore(ctx context.Context, node, isp string, act func(*NodeState) error, what string) error {
	s, err := l.load()
	if err != nil {
		return err
	}
	if s == nil || !s.running() {
		return errors.New("no lab is up (dmvpn-lab up)")
	}
	n, err := s.node(node)
	if err != nil {
		return err
	}
	if n.Daemon == nil {
		return fmt.Errorf("%s runs no dmvpnd", node)
	}
	rname, err := ispRouter(isp)
	if err != nil {
		return err
	}
	router, err := s.node(rname)
	if err != nil {
		return fmt.Errorf("%s: the lab has no %s (only sites with two ISPs reach a second internet router)", isp, rname)
	}
	c := control.NewClient(n.Daemon.Socket)
	before, err := l.uplinks(ctx, c)
	if err != nil {
		return err
	}
	if !before.Enabled {
		return fmt.Errorf("%s has no uplinks configured: nothing would follow", node)
	}
	start := time.Now()
	if err := act(router); err != nil {
		return err
	}
	fmt.Fprintf(l.Out, "%s's %s %s at %s; following %s:\n", node, isp, what, start.Format("15:04:05.000"), node)
	l.follow(ctx, s, n, c, before, start)
	fmt.Fprintf(l.Out, "\n======== %s: show uplinks ========\n", node)
	l.ctl(ctx, n.Daemon.Socket, "show", "uplinks")
	return nil
}

func (l *Lab) uplinks(ctx context.Context, c *control.Client) (control.UplinksResponse, error) {
	var r control.UplinksResponse
	cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	err := c.Get(cctx, control.PathUplinks, &r)
	return r, err
}

// follow prints, with the time since start, each change of the node's
// uplinks (state, default route, NBMA address) and when every hub has the
// node registered at its NBMA address, for up to 10 seconds.
func (l *Lab) follow(ctx context.Context, s *State, n *NodeState, c *control.Client, before control.UplinksResponse, start time.Time) {
	states := map[string]string{}
	for _, u := range before.Uplinks {
		states[u.Name] = u.State
	}
	via := defaultVia(before)
	nbma := firstAddr(before.NBMA)
	registered := map[string]netip.Addr{}
	for _, h := range s.Nodes {
		if h.Kind == "hub" && h.Daemon != nil {
			registered[h.Name] = registeredAt(ctx, h, n)
		}
	}
	deadline := start.Add(10 * time.Second)
	stamp := func() string { return fmt.Sprintf("  +%5.2f s  ", time.Since(start).Seconds()) }
	for time.Now().Before(deadline) && ctx.Err() == nil {
		r, err := l.uplinks(ctx, c)
		if err == nil {
			for _, u := range r.Uplinks {
				if states[u.Name] != u.State {
					fmt.Fprintf(l.Out, "%suplink %s %s: %s\n", stamp(), u.Name, u.State, u.Reason)
					states[u.Name] = u.State
				}
			}
			if v := defaultVia(r); v != via {
				fmt.Fprintf(l.Out, "%sdefault route via %s\n", stamp(), v)
				via = v
			}
			if a := firstAddr(r.NBMA); a != nbma {
				fmt.Fprintf(l.Out, "%sNBMA address %s\n", stamp(), a)
				nbma = a
				clear(registered)
			}
		}
		done := nbma.IsValid()
		for _, h := range s.Nodes {
			if h.Kind != "hub" || h.Daemon == nil {
				continue
			}
			at := registeredAt(ctx, h, n)
			if at.IsValid() && at != registered[h.Name] && at == nbma {
				fmt.Fprintf(l.Out, "%sregistered with %s from %s\n", stamp(), h.Name, at)
			}
			registered[h.Name] = at
			done = done && at == nbma
		}
		if done && time.Since(start) > 3*time.Second {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// registeredAt is the NBMA address a hub has the node registered at.
func registeredAt(ctx context.Context, hub NodeState, n *NodeState) netip.Addr {
	tunnel, err := netip.ParsePrefix(n.Daemon.Tunnel)
	if err != nil {
		return netip.Addr{}
	}
	var r control.CacheResponse
	cctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if control.NewClient(hub.Daemon.Socket).Get(cctx, control.PathCache, &r) != nil {
		return netip.Addr{}
	}
	for _, e := range r.Entries {
		if e.Proto == netip.PrefixFrom(tunnel.Addr(), 32) {
			return e.NBMA
		}
	}
	return netip.Addr{}
}

func defaultVia(r control.UplinksResponse) string {
	var via []string
	for _, u := range r.Uplinks {
		if u.Default {
			via = append(via, u.Name)
		}
	}
	if len(via) == 0 {
		return "-"
	}
	return strings.Join(via, " + ")
}

func firstAddr(as []netip.Addr) netip.Addr {
	if len(as) == 0 {
		return netip.Addr{}
	}
	return as[0]
}
