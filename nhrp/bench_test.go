package nhrp

import (
	"context"
	"net/netip"
	"runtime"
	"testing"
	"time"
)

// acceptAll decides every registration at once (as the daemon's policy
// does with allow: all).
type acceptAll struct{}

func (acceptAll) Authorize(context.Context, Registration) Verdict { return Verdict{} }
func (acceptAll) AuthorizeNow(Registration) (Verdict, bool)       { return Verdict{}, true }

// BenchmarkHubRegistrations measures the engine alone answering
// registrations from b.N distinct spokes (new bindings: cache, peers,
// timers, neighbour queue, reply), over an in-memory tunnel.
func BenchmarkHubRegistrations(b *testing.B) {
	b.Run("nostate", func(b *testing.B) { benchHubRegistrations(b, nil) })
	b.Run("state", func(b *testing.B) { benchHubRegistrations(b, &memStore{}) })
}

func benchHubRegistrations(b *testing.B, st StateStore) {
	hub := netip.MustParseAddr("10.0.0.1")
	tun := newBenchTun(netip.PrefixFrom(hub, 8), netip.MustParseAddr("192.0.2.1"), b.N+1)
	eng, err := New(Config{Role: RoleHub, HoldingTime: 2 * time.Hour, MaxSend: 1 << 30}, Deps{Tunnel: tun, Authorizer: acceptAll{}, State: st})
	if err != nil {
		b.Fatal(err)
	}
	pkts := make([][]byte, b.N)
	for i := range pkts {
		pkts[i] = benchRegistration(i, hub, uint32(i+1), 7200)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { eng.Run(ctx); close(done) }()
	if err := eng.waitRunning(ctx); err != nil {
		b.Fatal(err)
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	b.ReportAllocs()
	b.ResetTimer()
	for i, p := range pkts {
		_, nbma := benchSpoke(i)
		tun.deliver(p, nbma)
	}
	for tun.sent.Load() < uint64(b.N) {
		time.Sleep(100 * time.Microsecond)
	}
	b.StopTimer()
	// What the engine keeps per spoke once the queues have drained.
	if err := eng.do(ctx, func() {}); err != nil {
		b.Fatal(err)
	}
	for eng.kern.pending() > 0 {
		time.Sleep(time.Millisecond)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	b.ReportMetric(float64(int64(after.HeapAlloc)-int64(before.HeapAlloc))/float64(b.N), "heapB/spoke")
	runtime.KeepAlive(pkts)
	cancel()
	tun.close()
	<-done
}
