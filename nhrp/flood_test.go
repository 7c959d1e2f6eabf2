package nhrp

import (
	"context"
	"flag"
	"math/rand/v2"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/opendmvpn/dmvpn/nhrp/wire"
)

// floodPackets is how many forged packets TestFlood sends. The issue's
// figure is a million, which the default sends (about 10 s on one core);
// -flood.packets makes it smaller or larger.
var floodPackets = flag.Int("flood.packets", 1_000_000, "forged packets TestFlood sends")

// floodHeapBound is how much the Go heap may grow (after a GC) between
// the first tenth of TestFlood's packets and its end: the state is
// bounded by the limits, so a flood ten times as long keeps nothing more.
const floodHeapBound = 8 << 20

// floodLimits are TestFlood's limits: smaller than the defaults, so the
// flood reaches each of them (the defaults are sized for 100,000 spokes).
var floodLimits = Limits{MaxEntries: 4096, MaxPeers: 4096, MaxSources: 4096, MaxPending: 256}

// floodLegit is the number of legitimate spokes refreshing during the
// flood, every floodRefresh of virtual time with a holding time of three
// times that: one lost refresh shows, and a lost registration expires.
const (
	floodLegit   = 1000
	floodRefresh = 2 * time.Second
	floodTick    = 10 * time.Millisecond // virtual time per 1,000 forged packets
)

// floodCounts are what TestFlood sent, by kind.
type floodCounts struct {
	regs, resolutions, purges, oversize, garbage, flooder int
}

