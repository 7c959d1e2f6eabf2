package nhrp

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/opendmvpn/dmvpn/gre"
)

// kernel applies neighbour entries and routes to the tunnel in its own
// goroutine, so a slow netlink call never stalls the engine. Operations
// on the same key are coalesced: only the latest desired state is applied.
// A failed operation is retried after a pause.
type kernel struct {
	tun     Tunnel
	log     *zap.Logger
	asyncCh chan<- func()

	mu      sync.Mutex
	want    map[kernKey]kernOp
	order   []kernKey
	wake    chan struct{}
	stop    chan struct{}
	stopped chan struct{}
	wg      sync.WaitGroup // retry and poll goroutines
	// failures counts operations that failed (and were retried).
	failures uint64
}

// kernKey identifies a kernel object: a neighbour (by tunnel address) or
// a route (by table and prefix).
type kernKey struct {
	neigh netip.Addr
	route netip.Prefix
	table int
}

// kernOp is the desired state of a kernel object.
type kernOp struct {
	del   bool
	neigh gre.Neighbor
	route gre.Route
	tries int
}

func newKernel(tun Tunnel, log *zap.Logger, async chan<- func()) *kernel {
	return &kernel{
		tun: tun, log: log, asyncCh: async,
		want: make(map[kernKey]kernOp), wake: make(chan struct{}, 1),
		stop: make(chan struct{}), stopped: make(chan struct{}),
	}
}

func (k *kernel) push(key kernKey, op kernOp) {
	k.mu.Lock()
	if _, queued := k.want[key]; !queued {
		k.order = append(k.order, key)
	}
	k.want[key] = op
	k.mu.Unlock()
	select {
	case k.wake <- struct{}{}:
	default:
	}
}

// setNeighbor and delNeighbor queue neighbour changes.
func (k *kernel) setNeighbor(n gre.Neighbor) { k.push(kernKey{neigh: n.Proto}, kernOp{neigh: n}) }
func (k *kernel) delNeighbor(a netip.Addr) {
	k.push(kernKey{neigh: a}, kernOp{del: true, neigh: gre.Neighbor{Proto: a}})
}

// setRoute and delRoute queue route changes.
func (k *kernel) setRoute(r gre.Route) {
	k.push(kernKey{route: r.Dst, table: r.Table}, kernOp{route: r})
}
func (k *kernel) delRoute(r gre.Route) {
	k.push(kernKey{route: r.Dst, table: r.Table}, kernOp{del: true, route: r})
}

// run applies queued operations until close.
func (k *kernel) run() {
	defer close(k.stopped)
	for {
		k.mu.Lock()
		if len(k.order) == 0 {
			k.mu.Unlock()
			select {
			case <-k.wake:
				continue
			case <-k.stop:
				return
			}
		}
		key := k.order[0]
		k.order = k.order[1:]
		op := k.want[key]
		delete(k.want, key)
		k.mu.Unlock()

		if err := k.apply(key, op); err != nil {
			k.mu.Lock()
			k.failures++
			k.mu.Unlock()
			if op.tries < 5 {
				k.log.Warn("kernel update failed, retrying", zap.String("op", op.String(key)), zap.Error(err))
				op.tries++
				k.wg.Add(1)
				go func() {
					defer k.wg.Done()
					select {
					case <-time.After(time.Duration(op.tries) * 500 * time.Millisecond):
						k.mu.Lock()
						_, newer := k.want[key]
						k.mu.Unlock()
						if !newer {
							k.push(key, op)
						}
					case <-k.stop:
					}
				}()
			} else {
				k.log.Error("kernel update failed", zap.String("op", op.String(key)), zap.Error(err))
			}
		}
	}
}

func (k *kernel) apply(key kernKey, op kernOp) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	switch {
	case key.neigh.IsValid() && op.del:
		return k.tun.DeleteNeighbor(ctx, key.neigh)
	case key.neigh.IsValid():
		return k.tun.SetNeighbor(ctx, op.neigh)
	case op.del:
		return k.tun.DeleteRoute(ctx, op.route)
	default:
		return k.tun.ReplaceRoute(ctx, op.route)
	}
}

func (op kernOp) String(key kernKey) string {
	verb := "set"
	if op.del {
		verb = "delete"
	}
	if key.neigh.IsValid() {
		return fmt.Sprintf("%s neighbour %s lladdr %s", verb, key.neigh, op.neigh.NBMA)
	}
	return fmt.Sprintf("%s route %s via %s table %d", verb, op.route.Dst, op.route.Via, op.route.Table)
}

// flush waits until every queued operation was applied or ctx is done.
func (k *kernel) flush(ctx context.Context) {
	for {
		k.mu.Lock()
		n := len(k.order)
		k.mu.Unlock()
		if n == 0 {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// close applies what is queued (for up to two seconds) and stops.
func (k *kernel) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	k.flush(ctx)
	cancel()
	close(k.stop)
	<-k.stopped
	k.wg.Wait()
}

// pollNeighbors lists the tunnel's neighbours in the kernel goroutine's
// stead (a separate goroutine) and hands the result to the engine loop.
func (k *kernel) pollNeighbors(done func([]gre.Neighbor)) {
	k.wg.Add(1)
	go func() {
		defer k.wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		ns, err := k.tun.Neighbors(ctx)
		if err != nil {
			k.log.Debug("listing neighbours", zap.Error(err))
			return
		}
		select {
		case k.asyncCh <- func() { done(ns) }:
		case <-k.stop:
		}
	}()
}
