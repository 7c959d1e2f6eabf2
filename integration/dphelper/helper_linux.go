package dphelper

import (
	"bufio"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"syscall"

	"github.com/opendmvpn/dmvpn/gre"
	"github.com/opendmvpn/dmvpn/gre/backend"
)

// MaybeRun returns at once unless this process was started as a helper;
// then it runs the helper and exits.
func MaybeRun() {
	raw, ok := os.LookupEnv(EnvVar)
	if !ok {
		return
	}
	if err := serve(raw); err != nil {
		fmt.Fprintln(os.Stdout, "FATAL", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// openFunc opens the backend a helper asks for through the chooser the
// daemon uses (default userspace).
func openFunc(cfg Config, g gre.Config) (gre.Device, string, error) {
	name := cfg.Backend
	if name == "" {
		name = string(backend.Userspace)
	}
	kind, err := backend.ParseKind(name)
	if err != nil {
		return nil, "", err
	}
	return backend.Open(g, kind)
}

func serve(raw string) error {
	var cfg Config
	if err := json.Unmarshal([]byte(raw), &cfg); err != nil {
		return fmt.Errorf("dphelper: config: %w", err)
	}
	g, err := cfg.greConfig()
	if err != nil {
		return err
	}
	if len(cfg.RefuseIngress) > 0 {
		refused := map[int]bool{}
		for _, name := range cfg.RefuseIngress {
			ifi, err := net.InterfaceByName(name)
			if err != nil {
				return fmt.Errorf("dphelper: refuse ingress %s: %w", name, err)
			}
			refused[ifi.Index] = true
		}
		g.AcceptIngress = func(ifindex int) bool { return !refused[ifindex] }
	}
	if cfg.CPUProfile != "" {
		f, err := os.Create(cfg.CPUProfile)
		if err != nil {
			return fmt.Errorf("dphelper: profile: %w", err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("dphelper: profile: %w", err)
		}
		defer func() {
			pprof.StopCPUProfile()
			f.Close()
		}()
	}
	dev, reason, err := openFunc(cfg, g)
	if err != nil {
		return err
	}
	var outMu sync.Mutex
	say := func(format string, args ...any) {
		outMu.Lock()
		defer outMu.Unlock()
		fmt.Fprintf(os.Stdout, format+"\n", args...)
	}
	ctx := context.Background()
	if err := configure(ctx, dev, cfg); err != nil {
		dev.Close()
		return err
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for m := range dev.Misses() {
			dst := "-" // the kernel backend does not know the destination
			if m.Dst.IsValid() {
				dst = m.Dst.String()
			}
			say("%s%s %s", lineMiss, m.NextHop, dst)
		}
	}()
	go func() {
		defer wg.Done()
		b := make([]byte, 65535)
		for {
			n, from, err := dev.ReadNHRP(b)
			if err != nil {
				return
			}
			say("%s%s %s", lineNHRP, from, hex.EncodeToString(b[:n]))
		}
	}()
	info, _ := json.Marshal(dev.Info())
	say("%s%s", lineBackend, reason)
	say("%s%s", lineReady, info)

	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
loop:
	for {
		select {
		case <-sigs:
			break loop
		case l, ok := <-lines:
			if !ok {
				break loop
			}
			id, reply := command(ctx, dev, l)
			if id == "" {
				break loop
			}
			say("%s%s %s", lineReply, id, reply)
		}
	}
	err = dev.Close()
	wg.Wait()
	return err
}

func configure(ctx context.Context, dev gre.Device, cfg Config) error {
	for p, n := range cfg.Neighbors {
		if err := setNeighbor(ctx, dev, p, n); err != nil {
			return err
		}
	}
	for _, r := range cfg.Routes {
		gr, err := parseRoute(r)
		if err != nil {
			return err
		}
		if err := dev.ReplaceRoute(ctx, gr); err != nil {
			return err
		}
	}
	if len(cfg.Multicast) > 0 {
		var l []netip.Addr
		for _, s := range cfg.Multicast {
			a, err := netip.ParseAddr(s)
			if err != nil {
				return fmt.Errorf("dphelper: multicast: %w", err)
			}
			l = append(l, a)
		}
		if err := dev.SetMulticast(l); err != nil {
			return err
		}
	}
	return nil
}

func setNeighbor(ctx context.Context, dev gre.Device, proto, nbma string) error {
	p, err := netip.ParseAddr(proto)
	if err != nil {
		return fmt.Errorf("dphelper: neighbour: %w", err)
	}
	n, err := netip.ParseAddr(nbma)
	if err != nil {
		return fmt.Errorf("dphelper: neighbour: %w", err)
	}
	return dev.SetNeighbor(ctx, gre.Neighbor{Proto: p, NBMA: n, Static: true})
}

func parseRoute(r Route) (gre.Route, error) {
	dst, err := netip.ParsePrefix(r.Dst)
	if err != nil {
		return gre.Route{}, fmt.Errorf("dphelper: route: %w", err)
	}
	gr := gre.Route{Dst: dst, Table: r.Table}
	if r.Via != "" {
		if gr.Via, err = netip.ParseAddr(r.Via); err != nil {
			return gr, fmt.Errorf("dphelper: route via: %w", err)
		}
	}
	return gr, nil
}

// command runs one "<id> <verb> args…" line; an empty id means quit.
func command(ctx context.Context, dev gre.Device, line string) (string, string) {
	f := strings.Fields(line)
	if len(f) < 2 || f[1] == "quit" {
		return "", ""
	}
	id, verb, args := f[0], f[1], f[2:]
	fail := func(err error) (string, string) { return id, replyErr + " " + err.Error() }
	switch {
	case verb == "counters":
		return id, replyCounter + " " + encodeCounters(dev.Counters())
	case verb == "neigh" && len(args) == 2:
		if err := setNeighbor(ctx, dev, args[0], args[1]); err != nil {
			return fail(err)
		}
	case verb == "delneigh" && len(args) == 1:
		p, err := netip.ParseAddr(args[0])
		if err != nil {
			return fail(err)
		}
		if err := dev.DeleteNeighbor(ctx, p); err != nil {
			return fail(err)
		}
	case verb == "neighbors":
		ns, err := dev.Neighbors(ctx)
		if err != nil {
			return fail(err)
		}
		var parts []string
		for _, n := range ns {
			parts = append(parts, n.Proto.String()+"="+n.NBMA.String())
		}
		slices.Sort(parts)
		return id, replyOK + " " + strings.Join(parts, ",")
	case verb == "nhrp" && len(args) == 2:
		to, err := netip.ParseAddr(args[0])
		if err != nil {
			return fail(err)
		}
		b, err := hex.DecodeString(args[1])
		if err != nil {
			return fail(err)
		}
		if err := dev.WriteNHRP(b, to); err != nil {
			return fail(err)
		}
	default:
		return fail(fmt.Errorf("unknown command %q", line))
	}
	return id, replyOK
}
