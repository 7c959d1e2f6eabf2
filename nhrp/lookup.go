package nhrp

import (
	"context"
	"net/netip"
)

// Lookup returns the cache entry of exactly p (masked), and whether there
// is one: one tree lookup on the engine's goroutine, for a reader that
// needs one binding rather than the cache.
func (e *Engine) Lookup(ctx context.Context, p netip.Prefix) (CacheEntry, bool, error) {
	var ce CacheEntry
	var ok bool
	err := e.do(ctx, func() {
		if en := e.cache.get(p.Masked()); en != nil {
			ce, ok = en.snapshot(e.peerStateOf(en.nbma)), true
		}
	})
	return ce, ok, err
}
