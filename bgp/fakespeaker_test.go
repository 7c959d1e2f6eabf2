package bgp

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync"
)

// fakeSpeaker records what the controller asks of a speaker; the test
// plays the network (sessions, routes) through it.
type fakeSpeaker struct {
	mu      sync.Mutex
	notify  func(SpeakerEvent)
	nbrs    map[netip.Addr]Neighbor
	ops     []string
	origin  []netip.Prefix
	rib     []Route
	running bool
	stopped string
	// fail makes SetNeighbor of that address fail.
	fail netip.Addr
}

func newFakeSpeaker() *fakeSpeaker { return &fakeSpeaker{nbrs: map[netip.Addr]Neighbor{}} }

func (f *fakeSpeaker) Start(_ context.Context, _ Config, notify func(SpeakerEvent)) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.notify, f.running = notify, true
	return nil
}

func (f *fakeSpeaker) Stop(_ context.Context, graceful bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.running = false
	f.stopped = fmt.Sprintf("graceful=%v", graceful)
	return nil
}

func (f *fakeSpeaker) SetNeighbor(_ context.Context, n Neighbor) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	op := "add"
	if old, ok := f.nbrs[n.Address]; ok {
		if old.sessionSame(n) {
			op = "refilter"
		} else {
			op = "reset"
		}
	}
	op = fmt.Sprintf("%s %s as=%d nets=%v", op, n.Address, n.AS, n.Networks)
	if len(n.Excluded) > 0 {
		op += fmt.Sprintf(" excluded=%v", n.Excluded)
	}
	if n.Address == f.fail {
		f.ops = append(f.ops, "failed "+op)
		return fmt.Errorf("setting %s failed", n.Address)
	}
	f.ops = append(f.ops, op)
	f.nbrs[n.Address] = n
	return nil
}

func (f *fakeSpeaker) DeleteNeighbor(_ context.Context, a netip.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.nbrs[a]; ok {
		f.ops = append(f.ops, "delete "+a.String())
		delete(f.nbrs, a)
		f.rib = slices.DeleteFunc(f.rib, func(r Route) bool { return r.Peer == a })
	}
	return nil
}

func (f *fakeSpeaker) ResetNeighbor(_ context.Context, a netip.Addr, soft bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ops = append(f.ops, fmt.Sprintf("clear %s soft=%v", a, soft))
	return nil
}

func (f *fakeSpeaker) SetOrigin(_ context.Context, ps []netip.Prefix) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.origin = slices.Clone(ps)
	return nil
}

func (f *fakeSpeaker) Neighbors(context.Context) ([]SessionState, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []SessionState
	for a, n := range f.nbrs {
		out = append(out, SessionState{Address: a, AS: n.AS, State: StateEstablished})
	}
	return out, nil
}

func (f *fakeSpeaker) Routes(_ context.Context, q RouteQuery) ([]Route, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []Route
	for _, r := range f.rib {
		if q.Table == TableReceived && r.Peer != q.Neighbor {
			continue
		}
		out = append(out, r)
	}
	return out, nil
}

// takeOps returns the operations since the last call.
func (f *fakeSpeaker) takeOps() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	ops := f.ops
	f.ops = nil
	return ops
}

func (f *fakeSpeaker) neighbors() map[netip.Addr]Neighbor {
	f.mu.Lock()
	defer f.mu.Unlock()
	m := make(map[netip.Addr]Neighbor, len(f.nbrs))
	for k, v := range f.nbrs {
		m[k] = v
	}
	return m
}

// learn puts a path from a neighbour in the RIB and reports it.
func (f *fakeSpeaker) learn(rs ...Route) {
	f.mu.Lock()
	f.rib = append(f.rib, rs...)
	notify := f.notify
	f.mu.Unlock()
	notify(SpeakerEvent{Kind: BestChanged})
}

func (f *fakeSpeaker) Protect(_ context.Context, nbma []netip.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ops = append(f.ops, fmt.Sprintf("protect %v", nbma))
	return nil
}
