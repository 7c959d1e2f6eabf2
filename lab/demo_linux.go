//go:build linux

package lab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/opendmvpn/dmvpn/daemon/control"
	"github.com/opendmvpn/dmvpn/lab/testbed"
	"github.com/opendmvpn/dmvpn/nhrp"
)

// converge waits until every spoke is registered with every hub and every
// hub has every spoke registered (the rogue is not waited for), and says
// how long it took since the daemons were started.
func (l *Lab) converge(ctx context.Context, t Topology, st *State, started time.Time, timeout time.Duration) error {
	for _, n := range t.Nodes {
		if n.Rogue() {
			continue
		}
		ns, _ := st.node(n.Site.Name)
		c := control.NewClient(ns.Daemon.Socket)
		var last string
		err := waitUntil(ctx, timeout-time.Since(started), func() (bool, error) {
			if n.Site.Kind == testbed.Spoke {
				var r control.NHSResponse
				if err := c.Get(ctx, control.PathNHS, &r); err != nil {
					last = err.Error()
					return false, daemonDied(ns, err)
				}
				up := 0
				for _, s := range r.Servers {
					if s.State == nhrp.NHSUp {
						up++
					}
				}
				last = fmt.Sprintf("registered with %d of %d hubs", up, len(r.Servers))
				return up == len(t.hubs()), nil
			}
			var r control.CacheResponse
			if err := c.Get(ctx, control.PathCache, &r); err != nil {
				last = err.Error()
				return false, daemonDied(ns, err)
			}
			dyn := 0
			for _, e := range r.Entries {
				if e.Type == nhrp.TypeDynamic {
					dyn++
				}
			}
			last = fmt.Sprintf("%d of %d spokes registered", dyn, len(t.spokes()))
			return dyn == len(t.spokes()), nil
		})
		if err != nil {
			return fmt.Errorf("%s did not converge (%s): %w\n%s", n.Site.Name, last, err, tail(ns.Daemon.Log))
		}
	}
	how := ""
	if st.IPsec {
		how = " over IPsec, authorised by its certificate"
	}
	fmt.Fprintf(l.Out, "Converged in %.1f s after dmvpnd started: every spoke is registered with every hub%s.\n",
		time.Since(started).Seconds(), how)
	return nil
}

var ttlRE = regexp.MustCompile(`ttl=(\d+)`)

// ping runs ping in a namespace and returns the TTL of the replies (0
// when none came back).
func ping(ctx context.Context, ns string, dst netip.Addr, count int) (int, error) {
	out, err := exec.CommandContext(ctx, "ip", "netns", "exec", ns, "ping", "-n", "-c", strconv.Itoa(count), "-i", "0.2", "-W", "1", dst.String()).CombinedOutput()
	m := ttlRE.FindAllStringSubmatch(string(out), -1)
	if len(m) == 0 {
		if err == nil {
			err = errors.New("no reply")
		}
		return 0, fmt.Errorf("ping %s: %w: %s", dst, err, strings.TrimSpace(string(out)))
	}
	ttl, _ := strconv.Atoi(m[len(m)-1][1])
	return ttl, nil
}

// hasShortcut reports whether a node has a shortcut route covering dst.
func hasShortcut(ctx context.Context, socket string, dst netip.Addr) (bool, error) {
	var r control.CacheResponse
	if err := control.NewClient(socket).Get(ctx, control.PathShortcuts, &r); err != nil {
		return false, err
	}
	for _, e := range r.Entries {
		if e.Proto.Contains(dst) {
			return true, nil
		}
	}
	return false, nil
}

