package nhrp

import (
	"net/netip"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/opendmvpn/dmvpn/nhrp/wire"
)

// heldReplies holds back the Resolution Replies one NBMA address sends
// another, as a responder still bringing up its SA to the requester would
// (it answers only once IKE is done).
type heldReplies struct {
	mu       sync.Mutex
	from, to netip.Addr
	held     [][]byte
}

func (h *heldReplies) filter(from, to netip.Addr, pkt []byte) bool {
	if from != h.from || to != h.to {
		return true
	}
	p, err := wire.Decode(pkt)
	if err != nil || p.Type != wire.TypeResolutionReply {
		return true
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.held = append(h.held, pkt)
	return false
}

func (h *heldReplies) all() [][]byte {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.held
}

// TestLateResolutionReply: a responder whose answers come after the
// requester's tries ran out (its SA took longer than 7 s) still makes the
// shortcut, while the negative entry the resolution left stands: the
// answer is matched on its request ID and on the address the request went
// to (or the server it went through), like one on time. From anyone else
// it is refused; a second late
// answer changes nothing; once the negative entry ran out, a late answer
// is only dropped.
func TestLateResolutionReply(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t)
		_, spokes := l.standard(3)
		settle(time.Second)
		s1 := spokes[0]
		h := &heldReplies{from: spokeNBMA(2), to: spokeNBMA(1)}

		resolveLate := func() [][]byte {
			t.Helper()
			h.mu.Lock()
			h.held = nil
			h.mu.Unlock()
			l.inet.SetFilter(h.filter)
			defer l.inet.SetFilter(nil) // what the test injects goes through
			if _, err := l.send(s1, spokeAddr(1), spokeAddr(2)); err == nil {
				t.Fatal("first packet found a neighbour entry")
			}
			settle(8 * time.Second) // tries at 0, 1 and 3 s; failed at 7 s
			if e, ok := s1.entry(t, hostPrefix(spokeAddr(2))); !ok || e.Type != TypeNegative {
				t.Fatalf("after the tries ran out: %+v %v, want a negative entry", e, ok)
			}
			held := h.all()
			if len(held) != resolveTries {
				t.Fatalf("held %d replies, want one per try (%d)", len(held), resolveTries)
			}
			return held
		}

		held := resolveLate()
		before, _ := s1.eng.Traffic(t.Context())
		// From spoke 3, without the hub in its Forward Transit record: not
		// from where the request went, not answered through it.
		p, err := wire.Decode(held[0])
		if err != nil {
			t.Fatal(err)
		}
		p.Extensions = slices.DeleteFunc(p.Extensions, func(x wire.Extension) bool { return x.Type == wire.ExtForwardTransit })
		forged, err := p.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		l.inet.Inject(spokeNBMA(3), spokeNBMA(1), forged)
		settle(100 * time.Millisecond)
		if e, ok := s1.entry(t, hostPrefix(spokeAddr(2))); !ok || e.Type != TypeNegative {
			t.Fatalf("a late reply from spoke 3 changed spoke 2's entry: %+v %v", e, ok)
		}
		after, _ := s1.eng.Traffic(t.Context())
		if after.Refused["reply-unmatched"] != before.Refused["reply-unmatched"]+1 {
			t.Errorf("late reply from elsewhere: refused %v, want one more reply-unmatched than %v", after.Refused, before.Refused)
		}

		l.inet.Inject(spokeNBMA(2), spokeNBMA(1), held[1])
		settle(100 * time.Millisecond)
		e, ok := s1.entry(t, hostPrefix(spokeAddr(2)))
		if !ok || e.Type != TypeCached || e.NBMA != spokeNBMA(2) {
			t.Fatalf("after spoke 2's late reply: %+v %v, want a cached entry at %s", e, ok, spokeNBMA(2))
		}
		if nbma, err := l.send(s1, spokeAddr(1), spokeAddr(2)); err != nil || nbma != spokeNBMA(2) {
			t.Fatalf("a packet to spoke 2 after the late reply: %v, %v", nbma, err)
		}
		before, _ = s1.eng.Traffic(t.Context())
		l.inet.Inject(spokeNBMA(2), spokeNBMA(1), held[2]) // the third try's answer
		settle(100 * time.Millisecond)
		after, _ = s1.eng.Traffic(t.Context())
		if d := after.Dropped["unexpected-reply"] - before.Dropped["unexpected-reply"]; d != 1 {
			t.Errorf("a second late reply: %d more dropped as unexpected, want 1", d)
		}
		if e2, _ := s1.entry(t, hostPrefix(spokeAddr(2))); e2.Created != e.Created {
			t.Errorf("a second late reply replaced the entry: %+v, was %+v", e2, e)
		}

		// Once the negative entry has run out the tries are forgotten.
		if _, err := s1.eng.Clear(t.Context(), ClearRequest{Peer: spokeAddr(2)}); err != nil {
			t.Fatal(err)
		}
		settle(time.Second)
		held = resolveLate()
		settle(DefaultNegativeTTL) // the negative entry goes
		if e, ok := s1.entry(t, hostPrefix(spokeAddr(2))); ok && e.Type != TypeIncomplete {
			t.Fatalf("after the negative entry's time: %+v", e)
		}
		before, _ = s1.eng.Traffic(t.Context())
		l.inet.Inject(spokeNBMA(2), spokeNBMA(1), held[0])
		settle(100 * time.Millisecond)
		if e, ok := s1.entry(t, hostPrefix(spokeAddr(2))); ok && e.Type == TypeCached {
			t.Fatalf("a reply after the negative entry ran out was installed: %+v", e)
		}
		after, _ = s1.eng.Traffic(t.Context())
		if d := after.Dropped["unexpected-reply"] - before.Dropped["unexpected-reply"]; d != 1 {
			t.Errorf("a reply after the negative entry ran out: %d more dropped as unexpected, want 1", d)
		}
	})
}
