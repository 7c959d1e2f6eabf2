package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/opendmvpn/dmvpn/bgp"
	"github.com/opendmvpn/dmvpn/daemon"
	"github.com/opendmvpn/dmvpn/host"
	"github.com/opendmvpn/dmvpn/lab/testbed"
	"github.com/opendmvpn/dmvpn/nhrp"
)

// Our hub: the BGP controller on GoBGP with its routes through host, as
// dmvpnd wires them (daemon/bgp.go), fed the NHRP engine's events; the
// spokes' certificates say AS and networks.

// hubTunnel is the hub's tunnel address and network.
var hubTunnel = netip.MustParsePrefix("172.16.0.1/16")

// summary is what the hub announces to the spokes (phase 3).
var summary = netip.MustParsePrefix("10.0.0.0/8")

// bgpProto is the kernel route protocol of BGP's routes (dmvpnd's default
// and zebra's).
const bgpProto = 186

// registry stands for the NHRP engine: the registrations it reported as
// events are in its cache (the controller reads it at its periodic
// resynchronisation).
type registry struct {
	mu  sync.Mutex
	reg map[int]bool
}

func (r *registry) set(i int, on bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if on {
		r.reg[i] = true
	} else {
		delete(r.reg, i)
	}
}

func (r *registry) Cache(context.Context) ([]nhrp.CacheEntry, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]nhrp.CacheEntry, 0, len(r.reg))
	for i := range r.reg {
		ev := registered(i)
		out = append(out, nhrp.CacheEntry{Type: nhrp.TypeDynamic, Proto: ev.Proto, NBMA: ev.NBMA, Flags: []string{"registered"},
			Identity: ev.Identity, Attrs: ev.Attrs})
	}
	return out, nil
}

// Lookup finds one registration (a scan: the benchmark replaces none).
func (r *registry) Lookup(ctx context.Context, p netip.Prefix) (nhrp.CacheEntry, bool, error) {
	all, _ := r.Cache(ctx)
	for _, e := range all {
		if e.Proto == p {
			return e, true, nil
		}
	}
	return nhrp.CacheEntry{}, false, nil
}

func (r *registry) NHS(context.Context) ([]nhrp.NHSStatus, error) { return nil, nil }

// registered is the engine's event for spoke i's authorised registration,
// with its certificate's fields.
func registered(i int) nhrp.Event {
	if i == bulkSpoke {
		return nhrp.Event{Kind: nhrp.EventRegistered, Proto: netip.PrefixFrom(spokeAddr(i), 32), NBMA: spokeAddr(i),
			Identity: "C=FI, O=bench, CN=bulk", Attrs: map[string][]string{"AS": {strconv.Itoa(int(spokeAS(i)))}, "NET": {bulkNet.String()}}}
	}
	return nhrp.Event{Kind: nhrp.EventRegistered, Proto: netip.PrefixFrom(spokeAddr(i), 32), NBMA: spokeAddr(i),
		Identity: fmt.Sprintf("C=FI, O=bench, OU=GRE=%s, OU=AS=%d, OU=NET=%s, CN=spoke%d", spokeAddr(i), spokeAS(i), spokeNet(i), i),
		Attrs:    map[string][]string{"GRE": {spokeAddr(i).String()}, "AS": {strconv.Itoa(int(spokeAS(i)))}, "NET": {spokeNet(i).String()}}}
}

// memReport is the answer to MEM.
type memReport struct {
	RSS  int64  `json:"rss"`
	Heap uint64 `json:"heap"`
}

