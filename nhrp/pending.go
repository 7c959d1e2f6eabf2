package nhrp

import (
	"net/netip"
	"time"

	"github.com/opendmvpn/dmvpn/nhrp/wire"
)

// pendingReq is a request this node sent and waits a reply for.
type pendingReq struct {
	id      uint32
	typ     wire.Type
	to      netip.Addr
	onReply func(p *wire.Packet, from netip.Addr)
	onFail  func(reason string)
}

// fail ends the request with a failure.
func (r *pendingReq) fail(reason string) {
	if r.onFail != nil {
		r.onFail(reason)
	}
}

// addPending records an outstanding request.
func (e *Engine) addPending(r *pendingReq) { e.pending[r.id] = r }

// backoff returns the retry delay after n attempts: 1 s, 2 s, 4 s … up
// to max.
func backoff(n int, max time.Duration) time.Duration {
	d := time.Second
	for i := 1; i < n && d < max; i++ {
		d *= 2
	}
	if d > max {
		d = max
	}
	return d
}
