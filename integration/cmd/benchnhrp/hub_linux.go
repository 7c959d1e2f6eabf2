package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/opendmvpn/dmvpn/gre"
	"github.com/opendmvpn/dmvpn/gre/backend"
	"github.com/opendmvpn/dmvpn/internal/daemon"
	"github.com/opendmvpn/dmvpn/nhrp"
)

// runHub is the hub child: the daemon with a hub configuration on the
// userspace data plane. It prints READY, then answers MEM lines on its
// standard input with its memory use and registration count.
func runHub() int {
	cfg := daemon.Config{
		Node:       "hub",
		Tunnel:     gre.Config{Name: "dmvpn0", Key: greKey, Prefix: netip.PrefixFrom(hubProto, 16), Local: hubNBMA},
		Dataplane:  backend.Userspace,
		NHRP:       nhrp.Config{Role: nhrp.RoleHub, HoldingTime: 7200 * time.Second},
		Policy:     daemon.Policy{AllowAll: true},
		Forwarding: true,
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
		b, _ := json.Marshal(memory{RSS: rss(), Heap: ms.HeapInuse, Entries: n,
			RegRecv: tr.Received["Registration Request"], RegSent: tr.Sent["Registration Reply"], Drops: dp.Drops, NHRPRx: dp.NHRPRx})
		fmt.Println("MEM " + string(b))
	}
	cancel()
	<-errc
	return 0
}

// rss returns the process's resident set size in bytes.
func rss() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb * 1024
		}
	}
	return 0
}