// runHub is our hub role: commands on standard input register and expire
// spokes, report memory and time a FIB write of its own.
func runHub() int {
	dev := os.Getenv(envDev)
	if path := os.Getenv(envProfile); path != "" {
		f, err := os.Create(path)
		if err != nil {
			fmt.Println("FATAL", err)
			return 1
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Println("FATAL", err)
			return 1
		}
		defer pprof.StopCPUProfile()
		runtime.SetMutexProfileFraction(10)
		runtime.SetBlockProfileRate(int(100 * time.Microsecond))
		defer func() {
			for _, name := range []string{"mutex", "block"} {
				if f, err := os.Create(path + "." + name); err == nil {
					_ = pprof.Lookup(name).WriteTo(f, 0)
					f.Close()
				}
			}
		}()
	}
	m, err := host.New(host.Options{})
	if err != nil {
		fmt.Println("FATAL", err)
		return 1
	}
	hc, err := m.Client(host.Owner{Name: "bgp", RouteProtocol: bgpProto})
	if err != nil {
		fmt.Println("FATAL", err)
		return 1
	}
	// DMVPN phase 3 as the lab runs it: the hub originates the summary
	// of the spokes' networks toward the spokes instead of their routes.
	reg := &registry{reg: map[int]bool{}}
	cfg := bgp.Config{Role: bgp.RoleHub, Tunnel: hubTunnel, UseCertificates: true, Summary: []netip.Prefix{summary},
		MaxPrefixes: maxBulk, Keepalive: 30 * time.Second, Hold: 90 * time.Second, ConnectRetry: 5 * time.Second}
	c, err := bgp.NewController(cfg, bgp.Deps{Speaker: bgp.NewGoBGP(hubLogger()), Routes: daemon.BGPRoutes(hc, m.Kernel(), dev, bgpProto), NHRP: reg})
	if err != nil {
		fmt.Println("FATAL", err)
		return 1
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	<-c.Started()
	fmt.Println("READY")
	readCommands(func(cmd string, arg func(int) int) {
		switch cmd {
		case "REG":
			for i := arg(1); i < arg(2); i++ {
				reg.set(i, true)
				c.Event(registered(i))
			}
		case "EXPIRE":
			reg.set(arg(1), false)
			c.Event(nhrp.Event{Kind: nhrp.EventExpired, Proto: netip.PrefixFrom(spokeAddr(arg(1)), 32), Cause: nhrp.CauseExpired})
		case "MEM":
			runtime.GC()
			debug.FreeOSMemory()
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			b, _ := json.Marshal(memReport{RSS: testbed.RSS(os.Getpid()), Heap: ms.HeapAlloc})
			fmt.Println("MEM " + string(b))
		case "STAT":
			st := c.Stats()
			up, acc := 0, 0
			if sum, err := c.Summary(ctx); err == nil {
				for _, n := range sum.Neighbors {
					if n.State == bgp.StateEstablished {
						up++
					}
					acc += n.Accepted
				}
			}
			fmt.Printf("STAT established %d, prefixes accepted %d, kernel writes %d (%d failed), routes in the last %d\n",
				up, acc, st.FIBUpdates, st.FIBErrors, st.FIBRoutes)
		case "FIB":
			rate, err := fibAlone(ctx, m, dev, arg(1))
			if err != nil {
				fmt.Println("ERR fib:", err)
				return
			}
			fmt.Printf("FIB %.0f\n", rate)
		default:
			fmt.Printf("ERR unknown command %q\n", cmd)
		}
	})
	cancel()
	err = <-done
	_ = hc.Close(context.Background())
	if err != nil {
		fmt.Println("FATAL", err)
		return 1
	}
	return 0
}

// fibAlone writes n routes through host in one Set, as the controller
// hands them over, and returns the routes per second; then removes them.
func fibAlone(ctx context.Context, m *host.Manager, dev string, n int) (float64, error) {
	fc, err := m.Client(host.Owner{Name: "bench", RouteProtocol: bgpProto + 1})
	if err != nil {
		return 0, err
	}
	routes := make([]host.Route, 0, n)
	for i := range n {
		dst := netip.PrefixFrom(netip.AddrFrom4([4]byte{100, byte(64 + i/65536), byte(i / 256 % 256), byte(i % 256)}), 32)
		routes = append(routes, host.Route{Table: host.Main, Dst: dst,
			NextHops: []host.NextHop{{Gw: spokeAddr(i % 1000), Dev: dev, Onlink: true}}})
	}
	t0 := time.Now()
	if err := fc.Set(ctx, &host.Config{Routes: routes}); err != nil {
		_ = fc.Close(ctx)
		return 0, err
	}
	rate := float64(n) / time.Since(t0).Seconds()
	return rate, fc.Close(ctx)
}

// hubLogger logs GoBGP's warnings to the output when BENCHBGP_LOG is set.
func hubLogger() *zap.Logger {
	if os.Getenv("BENCHBGP_LOG") == "" {
		return zap.NewNop()
	}
	l, _ := zap.NewDevelopment()
	return l
}
