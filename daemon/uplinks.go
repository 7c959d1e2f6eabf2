package daemon

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/opendmvpn/dmvpn/failover"
	"github.com/opendmvpn/dmvpn/firewall"
	"github.com/opendmvpn/dmvpn/gre"
)

// firstApplyWait is how long the start waits for the uplinks' routes and
// rules to be in the kernel before it opens the tunnel.
const firstApplyWait = 5 * time.Second

// startUplinks starts the uplink monitor when the configuration has
// uplinks: their tables, rules and default route go through the host-state
// owner before the tunnel opens, and every move of this node's NBMA
// address is followed by IPsec and NHRP (follower). It adds its undo.
func (d *Daemon) startUplinks(ctx context.Context, cfg Config) error {
	if cfg.Uplinks == nil {
		return nil
	}
	hm, err := d.hostManager()
	if err != nil {
		return err
	}
	client, err := hm.Client(cfg.Uplinks.Owner())
	if err != nil {
		return fmt.Errorf("uplinks: %w", err)
	}
	kern, err := failover.NewNetlinkKernel(cfg.Uplinks.WithDefaults().Protocol)
	if err != nil {
		return err
	}
	f := newFollower(d, d.log.Named("uplinks"))
	mon, err := failover.New(*cfg.Uplinks, failover.Deps{
		Kernel: kern, Probers: failover.ICMPProbers{}, Host: failover.HostClient{C: client},
		Conntrack: failover.NetlinkConntrack{}, Observers: []failover.Observer{f}, Logger: d.log.Named("uplinks"),
	})
	if err != nil {
		kern.Close()
		return err
	}
	mctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	go mon.Run(mctx)
	go f.run(mctx)
	// The monitor stops with the rest; its routes and rules go with the
	// host state, last (left in place with KeepState).
	d.hostClients = append(d.hostClients, client)
	d.stopFn = append(d.stopFn, func() error {
		cancel()
		<-mon.Done()
		<-f.done
		return kern.Close()
	})
	d.mu.Lock()
	d.uplinks = mon
	d.mu.Unlock()
	select {
	case <-f.first:
	case <-time.After(firstApplyWait):
		d.log.Warn("uplinks: their routes and rules are not in the kernel yet; starting the tunnel anyway")
	case <-ctx.Done():
		return ctx.Err()
	}
	return nil
}

// Uplinks returns the uplink monitor, nil without uplinks.
func (d *Daemon) Uplinks() *failover.Monitor {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.uplinks
}

// firewallUplinks is the uplinks' part of the firewall's policy: each
// uplink's interface (in the internet zone), its connection mark and
// whether the LAN is masqueraded behind it.
func firewallUplinks(c failover.Config) firewall.Uplinks {
	c = c.WithDefaults()
	u := firewall.Uplinks{MarkMask: c.MarkMask}
	for _, x := range c.Uplinks {
		u.List = append(u.List, firewall.Uplink{Name: x.Name, Interface: x.Interface, Mark: x.Mark, Masquerade: x.Masquerade})
	}
	return u
}

// uplinkTunnel is the tunnel as the NHRP engine sees it with uplinks: its
// NBMA addresses are the uplinks' (the active one's first) as the kernel
// routes them now, not "interfaces with a default route".
type uplinkTunnel struct {
	gre.Device
	mon *failover.Monitor
}

// Info implements nhrp.Tunnel.
func (t uplinkTunnel) Info() gre.Info {
	i := t.Device.Info()
	if n := t.mon.NBMA(); len(n) > 0 {
		i.NBMA = n
	}
	return i
}

// follower makes IPsec and NHRP follow a move of this node's NBMA
// address: the SAs from the old address are ended and the connections
// initiate from the new one, then the engine registers again with every
// server and purges the peers that learnt the old address. Moves are
// handled one at a time, in order; a burst coalesces into its last.
type follower struct {
	d     *Daemon
	log   *zap.Logger
	first chan struct{} // closed at the first apply
	once  sync.Once
	wake  chan struct{}
	done  chan struct{}

	mu      sync.Mutex
	pending *move
}

// move is a change of this node's NBMA address to follow.
type move struct {
	old, nbma netip.Addr
	reason    string
	at        time.Time
}

func newFollower(d *Daemon, log *zap.Logger) *follower {
	return &follower{d: d, log: log, first: make(chan struct{}), wake: make(chan struct{}, 1), done: make(chan struct{})}
}

// Transition implements failover.Observer (the monitor logs it).
func (f *follower) Transition(failover.Transition) {}

// Applied implements failover.Observer.
func (f *follower) Applied(a failover.Applied) {
	f.once.Do(func() { close(f.first) })
	if !a.Old.IsValid() || !a.NBMA.IsValid() || a.Old == a.NBMA {
		return
	}
	f.mu.Lock()
	if f.pending != nil {
		f.pending.nbma, f.pending.reason = a.NBMA, a.Reason
	} else {
		f.pending = &move{old: a.Old, nbma: a.NBMA, reason: a.Reason, at: a.Time}
	}
	f.mu.Unlock()
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

// run follows the moves until ctx is done.
func (f *follower) run(ctx context.Context) {
	defer close(f.done)
	for {
		select {
		case <-ctx.Done():
			return
		case <-f.wake:
		}
		f.mu.Lock()
		m := f.pending
		f.pending = nil
		f.mu.Unlock()
		if m == nil || m.old == m.nbma {
			continue
		}
		f.follow(ctx, m)
	}
}

// follow makes IPsec and NHRP follow one move.
func (f *follower) follow(ctx context.Context, m *move) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ended := 0
	if mgr := f.d.IPsec(); mgr != nil {
		n, err := mgr.LocalMoved(ctx, m.nbma)
		if err != nil {
			f.log.Warn("ipsec: following the NBMA move", zap.Error(err))
		}
		ended = n
	}
	if e := f.d.Engine(); e != nil {
		if err := e.NBMAChanged(ctx, m.old, m.nbma, m.reason); err != nil {
			f.log.Warn("nhrp: following the NBMA move", zap.Error(err))
		}
	}
	f.log.Info("DMVPN follows the uplinks: registering from the new NBMA address",
		zap.Stringer("from", m.old), zap.Stringer("to", m.nbma), zap.Int("sas_ended", ended),
		zap.Duration("after", time.Since(m.at)), zap.String("reason", m.reason))
}