// TestFlood: a hub in clear that accepts every registration (allow: all,
// the harshest case: forged registrations are accepted until the cache is
// full) takes forged packets from random NBMA sources — registrations,
// Resolution Requests, Purge Requests of the legitimate spokes'
// addresses and of their /16, packets with more CIEs than MaxCIEs,
// truncated packets, and one source flooding Resolution Requests — while
// 1,000 legitimate spokes refresh every 2 s (virtual time, synctest:
// 100,000 forged packets a second). Every refresh is answered with
// success and every spoke stays registered; each limit's count is exactly
// what was sent of its kind; the heap after a GC grows by less than
// floodHeapBound from the first tenth of the flood to its end, and each
// table stays within its limit.
func TestFlood(t *testing.T) {
	n := *floodPackets
	if testing.Short() && n > 200_000 {
		n = 200_000
	}
	synctest.Test(t, func(t *testing.T) {
		hub := netip.MustParseAddr("10.0.0.1")
		tun := newBenchTun(netip.PrefixFrom(hub, 8), netip.MustParseAddr("192.0.2.1"), 1024)
		legit := make(map[netip.Addr]int, floodLegit) // NBMA → spoke
		for i := range floodLegit {
			_, nbma := benchSpoke(i)
			legit[nbma] = i
		}
		var mu sync.Mutex
		ok, bad := 0, 0
		var rep wire.Packet
		tun.onSend = func(b []byte, to netip.Addr) {
			if _, isLegit := legit[to]; !isLegit {
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if rep.UnmarshalBinary(b) != nil || rep.Type != wire.TypeRegistrationReply {
				return
			}
			for _, c := range rep.CIEs {
				if c.Code == wire.CIESuccess {
					ok++
				} else {
					bad++
				}
			}
		}
		hold := 3 * floodRefresh
		eng, err := New(Config{Role: RoleHub, HoldingTime: hold, Limits: floodLimits}, Deps{Tunnel: tun, Authorizer: acceptAll{}})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { eng.Run(ctx); close(done) }()
		defer func() { cancel(); tun.close(); <-done }()
		if err := eng.waitRunning(ctx); err != nil {
			t.Fatal(err)
		}
		id := uint32(1)
		refresh := func(i int) {
			_, nbma := benchSpoke(i)
			tun.deliver(benchRegistration(i, hub, id, uint16(hold/time.Second)), nbma)
			id++
		}
		for i := range floodLegit {
			refresh(i)
		}
		sentLegit := floodLegit
		time.Sleep(time.Millisecond)

		rng := rand.New(rand.NewPCG(1, 2))
		flooder := netip.MustParseAddr("203.0.113.66")
		var sent floodCounts
		var heapStart, rssStart uint64
		perTick := floodLegit / int(floodRefresh/floodTick) // spokes refreshing per tick
		start := time.Now()
		for k := range n {
			kind := rng.IntN(20)
			from := randomSource(rng)
			var b []byte
			switch {
			case kind < 6: // registration of a random address
				b = forgedRegistration(rng, from, hub, 1)
				sent.regs++
			case kind < 10:
				b = forgedResolution(rng, from, hub)
				sent.resolutions++
			case kind < 13:
				b = forgedPurge(rng, from, hub)
				sent.purges++
			case kind < 15:
				b = forgedRegistration(rng, from, hub, floodLimits.withDefaults().MaxCIEs+1+rng.IntN(200))
				sent.oversize++
			case kind < 16:
				b = forgedRegistration(rng, from, hub, 1)[:10]
				sent.garbage++
			default:
				b = forgedResolution(rng, flooder, hub)
				from = flooder
				sent.flooder++
			}
			tun.deliver(b, from)
			if (k+1)%1000 == 0 {
				tick := (k + 1) / 1000
				for j := range perTick {
					refresh((tick*perTick + j) % floodLegit)
					sentLegit++
				}
				time.Sleep(floodTick)
			}
			if k+1 == n/10 {
				heapStart, rssStart = heapAfterGC(), rssKiB()
			}
		}
		time.Sleep(time.Second)
		virtual := time.Since(start)
		heapEnd, rssEnd := heapAfterGC(), rssKiB()
		t.Logf("%d forged packets (%+v) and %d refreshes over %v of virtual time; heap %d → %d KiB, RSS %d → %d KiB",
			n, sent, sentLegit, virtual, heapStart>>10, heapEnd>>10, rssStart, rssEnd)
		if heapEnd > heapStart+floodHeapBound {
			t.Errorf("heap grew from %d to %d KiB, more than the bound of %d KiB", heapStart>>10, heapEnd>>10, floodHeapBound>>10)
		}

		mu.Lock()
		if ok != sentLegit || bad != 0 {
			t.Errorf("legitimate registrations: %d answered with success, %d refused, of %d sent", ok, bad, sentLegit)
		}
		mu.Unlock()
		tr, err := eng.Traffic(ctx)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("dropped %v; refused %v; limited %v; suppressed %v", tr.Dropped, tr.Refused, tr.Limited, tr.Suppressed)
		flooderAllowed := sent.flooder - int(tr.Limited["rate-limited"])
		if max := DefaultSourceBurst + int(DefaultSourceRate*virtual.Seconds()) + 1; flooderAllowed > max || tr.Limited["rate-limited"] == 0 {
			t.Errorf("the flooding source had %d of %d packets through (rate-limited %d), want at most %d and some limited",
				flooderAllowed, sent.flooder, tr.Limited["rate-limited"], max)
		}
		for _, c := range []struct {
			name      string
			got, want uint64
		}{
			{"dropped malformed", tr.Dropped["malformed"], uint64(sent.garbage)},
			{"limited too-many-cies", tr.Limited["too-many-cies"], uint64(sent.oversize)},
			{"dropped too-many-cies", tr.Dropped["too-many-cies"], uint64(sent.oversize)},
			{"dropped rate-limited", tr.Dropped["rate-limited"], tr.Limited["rate-limited"]},
			{"refused purge-not-owner", tr.Refused["purge-not-owner"], uint64(sent.purges)},
			{"refused request-source", tr.Refused["request-source"], uint64(sent.resolutions + flooderAllowed)},
			{"limited sources-full", tr.Limited["sources-full"], 0},
			{"limited hooks-full", tr.Limited["hooks-full"], 0},
		} {
			if c.got != c.want {
				t.Errorf("%s: %d, want %d", c.name, c.got, c.want)
			}
		}
		if tr.Limited["cache-full"] == 0 || tr.Limited["peers-full"] == 0 {
			t.Errorf("the flood did not reach the cache and peer limits: %v", tr.Limited)
		}
		err = eng.do(ctx, func() {
			for i := range floodLegit {
				proto, nbma := benchSpoke(i)
				if en := eng.cache.get(hostPrefix(proto)); en == nil || en.typ != TypeDynamic || en.nbma != nbma {
					t.Errorf("spoke %d (%s) lost its registration: %+v", i, proto, en)
					return
				}
			}
			l := eng.cfg.Limits
			bound := func(what string, got, max int) {
				if got > max {
					t.Errorf("%s: %d, over the bound of %d", what, got, max)
				}
			}
			bound("cache entries", len(eng.cache.m), l.MaxEntries)
			bound("peers", len(eng.peers), l.MaxPeers+l.MaxEntries)
			bound("rate-limited sources", len(eng.srcLimit.m), l.MaxSources)
			bound("source order", len(eng.srcLimit.order), 2*l.MaxSources)
			bound("peer order", len(eng.peerOrder), 2*(l.MaxPeers+l.MaxEntries))
			bound("registrations being authorised", len(eng.authorizing), l.MaxPending)
			bound("forwarded requests", len(eng.forwarded), l.MaxPending)
			bound("hooks", eng.hooks, l.MaxHooks)
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}

// heapAfterGC returns the live heap after a collection.
func heapAfterGC() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// rssKiB is the process's resident set (Linux; 0 elsewhere), logged
// beside the heap: the test binary's, so only its growth says anything.
func rssKiB() uint64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			v, _ := strconv.ParseUint(f[1], 10, 64)
			return v
		}
	}
	return 0
}

// randomSource is a random NBMA address in 100.64.0.0/10 (no legitimate
// spoke's: they are in 198.18.0.0/15).
func randomSource(rng *rand.Rand) netip.Addr {
	v := 100<<24 | 64<<16 | rng.Uint32()&(1<<22-1)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// randomTunnel is a random tunnel address in 10.0.0.0/8 (legitimate
// spokes' included).
func randomTunnel(rng *rand.Rand) netip.Addr {
	v := 10<<24 | rng.Uint32()&(1<<24-1)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func floodEncode(p *wire.Packet) []byte {
	b, err := p.MarshalBinary()
	if err != nil {
		panic(err)
	}
	return b
}

// forgedRegistration is a Registration Request from nbma with cies CIEs
// for random tunnel addresses.
func forgedRegistration(rng *rand.Rand, nbma, hub netip.Addr, cies int) []byte {
	src := randomTunnel(rng)
	p := &wire.Packet{Type: wire.TypeRegistrationRequest, HopCount: 255, Flags: wire.RegFlagU, RequestID: rng.Uint32(),
		SrcNBMA: nbma, SrcProto: src, DstProto: hub}
	p.CIEs = make([]wire.CIE, cies)
	for i := range p.CIEs {
		p.CIEs[i] = wire.CIE{PrefixLen: 32, HoldingTime: 7200, Proto: src}
		if i > 0 {
			p.CIEs[i].Proto = randomTunnel(rng)
		}
	}
	return floodEncode(p)
}

// forgedResolution is a Resolution Request from nbma claiming a random
// source for a random target.
func forgedResolution(rng *rand.Rand, nbma, hub netip.Addr) []byte {
	return floodEncode(&wire.Packet{Type: wire.TypeResolutionRequest, HopCount: 255, RequestID: rng.Uint32(),
		SrcNBMA: nbma, SrcProto: randomTunnel(rng), DstProto: randomTunnel(rng),
		CIEs: []wire.CIE{{HoldingTime: 7200}}})
}

// forgedPurge is a Purge Request from nbma of a legitimate spoke's address,
// or (one in four) of the /16 they are all in.
func forgedPurge(rng *rand.Rand, nbma, hub netip.Addr) []byte {
	proto, _ := benchSpoke(rng.IntN(floodLegit))
	bits := uint8(32)
	if rng.IntN(4) == 0 {
		bits = 16
	}
	return floodEncode(&wire.Packet{Type: wire.TypePurgeRequest, HopCount: 255, RequestID: rng.Uint32(),
		SrcNBMA: nbma, SrcProto: randomTunnel(rng), DstProto: hub,
		CIEs: []wire.CIE{{PrefixLen: bits, Proto: proto}}})
}
