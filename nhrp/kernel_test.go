package nhrp

import (
	"context"
	"net/netip"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/opendmvpn/dmvpn/gre"
	"github.com/opendmvpn/dmvpn/internal/leakcheck"
)

// fullTable is a tunnel whose kernel refuses neighbours past a limit
// (a full neighbour table) until the limit is raised; only the neighbour
// calls are implemented.
type fullTable struct {
	Tunnel
	mu      sync.Mutex
	limit   int
	have    map[netip.Addr]netip.Addr
	calls   int // SetNeighbor/DeleteNeighbor calls
	batches int // ApplyNeighbors calls
}

func (f *fullTable) set(n gre.Neighbor) error {
	if _, ok := f.have[n.Proto]; !ok && len(f.have) >= f.limit {
		return syscall.ENOBUFS
	}
	f.have[n.Proto] = n.NBMA
	return nil
}

func (f *fullTable) SetNeighbor(ctx context.Context, n gre.Neighbor) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	return f.set(n)
}

func (f *fullTable) DeleteNeighbor(ctx context.Context, a netip.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	delete(f.have, a)
	return nil
}

func (f *fullTable) state() (int, int, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.have), f.calls, f.batches
}

func (f *fullTable) raise(limit int) {
	f.mu.Lock()
	f.limit = limit
	f.mu.Unlock()
}

// batchedTable takes neighbours in batches.
type batchedTable struct{ *fullTable }

func (b batchedTable) ApplyNeighbors(ctx context.Context, ops []gre.NeighborOp) []error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.batches++
	errs := make([]error, len(ops))
	for i, op := range ops {
		if op.Delete {
			delete(b.have, op.Proto)
			continue
		}
		errs[i] = b.set(op.Neighbor)
	}
	return errs
}

// TestKernelRetriesRefusedNeighbors: neighbours the kernel refuses (a
// full table) are retried on their own until it takes them, while the caller
// goes on (queueing never waits for the kernel); a newer desired state replaces a pending retry; a tunnel
// that takes batches gets every queued neighbour in a few calls.
func TestKernelRetriesRefusedNeighbors(t *testing.T) {
	for _, batched := range []bool{false, true} {
		t.Run(map[bool]string{false: "one-by-one", true: "batched"}[batched], func(t *testing.T) {
			leakcheck.Check(t)
			ft := &fullTable{limit: 100, have: map[netip.Addr]netip.Addr{}}
			var tun Tunnel = ft
			if batched {
				tun = batchedTable{ft}
			}
			k := newKernel(tun, zap.NewNop(), make(chan func(), 1))
			defer k.close()
			nbma := netip.MustParseAddr("198.51.100.1")
			// All 300 queued before the writer runs: how many batches it
			// takes then depends on the writer, not on how the two
			// goroutines happen to interleave on a loaded machine.
			for i := range 300 {
				k.setNeighbor(gre.Neighbor{Proto: netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), NBMA: nbma})
			}
			go k.run()
			// The first 100 go in; the rest fail and wait for a retry.
			waitFor(t, "100 entries and 200 refusals", func() bool {
				n, _, _ := ft.state()
				return n == 100 && k.failures.Load() >= 200
			})
			// A refused entry that is deleted meanwhile is not retried.
			k.delNeighbor(netip.AddrFrom4([4]byte{10, 0, 1, 43}))
			ft.raise(1000)
			waitFor(t, "every entry once the table has room", func() bool {
				n, _, _ := ft.state()
				return n == 299
			})
			_, calls, batches := ft.state()
			if batched && (calls != 0 || batches > 20) {
				t.Errorf("batched tunnel: %d single calls, %d batches", calls, batches)
			}
		})
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
