package bgp

import (
	"context"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/opendmvpn/dmvpn/nhrp"
)

// fakeNHRP is the engine as the controller reads it.
type fakeNHRP struct {
	mu      sync.Mutex
	cache   []nhrp.CacheEntry
	servers []nhrp.NHSStatus
	// reads counts the whole-cache reads.
	reads int
}

func (f *fakeNHRP) Cache(context.Context) ([]nhrp.CacheEntry, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reads++
	return slices.Clone(f.cache), nil
}

func (f *fakeNHRP) Lookup(_ context.Context, p netip.Prefix) (nhrp.CacheEntry, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, e := range f.cache {
		if e.Proto == p.Masked() {
			return e, true, nil
		}
	}
	return nhrp.CacheEntry{}, false, nil
}

// cacheReads returns how many times the whole cache was read.
func (f *fakeNHRP) cacheReads() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reads
}

func (f *fakeNHRP) NHS(context.Context) ([]nhrp.NHSStatus, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.servers), nil
}

func (f *fakeNHRP) register(addr, nbma string, attrs map[string][]string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := netip.PrefixFrom(netip.MustParseAddr(addr), 32)
	f.cache = slices.DeleteFunc(f.cache, func(e nhrp.CacheEntry) bool { return e.Proto == p })
	f.cache = append(f.cache, nhrp.CacheEntry{Type: nhrp.TypeDynamic, Proto: p, NBMA: netip.MustParseAddr(nbma),
		Flags: []string{"unique", "registered"}, Identity: "CN=" + addr, Attrs: attrs})
}

// fakeSink is the host-state owner: the kernel's BGP routes.
type fakeSink struct {
	mu     sync.Mutex
	routes []KernelRoute
	sets   int
	// history is every route set written, in order.
	history [][]KernelRoute
}

func (f *fakeSink) SetRoutes(_ context.Context, rs []KernelRoute) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.routes = slices.Clone(rs)
	f.sets++
	f.history = append(f.history, f.routes)
	return nil
}

func (f *fakeSink) Routes(context.Context) ([]KernelRoute, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.routes), nil
}

// mark is where the history stands now, for lacking.
func (f *fakeSink) mark() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.history)
}

// lacking returns the first route set written since mark that has no
// route to dst, and whether there was one.
func (f *fakeSink) lacking(mark int, dst netip.Prefix) ([]KernelRoute, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, rs := range f.history[mark:] {
		if !slices.ContainsFunc(rs, func(r KernelRoute) bool { return r.Dst == dst }) {
			return rs, true
		}
	}
	return nil, false
}

func (f *fakeSink) get() []KernelRoute {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.routes)
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func addr(s string) netip.Addr  { return netip.MustParseAddr(s) }

func attrs(as string, nets ...string) map[string][]string {
	m := map[string][]string{"AS": {as}}
	if as == "" {
		delete(m, "AS")
	}
	if len(nets) > 0 {
		m["NET"] = nets
	}
	return m
}

func registered(a, nbma string, at map[string][]string) nhrp.Event {
	return nhrp.Event{Kind: nhrp.EventRegistered, Proto: netip.PrefixFrom(addr(a), 32), NBMA: addr(nbma), Identity: "CN=" + a, Attrs: at}
}

func expired(a string, cause nhrp.Cause) nhrp.Event {
	return nhrp.Event{Kind: nhrp.EventExpired, Proto: netip.PrefixFrom(addr(a), 32), Cause: cause, Reason: cause.String()}
}