// relayed returns how many packets a hub forwarded (the kernel's
// ForwDatagrams in its namespace): relayed spoke-to-spoke traffic counts,
// the BGP and NHRP packets addressed to the hub itself do not.
func relayed(ctx context.Context, ns string) (uint64, error) {
	out, err := exec.CommandContext(ctx, "ip", "netns", "exec", ns, "cat", "/proc/net/snmp").Output()
	if err != nil {
		return 0, fmt.Errorf("reading %s's IP counters: %w", ns, err)
	}
	var names []string
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "Ip:" {
			continue
		}
		if names == nil {
			names = f
			continue
		}
		for i, n := range names {
			if n == "ForwDatagrams" && i < len(f) {
				return strconv.ParseUint(f[i], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("%s: no ForwDatagrams in /proc/net/snmp", ns)
}

// demo pings from a host behind the first spoke to one behind the second,
// first through the hub, then — once the hub's redirect made the spokes
// resolve each other — directly, and shows the shortcut and the proof.
func (l *Lab) demo(ctx context.Context, t Topology, st *State) error {
	sp := t.spokes()
	if len(sp) < 2 {
		return nil
	}
	a, b := sp[0], sp[1]
	hub := t.hubs()[0]
	srcNS, err := st.node(a.Site.Name + "-h1")
	if err != nil {
		return err
	}
	aNS, _ := st.node(a.Site.Name)
	bNS, _ := st.node(b.Site.Name)
	hubNS, _ := st.node(hub.Site.Name)
	dst := b.Site.LAN.Masked().Addr().Next().Next() // the LAN's first host (.2)
	src := a.Site.LAN.Masked().Addr().Next().Next()
	fmt.Fprintf(l.Out, "\n======== spoke-to-spoke shortcut ========\n")
	fmt.Fprintf(l.Out, "ping from %s-h1 (%s) to %s-h1 (%s); the routes send it through %s (BGP: the hubs' summary)\n",
		a.Site.Name, src, b.Site.Name, dst, hub.Site.Name)
	// The first reply, asked for again until it comes: on a slow machine
	// a spoke's routes may still be settling (its BGP session with a hub
	// coming back after a late registration reply).
	var ttl int
	var lastErr error
	if err := waitUntil(ctx, 10*time.Second, func() (bool, error) {
		ttl, lastErr = ping(ctx, srcNS.NS, dst, 1)
		return lastErr == nil, nil
	}); err != nil {
		return fmt.Errorf("no reply from %s: %w: %v", dst, err, lastErr)
	}
	fmt.Fprintf(l.Out, "first reply: ttl=%d (64 - %d routers: %s, %s, %s): through the hub\n", ttl, 64-ttl, a.Site.Name, hub.Site.Name, b.Site.Name)
	fmt.Fprintf(l.Out, "%s relays it, sees traffic enter and leave its tunnel, and sends NHRP Traffic Indications;\n"+
		"the spokes resolve each other and install shortcut routes…\n", hub.Site.Name)
	start := time.Now()
	err = waitUntil(ctx, 20*time.Second, func() (bool, error) {
		okA, err := hasShortcut(ctx, aNS.Daemon.Socket, dst)
		if err != nil {
			return false, err
		}
		okB, err := hasShortcut(ctx, bNS.Daemon.Socket, src)
		if err != nil {
			return false, err
		}
		if okA && okB {
			return true, nil
		}
		_, _ = ping(ctx, srcNS.NS, dst, 1)
		return false, nil
	})
	if err != nil {
		return fmt.Errorf("no shortcut between %s and %s: %w\n%s: %s\n%s: %s", a.Site.Name, b.Site.Name, err,
			a.Site.Name, tail(aNS.Daemon.Log), hub.Site.Name, tail(hubNS.Daemon.Log))
	}
	fmt.Fprintf(l.Out, "shortcuts installed in %.1f s.\n", time.Since(start).Seconds())
	if st.IPsec {
		// The resolution brought up an SA between the spokes.
		peer := b.Site.NBMA.Addr()
		if err := waitUntil(ctx, 10*time.Second, func() (bool, error) {
			r, err := crypto(ctx, aNS.Daemon.Socket)
			return err == nil && saUpWith(r, peer), nil
		}); err != nil {
			return fmt.Errorf("no IPsec SA between %s and %s after the shortcut: %w\n%s", a.Site.Name, b.Site.Name, err, tail(aNS.Daemon.Log))
		}
		fmt.Fprintf(l.Out, "The resolution brought up an IPsec SA between %s and %s (%.1f s after the first reply):\n\n", a.Site.Name, b.Site.Name, time.Since(start).Seconds())
		if err := l.showSAs(ctx, a.Site.Name, aNS.Daemon.Socket); err != nil {
			return err
		}
	}
	fmt.Fprintf(l.Out, "\n%s# show ip nhrp shortcut\n", a.Site.Name)
	l.ctl(ctx, aNS.Daemon.Socket, "show", "ip", "nhrp", "shortcut")
	if out, err := exec.CommandContext(ctx, "ip", "-n", aNS.NS, "route", "get", dst.String(), "from", src.String(), "iif", "lan0").CombinedOutput(); err == nil {
		fmt.Fprintf(l.Out, "\n%s# ip route get %s from %s iif lan0\n%s", a.Site.Name, dst, src, out)
	}
	before, err := relayed(ctx, hubNS.NS)
	if err != nil {
		return err
	}
	ttl, err = ping(ctx, srcNS.NS, dst, 5)
	if err != nil {
		return err
	}
	after, err := relayed(ctx, hubNS.NS)
	if err != nil {
		return err
	}
	fmt.Fprintf(l.Out, "\n5 more pings: replies with ttl=%d (64 - %d routers: %s, %s); %s forwarded %d packets meanwhile (%d → %d).\n",
		ttl, 64-ttl, a.Site.Name, b.Site.Name, hub.Site.Name, after-before, before, after)
	if after != before || ttl != 62 {
		return fmt.Errorf("traffic still goes through %s (ttl %d, %d packets relayed)", hub.Site.Name, ttl, after-before)
	}
	fmt.Fprintf(l.Out, "Spoke-to-spoke traffic goes direct.\n")
	return nil
}
