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
	f := daemonFollower(d, d.log.Named("uplinks"))
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
	d.uplinks, d.follower = mon, f
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
//
// It remembers the last NBMA address it handed on, so a move through a
// time without any usable uplink (a single PPPoE uplink reconnecting with
// another address: the monitor reports no address, then the new one) is
// a move from that address; and it pins IPsec to the address from the
// first apply on, so charon never initiates from whatever source the
// kernel's multipath default would pick (IPsec started after that apply
// is pinned by its start: startIPsec, then pin).
type follower struct {
	ipsec  func() localMover // nil when IPsec is off or not started yet
	engine func() nbmaMover  // nil before the engine runs
	log    *zap.Logger
	first  chan struct{} // closed at the first apply
	once   sync.Once
	wake   chan struct{}
	done   chan struct{}

	mu      sync.Mutex
	pending *move
	// last is the last valid NBMA address handed on: the one DMVPN
	// follows, kept while no uplink is usable.
	last netip.Addr
}

// localMover is IPsec as the follower moves it (*ipsec.Manager).
type localMover interface {
	Local() netip.Addr
	LocalMoved(ctx context.Context, nbma netip.Addr) (int, error)
}

// nbmaMover is the NHRP engine as the follower moves it (*nhrp.Engine).
type nbmaMover interface {
	NBMAChanged(ctx context.Context, old, nbma netip.Addr, reason string) error
}

// move is a change of this node's NBMA address to follow; old is invalid
// for the first address (IPsec is pinned to it, NHRP started with it).
type move struct {
	old, nbma netip.Addr
	reason    string
	at        time.Time
}

func newFollower(ipsec func() localMover, engine func() nbmaMover, log *zap.Logger) *follower {
	return &follower{ipsec: ipsec, engine: engine, log: log, first: make(chan struct{}), wake: make(chan struct{}, 1), done: make(chan struct{})}
}

// daemonFollower is a follower of the daemon's IPsec manager and engine.
func daemonFollower(d *Daemon, log *zap.Logger) *follower {
	return newFollower(func() localMover {
		if m := d.IPsec(); m != nil {
			return m
		}
		return nil
	}, func() nbmaMover {
		if e := d.Engine(); e != nil {
			return e
		}
		return nil
	}, log)
}

// Transition implements failover.Observer (the monitor logs it).
func (f *follower) Transition(failover.Transition) {}

// Applied implements failover.Observer. The monitor's Old is not used: it
// is invalid after a state without a usable uplink, and the follower's
// own last address is what DMVPN follows.
func (f *follower) Applied(a failover.Applied) {
	defer f.once.Do(func() { close(f.first) })
	if !a.NBMA.IsValid() {
		return // no usable uplink: the next address is a move from f.last
	}
	f.mu.Lock()
	if f.last == a.NBMA {
		f.mu.Unlock()
		return
	}
	old := f.last
	f.last = a.NBMA
	f.queue(old, a.NBMA, a.Reason, a.Time)
	f.mu.Unlock()
}

// pin has IPsec initiate from the address followed now if it does not
// (an apply raced its start).
func (f *follower) pin() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.last.IsValid() {
		f.queue(f.last, f.last, "pinning IPsec to the NBMA address", time.Now())
	}
}

// queue adds a move to the pending one and wakes run. f.mu is held.
func (f *follower) queue(old, nbma netip.Addr, reason string, at time.Time) {
	if f.pending != nil {
		f.pending.nbma, f.pending.reason = nbma, reason
	} else {
		f.pending = &move{old: old, nbma: nbma, reason: reason, at: at}
	}
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
		if m != nil {
			f.follow(ctx, m)
		}
	}
}

// follow makes IPsec and NHRP follow one move: IPsec whenever it does not
// initiate from the new address, NHRP when the address changed.
func (f *follower) follow(ctx context.Context, m *move) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ended := 0
	if mgr := f.ipsec(); mgr != nil && mgr.Local() != m.nbma {
		n, err := mgr.LocalMoved(ctx, m.nbma)
		if err != nil {
			f.log.Warn("ipsec: following the NBMA move", zap.Error(err))
		}
		ended = n
	}
	if !m.old.IsValid() || m.old == m.nbma {
		return
	}
	if e := f.engine(); e != nil {
		if err := e.NBMAChanged(ctx, m.old, m.nbma, m.reason); err != nil {
			f.log.Warn("nhrp: following the NBMA move", zap.Error(err))
		}
	}
	f.log.Info("DMVPN follows the uplinks: registering from the new NBMA address",
		zap.Stringer("from", m.old), zap.Stringer("to", m.nbma), zap.Int("sas_ended", ended),
		zap.Duration("after", time.Since(m.at)), zap.String("reason", m.reason))
}
