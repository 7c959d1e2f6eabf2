package nhrp

import (
	"context"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"
)

// listingHub starts a hub engine on an in-memory tunnel with n spokes
// registered; stop ends it.
func listingHub(tb testing.TB, n int) (eng *Engine, tun *benchTun, stop func()) {
	tb.Helper()
	hub := netip.MustParseAddr("10.0.0.1")
	eng, tun, stop = startBenchHub(tb, n+1, nil)
	if err := eng.waitRunning(context.Background()); err != nil {
		stop()
		tb.Fatal(err)
	}
	for i := range n {
		_, nbma := benchSpoke(i)
		tun.deliver(benchRegistration(i, hub, uint32(i+1), 7200), nbma)
	}
	deadline := time.Now().Add(time.Minute)
	for tun.sent.Load() < uint64(n) {
		if time.Now().After(deadline) {
			stop()
			tb.Fatalf("%d of %d registrations answered", tun.sent.Load(), n)
		}
		time.Sleep(time.Millisecond)
	}
	return eng, tun, stop
}

// TestListingChunks: the cache and the peers are read in chunks of at
// most listChunk in address order, every entry once, and the engine
// answers other calls between chunks.
func TestListingChunks(t *testing.T) {
	const n = 2*listChunk + 37
	eng, _, stop := listingHub(t, n)
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var got []CacheEntry
	chunks := 0
	err := eng.CacheEach(ctx, func(c []CacheEntry) error {
		chunks++
		if len(c) > listChunk {
			t.Errorf("chunk of %d entries, want at most %d", len(c), listChunk)
		}
		// The engine is free while a chunk is handed out.
		if _, err := eng.Status(ctx); err != nil {
			t.Errorf("Status between chunks: %v", err)
		}
		got = append(got, c...)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	dynamic := 0
	for i, en := range got {
		if i > 0 && protoCompare(got[i-1].Proto, en.Proto) >= 0 {
			t.Fatalf("entry %d (%v) not after %v", i, en.Proto, got[i-1].Proto)
		}
		if en.Type == TypeDynamic {
			dynamic++
		}
	}
	if dynamic != n || chunks < 3 {
		t.Errorf("%d dynamic entries in %d chunks, want %d in at least 3", dynamic, chunks, n)
	}
	all, err := eng.Cache(ctx)
	if err != nil || len(all) != len(got) {
		t.Errorf("Cache: %d entries (%v), CacheEach %d", len(all), err, len(got))
	}
	peers, err := eng.Peers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(peers) != n {
		t.Errorf("%d peers, want %d", len(peers), n)
	}
	for i := 1; i < len(peers); i++ {
		if !peers[i-1].NBMA.Less(peers[i].NBMA) {
			t.Fatalf("peer %d (%v) not after %v", i, peers[i].NBMA, peers[i-1].NBMA)
		}
	}
}

// BenchmarkListingStall measures what listing 100,000 entries and peers
// (as show dmvpn does) costs the engine's other work: the longest wait
// of a call queued behind the listing (stall-ms), while Cache and Peers
// run b.N times.
func BenchmarkListingStall(b *testing.B) {
	eng, _, stop := listingHub(b, 100000)
	defer stop()
	ctx := context.Background()
	var wg sync.WaitGroup
	quit := make(chan struct{})
	var worst time.Duration
	wg.Go(func() {
		for {
			select {
			case <-quit:
				return
			default:
			}
			t0 := time.Now()
			if err := eng.do(ctx, func() {}); err != nil {
				return
			}
			worst = max(worst, time.Since(t0))
			time.Sleep(100 * time.Microsecond)
		}
	})
	b.ResetTimer()
	for range b.N {
		if _, err := eng.Cache(ctx); err != nil {
			b.Fatal(err)
		}
		if _, err := eng.Peers(ctx); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	close(quit)
	wg.Wait()
	b.ReportMetric(float64(worst)/float64(time.Millisecond), "stall-ms")
}

// TestCacheUnder: the entries under a prefix are those within it, itself
// included, in address order, whatever surrounds them.
func TestCacheUnder(t *testing.T) {
	c := newCache()
	for _, p := range []string{"10.0.0.0/8", "10.1.0.0/16", "10.1.0.0/24", "10.1.2.0/24", "10.1.2.3/32", "10.1.255.255/32",
		"10.2.0.0/16", "10.0.255.255/32", "11.0.0.0/8", "2001:db8::/32", "2001:db8::1/128"} {
		c.put(&entry{typ: TypeCached, proto: netip.MustParsePrefix(p)})
	}
	for _, tc := range []struct {
		under string
		want  []string
	}{
		{"10.1.0.0/16", []string{"10.1.0.0/16", "10.1.0.0/24", "10.1.2.0/24", "10.1.2.3/32", "10.1.255.255/32"}},
		{"10.1.2.0/24", []string{"10.1.2.0/24", "10.1.2.3/32"}},
		{"10.1.2.3/32", []string{"10.1.2.3/32"}},
		{"10.1.3.0/24", nil},
		{"0.0.0.0/0", []string{"10.0.0.0/8", "10.0.255.255/32", "10.1.0.0/16", "10.1.0.0/24", "10.1.2.0/24", "10.1.2.3/32", "10.1.255.255/32", "10.2.0.0/16", "11.0.0.0/8"}},
		{"2001:db8::/32", []string{"2001:db8::/32", "2001:db8::1/128"}},
	} {
		var got []string
		c.under(netip.MustParsePrefix(tc.under), func(e *entry) bool {
			got = append(got, e.proto.String())
			return true
		})
		if !slices.Equal(got, tc.want) {
			t.Errorf("under %s: %v, want %v", tc.under, got, tc.want)
		}
	}
}
