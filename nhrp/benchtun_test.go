package nhrp

import (
	"context"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opendmvpn/dmvpn/gre"
	"github.com/opendmvpn/dmvpn/nhrp/wire"
)

// benchTun is a minimal in-memory tunnel for benchmarks and floods: the
// test puts packets in (deliver), the engine's packets are counted and
// handed to onSend; the kernel calls succeed and are counted.
type benchTun struct {
	info   gre.Info
	rx     chan benchPkt
	done   chan struct{}
	misses chan gre.Miss
	sent   atomic.Uint64
	neigh  atomic.Int64
	onSend func(b []byte, to netip.Addr)
}

type benchPkt struct {
	b    []byte
	from netip.Addr
}

func newBenchTun(prefix netip.Prefix, nbma netip.Addr, queue int) *benchTun {
	return &benchTun{
		info: gre.Info{Name: "bench0", Index: 9, Key: 42, HasKey: true, Prefix: prefix, NBMA: []netip.Addr{nbma}, MTU: 1400, Backend: "bench"},
		rx:   make(chan benchPkt, queue), done: make(chan struct{}), misses: make(chan gre.Miss),
	}
}

func (t *benchTun) deliver(b []byte, from netip.Addr) { t.rx <- benchPkt{b, from} }
func (t *benchTun) close()                            { close(t.done) }

func (t *benchTun) Info() gre.Info { return t.info }
func (t *benchTun) ReadNHRP(b []byte) (int, netip.Addr, error) {
	select {
	case p := <-t.rx:
		return copy(b, p.b), p.from, nil
	case <-t.done:
		return 0, netip.Addr{}, gre.ErrClosed
	}
}
func (t *benchTun) WriteNHRP(b []byte, to netip.Addr) error {
	t.sent.Add(1)
	if t.onSend != nil {
		t.onSend(b, to)
	}
	return nil
}
func (t *benchTun) SetNeighbor(context.Context, gre.Neighbor) error   { t.neigh.Add(1); return nil }
func (t *benchTun) DeleteNeighbor(context.Context, netip.Addr) error  { t.neigh.Add(-1); return nil }
func (t *benchTun) Neighbors(context.Context) ([]gre.Neighbor, error) { return nil, nil }
func (t *benchTun) Misses() <-chan gre.Miss                           { return t.misses }
func (t *benchTun) SetMulticast([]netip.Addr) error                   { return nil }
func (t *benchTun) ReplaceRoute(context.Context, gre.Route) error     { return nil }
func (t *benchTun) DeleteRoute(context.Context, gre.Route) error      { return nil }
func (t *benchTun) UpdateMulticast(add, remove []netip.Addr) error    { return nil }

// benchSpoke numbers simulated spokes: NBMA in 198.18.0.0/15, tunnel
// address in 10.0.0.0/8 from 10.0.0.2.
func benchSpoke(i int) (proto, nbma netip.Addr) {
	n := i + 2
	return netip.AddrFrom4([4]byte{10, byte(n >> 16), byte(n >> 8), byte(n)}),
		netip.AddrFrom4([4]byte{198, 18 + byte((i+1)>>16), byte((i + 1) >> 8), byte(i + 1)})
}

// benchRegistration encodes spoke i's Registration Request to hub.
func benchRegistration(i int, hub netip.Addr, id uint32, holding uint16) []byte {
	proto, nbma := benchSpoke(i)
	p := &wire.Packet{
		Type: wire.TypeRegistrationRequest, HopCount: 255, Flags: wire.RegFlagU | wire.RegFlagNAT, RequestID: id,
		SrcNBMA: nbma, SrcProto: proto, DstProto: hub,
		CIEs: []wire.CIE{{PrefixLen: 255, MTU: 1472, HoldingTime: holding}},
		Extensions: []wire.Extension{
			{Type: wire.ExtResponderAddress, Compulsory: true},
			{Type: wire.ExtForwardTransit, Compulsory: true},
			{Type: wire.ExtReverseTransit, Compulsory: true},
			{Type: wire.ExtNATAddress},
		},
	}
	b, err := p.MarshalBinary()
	if err != nil {
		panic(err)
	}
	return b
}

// startBenchHub runs a hub engine (tunnel 10.0.0.1/8) on an in-memory
// tunnel queueing queue packets, keeping its state in state (nil: none);
// stop ends it.
func startBenchHub(tb testing.TB, queue int, state StateStore) (eng *Engine, tun *benchTun, stop func()) {
	tb.Helper()
	hub := netip.MustParseAddr("10.0.0.1")
	tun = newBenchTun(netip.PrefixFrom(hub, 8), netip.MustParseAddr("192.0.2.1"), queue)
	eng, err := New(Config{Role: RoleHub, HoldingTime: 2 * time.Hour, MaxSend: 1 << 30}, Deps{Tunnel: tun, Authorizer: acceptAll{}, State: state})
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { eng.Run(ctx); close(done) }()
	return eng, tun, func() { cancel(); tun.close(); <-done }
}
