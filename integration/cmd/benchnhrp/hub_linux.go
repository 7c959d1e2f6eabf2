package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/opendmvpn/dmvpn/daemon"
	"github.com/opendmvpn/dmvpn/gre"
	"github.com/opendmvpn/dmvpn/gre/backend"
	"github.com/opendmvpn/dmvpn/ipsec"
	"github.com/opendmvpn/dmvpn/lab/testbed"
	"github.com/opendmvpn/dmvpn/nhrp"
)

// runHub is the hub child: the daemon with a hub configuration on the
// userspace data plane. It prints READY, then answers MEM lines on its
// standard input with its memory use and registration count.
func runHub() int {
	if os.Getenv("BENCHNHRP_HEAP") != "" {
		// Every 4 KiB allocated sampled (the default is 512 KiB): the
		// state per SA is a few KiB.
		runtime.MemProfileRate = 4096
	}
	cfg := daemon.Config{
		Node:       "hub",
		Tunnel:     gre.Config{Name: "dmvpn0", Key: greKey, Prefix: netip.PrefixFrom(hubProto, 8), Local: hubNBMA},
		Dataplane:  backend.Userspace,
		NHRP:       nhrp.Config{Role: nhrp.RoleHub, HoldingTime: 7200 * time.Second},
		Policy:     daemon.Policy{AllowAll: true},
		Forwarding: true,
		IPsecOff:   true, // unless BENCHNHRP_IPSEC, below
	}
	if dir := os.Getenv("BENCHNHRP_IPSEC"); dir != "" {
		cfg.IPsecOff = false
		// The hub's dead peer detection as dmvpnd's configuration gives a
		// hub by default.
		cfg.IPsec = &ipsec.Config{Mode: ipsec.ModeUserspace, Managed: true, Dir: filepath.Join(dir, "state-hub"), DPDDelay: ipsec.DefaultHubDPDDelay,
			CACerts: []string{filepath.Join(dir, "ca.crt")}, Cert: filepath.Join(dir, "hub.crt"), Key: filepath.Join(dir, "hub.key")}
	}
	log, _ := zap.NewProduction()
	d, err := daemon.New(cfg, log.WithOptions(zap.IncreaseLevel(zap.WarnLevel)))
	if err != nil {
		fmt.Println("FATAL", err)
		return 1
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- d.Run(ctx) }()
	select {
	case <-d.Ready():
	case err := <-errc:
		fmt.Println("FATAL", err)
		return 1
	}
	if path := os.Getenv("BENCHNHRP_PROFILE"); path != "" {
		if f, err := os.Create(path); err == nil {
			pprof.StartCPUProfile(f)
			defer func() { pprof.StopCPUProfile(); f.Close() }()
		}
	}
	fmt.Println("READY")
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		if sc.Text() == "KILLCHARON" {
			// The hub's charon dies; the manager restarts it.
			if m := d.IPsec(); m != nil && m.Stats().CharonPID != 0 {
				syscall.Kill(m.Stats().CharonPID, syscall.SIGKILL)
				fmt.Printf("KILLED %d\n", time.Now().UnixNano())
			} else {
				fmt.Println("KILLED 0")
			}
			continue
		}
		if path, ok := strings.CutPrefix(sc.Text(), "HEAP "); ok {
			// A heap profile (in use after a collection), for the
			// memory per SA.
			runtime.GC()
			if f, err := os.Create(path); err == nil {
				pprof.WriteHeapProfile(f)
				f.Close()
			}
			fmt.Println("HEAPED")
			continue
		}
		if sc.Text() == "DUMP" {
			// For a failed run: the engine's peers and the SAs.
			ps, _ := d.Engine().Peers(ctx)
			b, _ := json.Marshal(ps)
			fmt.Println("DUMP peers " + string(b))
			tr, _ := d.Engine().Traffic(ctx)
			b, _ = json.Marshal(tr)
			fmt.Println("DUMP traffic " + string(b))
			if dev := d.Device(); dev != nil {
				b, _ = json.Marshal(dev.Counters().Drops)
				fmt.Println("DUMP drops " + string(b))
			}
			if m := d.IPsec(); m != nil {
				sas, err := m.SAs(ctx)
				b, _ = json.Marshal(sas)
				fmt.Println("DUMP sas", err, string(b))
			}
			continue
		}
		if sc.Text() != "MEM" {
			continue
		}
		n := 0
		if st, err := d.Engine().Status(ctx); err == nil {
			n = st.Entries - 1 // less the hub's own address
		}
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		var tr nhrp.Traffic
		if t, err := d.Engine().Traffic(ctx); err == nil {
			tr = t
		}
		var dp gre.Counters
		if dev := d.Device(); dev != nil {
			dp = dev.Counters()
		}
		var charonRSS int64
		var charonCPU time.Duration
		if m := d.IPsec(); m != nil {
			charonRSS = testbed.RSS(m.Stats().CharonPID)
			charonCPU = cpuOf(m.Stats().CharonPID)
		}
		b, _ := json.Marshal(memory{RSS: rss(), CharonRSS: charonRSS, CharonCPU: charonCPU, CPU: cpuOf(os.Getpid()), Heap: ms.HeapInuse, Entries: n,
			RegRecv: tr.Received["Registration Request"], RegSent: tr.Sent["Registration Reply"], Drops: dp.Drops, NHRPRx: dp.NHRPRx})
		fmt.Println("MEM " + string(b))
	}
	cancel()
	<-errc
	return 0
}

// rss returns the process's resident set size in bytes.
func rss() int64 { return testbed.RSS(os.Getpid()) }
