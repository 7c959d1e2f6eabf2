package nhrp

import (
	"container/heap"
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/opendmvpn/dmvpn/gre"
)

// kernel applies neighbour entries and routes to the tunnel in its own
// goroutine, so a slow netlink call never stalls the engine and a refusal
// never delays a reply. Operations on the same key are coalesced: only the
// latest desired state is applied. Neighbour changes go to the tunnel in
// batches when it takes them (NeighborBatcher: one netlink round trip for
// hundreds of entries). A failed operation — a neighbour the kernel
// refuses because its table is full, say — is retried with a growing pause
// (up to kernRetryMax) for as long as it is the desired state; failures
// are counted and logged at most once per kernLogEvery.
type kernel struct {
	tun     Tunnel
	log     *zap.Logger
	asyncCh chan<- func()

	mu      sync.Mutex
	want    map[kernKey]kernOp
	order   []kernKey
	retry   map[kernKey]kernOp // failed, waiting for their next attempt
	retryQ  retryHeap
	wake    chan struct{}
	stop    chan struct{}
	stopped chan struct{}
	wg      sync.WaitGroup // poll goroutines
	// failures counts operations that failed (each attempt).
	failures atomic.Uint64
	// logged is what failures was at the last log line, lastLog when.
	logged  uint64
	lastLog time.Time
	lastErr error

	// The run goroutine's buffers, reused batch after batch: a batch's
	// keys, operations, results and neighbour operations were five fresh
	// slices per round trip and the queue's array grew again from nothing
	// after each (a third of the bytes a registration allocated in
	// BenchmarkHubRegistrations: the hub's GC and page faults).
	keysBuf []kernKey
	opsBuf  []kernOp
	errBuf  []error
	nbBuf   []gre.NeighborOp
	nbIdx   []int
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
	due   time.Time // next attempt of a failed operation
}

const (
	// kernBatch is the most operations applied in one round.
	kernBatch = 1024
	// kernRetryMax caps the pause before a failed operation is tried
	// again; the first is kernRetryMin, doubling after each failure.
	kernRetryMin = 500 * time.Millisecond
	kernRetryMax = 30 * time.Second
	// kernLogEvery is how often failures are logged at most.
	kernLogEvery = 10 * time.Second
)

func newKernel(tun Tunnel, log *zap.Logger, async chan<- func()) *kernel {
	return &kernel{
		tun: tun, log: log, asyncCh: async,
		want: make(map[kernKey]kernOp), retry: make(map[kernKey]kernOp),
		wake: make(chan struct{}, 1), stop: make(chan struct{}), stopped: make(chan struct{}),
	}
}

func (k *kernel) push(key kernKey, op kernOp) {
	k.mu.Lock()
	if _, queued := k.want[key]; !queued {
		k.order = append(k.order, key)
	}
	k.want[key] = op
	delete(k.retry, key) // superseded: the new desired state is tried now
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

// take returns the next batch: queued operations first, then failed ones
// whose pause is over. It waits until there is one or the kernel stops
// (nil).
func (k *kernel) take() ([]kernKey, []kernOp) {
	for {
		k.mu.Lock()
		now := time.Now()
		for len(k.retryQ) > 0 && !k.retryQ[0].due.After(now) {
			r := heap.Pop(&k.retryQ).(retryItem)
			op, ok := k.retry[r.key]
			if !ok || !op.due.Equal(r.due) {
				continue // superseded
			}
			delete(k.retry, r.key)
			if _, queued := k.want[r.key]; !queued {
				k.order = append(k.order, r.key)
				k.want[r.key] = op
			}
		}
		if n := min(len(k.order), kernBatch); n > 0 {
			keys := append(k.keysBuf[:0], k.order[:n]...)
			k.keysBuf = keys
			switch {
			case n < len(k.order):
				k.order = k.order[n:]
			case cap(k.order) > 4*kernBatch:
				k.order = nil // let a long queue's array go
			default:
				k.order = k.order[:0] // the next batch queues into it
			}
			ops := k.opsBuf[:0]
			for _, key := range keys {
				ops = append(ops, k.want[key])
				delete(k.want, key)
			}
			k.opsBuf = ops
			k.mu.Unlock()
			return keys, ops
		}
		var timer <-chan time.Time
		if len(k.retryQ) > 0 {
			timer = time.After(time.Until(k.retryQ[0].due))
		}
		k.mu.Unlock()
		select {
		case <-k.wake:
		case <-timer:
		case <-k.stop:
			return nil, nil
		}
	}
}

// run applies queued operations until close.
func (k *kernel) run() {
	defer close(k.stopped)
	batcher, _ := k.tun.(NeighborBatcher)
	// One context for every batch: a context with its own timer per
	// batch was two allocations and a runtime timer per round trip, and a
	// round trip is often one registration's neighbour. The netlink
	// writer bounds its own wait for the kernel's answer.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for {
		keys, ops := k.take()
		if keys == nil {
			return
		}
		errs := slices.Grow(k.errBuf[:0], len(ops))[:len(ops)]
		clear(errs)
		k.errBuf = errs
		nb, nbIdx := k.nbBuf[:0], k.nbIdx[:0]
		for i, key := range keys {
			if key.neigh.IsValid() && batcher != nil {
				nb = append(nb, gre.NeighborOp{Neighbor: ops[i].neigh, Delete: ops[i].del})
				nbIdx = append(nbIdx, i)
				continue
			}
			errs[i] = k.apply(key, ops[i])
		}
		k.nbBuf, k.nbIdx = nb, nbIdx
		if len(nb) > 0 {
			for j, err := range batcher.ApplyNeighbors(ctx, nb) {
				errs[nbIdx[j]] = err
			}
		}
		for i, err := range errs {
			if err != nil {
				k.failed(keys[i], ops[i], err)
			}
		}
		k.logFailures()
	}
}

// failed schedules the next attempt of a failed operation, unless a newer
// desired state was queued meanwhile.
func (k *kernel) failed(key kernKey, op kernOp, err error) {
	k.failures.Add(1)
	k.mu.Lock()
	defer k.mu.Unlock()
	k.lastErr = fmt.Errorf("%s: %w", op.String(key), err)
	if _, newer := k.want[key]; newer {
		return
	}
	op.tries++
	op.due = time.Now().Add(min(kernRetryMin<<min(op.tries-1, 10), kernRetryMax))
	k.retry[key] = op
	heap.Push(&k.retryQ, retryItem{key: key, due: op.due})
}

// logFailures logs the failures since the last line, at most once per
// kernLogEvery: a full neighbour table refuses thousands of entries, and
// each is retried; one line says how many and the last reason.
func (k *kernel) logFailures() {
	n := k.failures.Load()
	if n == k.logged || time.Since(k.lastLog) < kernLogEvery {
		return
	}
	k.mu.Lock()
	last, pending := k.lastErr, len(k.retry)
	k.mu.Unlock()
	k.log.Warn("kernel updates failed; retrying them", zap.Uint64("failed", n-k.logged),
		zap.Int("waiting", pending), zap.Error(last))
	k.logged, k.lastLog = n, time.Now()
}

// retryItem is a failed operation's place in the retry queue.
type retryItem struct {
	key kernKey
	due time.Time
}

type retryHeap []retryItem

func (h retryHeap) Len() int           { return len(h) }
func (h retryHeap) Less(i, j int) bool { return h[i].due.Before(h[j].due) }
func (h retryHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *retryHeap) Push(x any)        { *h = append(*h, x.(retryItem)) }
func (h *retryHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
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

// pending counts the operations queued and waiting for a retry.
func (k *kernel) pending() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.order) + len(k.retry)
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
