//go:build linux

package host_test

import (
	"context"
	"errors"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/opendmvpn/dmvpn/host"
	"github.com/opendmvpn/dmvpn/internal/leakcheck"
	"github.com/opendmvpn/dmvpn/internal/netnstest"
)

func sh(t *testing.T, cmd string) string {
	t.Helper()
	out, err := exec.Command("sh", "-c", cmd).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", cmd, err, out)
	}
	return string(out)
}

// netnsTopology: an uplink wan0 (198.51.100.1/24, its gateway's
// neighbour entry static, no IPv6: only what the test sends leaves), a
// second uplink wan1 and a tunnel stand-in gre1.
func netnsTopology(t *testing.T) {
	sh(t, `set -e
for l in wan0 wan1 gre1; do ip link add $l type veth peer name ${l}p; done
sysctl -qw net.ipv6.conf.wan0.disable_ipv6=1 net.ipv6.conf.wan0p.disable_ipv6=1
for l in wan0 wan0p wan1 wan1p gre1 gre1p; do ip link set $l up; done
ip addr add 198.51.100.1/24 dev wan0
ip addr add 203.0.113.1/24 dev wan1
ip addr add 10.0.0.254/24 dev gre1
ip -6 addr add 2001:db8:ff::1/64 dev gre1 nodad
ip neigh replace 198.51.100.254 lladdr 02:00:00:00:00:01 dev wan0 nud permanent
ip route add default via 198.51.100.254
ip rule add pref 220 not fwmark 0x42 lookup 220`)
}

// state is what iproute2 and nft show of the host state.
func state(t *testing.T) string {
	return sh(t, "ip rule; ip -6 rule; ip -N route show table all; ip -N -6 route show table all; ip xfrm policy; nft list tables; sysctl net.ipv4.conf.all.rp_filter net.ipv4.fib_multipath_hash_policy net.ipv4.conf.all.send_redirects")
}

// TestNetnsSetThenClose: every kind of entry, for five clients at once,
// set in a namespace's kernel, set again (no change), then closed:
// `ip rule`, `ip route show table all`, `ip xfrm policy`, the nftables
// tables and the restored sysctls are exactly as before.
func TestNetnsSetThenClose(t *testing.T) {
	if !netnstest.Run(t, "dmvh") {
		return
	}
	netnsTopology(t)
	ctx := context.Background()
	before := state(t)
	var changes []string
	var mu sync.Mutex
	m, err := host.New(host.Options{Changed: func(o, c string) { mu.Lock(); changes = append(changes, o+": "+c); mu.Unlock() }})
	must(t, err)
	up := uplinkConfig("wan0", "wan1")
	// The uplinks' gateways in this namespace.
	up.Routes[0].NextHops[0].Gw, up.Routes[2].NextHops[0].Gw = addr("198.51.100.254"), addr("198.51.100.254")
	up.Routes[1].NextHops[0].Gw, up.Routes[2].NextHops[1].Gw = addr("203.0.113.254"), addr("203.0.113.254")
	bgp := bgpConfig(3, 1)
	bgp.Routes[2].NextHops[0].Gw = addr("2001:db8:ff::2")
	cfgs := map[string]*host.Config{}
	clients := map[string]*host.Client{}
	for _, x := range []struct {
		o   host.Owner
		cfg *host.Config
	}{
		{ipsecOwner, func() *host.Config { c := userspaceProtection(); c.Xfrm = kernelProtection(0x7fffffff).Xfrm; return c }()},
		{daemonOwner, &host.Config{Rules: daemonConfig(42).Rules, Sysctls: []host.Sysctl{{Key: "net/ipv4/conf/all/send_redirects", Value: "0", Restore: true}}}},
		{bgpOwner, bgp},
		{uplinkOwner, up},
		{fwOwner, firewallConfig("1")},
	} {
		c := client(t, m, x.o)
		clients[x.o.Name] = c
		if err := c.Set(ctx, x.cfg); err != nil {
			t.Fatalf("%s: %v", x.o.Name, err)
		}
		cfgs[x.o.Name] = x.cfg
	}
	during := state(t)
	for _, want := range []string{"221:\tfrom all ipproto gre prohibit", "219:\tnot from all ipproto gre goto 222", "1000:\tfrom all lookup 42",
		"100:\tfrom all fwmark 0x100/0xff00 lookup 101", "default proto 187 \n\tnexthop via 198.51.100.254 dev wan0 weight 1",
		"10.9.0.0/16 proto 186 \n\tnexthop via 10.0.0.1 dev gre1 weight 3 onlink", "10.1.0.0/24 via 10.0.0.11 dev gre1 proto 186 onlink",
		"2001:db8:1::/48 via 2001:db8:ff::2 dev gre1 proto 186", "default via 203.0.113.254 dev wan1 table 102 proto 187",
		"proto gre \n\tdir out action block priority 2147483647", "table inet dmvpn", "net.ipv4.fib_multipath_hash_policy = 1"} {
		if !strings.Contains(during, want) {
			t.Errorf("after Set, no %q in:\n%s", want, during)
		}
	}
	n := len(changes)
	for name, cfg := range cfgs {
		must(t, clients[name].Set(ctx, cfg))
	}
	if len(changes) != n {
		t.Errorf("the same configurations again changed the kernel: %q", changes[n:])
	}
	for _, c := range clients {
		must(t, c.Close(ctx))
	}
	if after := state(t); after != before {
		t.Errorf("after Close:\n%s\nbefore Set:\n%s", after, before)
	}
}

// TestNetnsNoInstantWithoutProtection races GRE packets against Set: a
// goroutine sends GRE toward a peer as fast as it can while the ipsec
// client goes through every transition (userspace rules replaced,
// kernel-mode catch-all policies added and re-prioritised, back to
// rules, a restart adopting): not one packet leaves in clear, counted on
// the uplink, which first proves it counts the sender's packets.
func TestNetnsNoInstantWithoutProtection(t *testing.T) {
	if !netnstest.Run(t, "dmvg") {
		return
	}
	netnsTopology(t)
	ctx := context.Background()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_GRE)
	must(t, err)
	defer unix.Close(fd)
	peer := &unix.SockaddrInet4{Addr: [4]byte{192, 0, 2, 9}}
	send := func() error { return unix.Sendto(fd, []byte{0, 0, 0x08, 0}, 0, peer) }
	tx := func() string { return strings.TrimSpace(sh(t, "cat /sys/class/net/wan0/statistics/tx_packets")) }
	// The watcher sees GRE in clear when nothing protects it.
	t0 := tx()
	for range 10 {
		must(t, send())
	}
	if t1 := tx(); t1 == t0 {
		t.Fatalf("10 GRE packets sent in clear but wan0's tx_packets stayed %s", t1)
	}

	m, err := host.New(host.Options{})
	must(t, err)
	own := host.Owner{Name: "ipsec", RulePriorities: []int{219, 221, 222}, XfrmPriorities: []uint32{0x7fffffff, 0x7ffffffe}}
	c := client(t, m, own)
	must(t, c.Set(ctx, userspaceProtection()))

	start := tx()
	var sent, refused atomic.Int64
	var otherErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			switch err := send(); {
			case err == nil:
				sent.Add(1)
			case errors.Is(err, unix.EACCES), errors.Is(err, unix.EPERM), errors.Is(err, unix.EINVAL):
				refused.Add(1)
			default:
				otherErr.Store(err)
			}
		}
	}()
	drop := userspaceProtection()
	drop.Rules[2].Action = host.Blackhole
	both := userspaceProtection()
	both.Xfrm = kernelProtection(0x7ffffffe).Xfrm
	rounds := 0
	for refused.Load() < 20000 || rounds < 20 {
		for _, cfg := range []*host.Config{drop, userspaceProtection(), kernelProtection(0x7fffffff),
			kernelProtection(0x7ffffffe), both, userspaceProtection()} {
			if err := c.Set(ctx, cfg); err != nil {
				close(stop)
				wg.Wait()
				t.Fatal(err)
			}
		}
		// A restart: the next run adopts what the last one left.
		c.Leave()
		m, err = host.New(host.Options{})
		must(t, err)
		c = client(t, m, own)
		must(t, c.Set(ctx, userspaceProtection()))
		rounds++
	}
	close(stop)
	wg.Wait()
	if e := otherErr.Load(); e != nil {
		t.Errorf("send: %v", e)
	}
	end := tx()
	t.Logf("%d rounds of transitions, %d GRE sends refused, %d sent, wan0 tx %s → %s", rounds, refused.Load(), sent.Load(), start, end)
	if sent.Load() != 0 || end != start {
		t.Errorf("GRE left in clear during Set: %d sends succeeded, wan0 tx_packets %s → %s", sent.Load(), start, end)
	}
	must(t, c.Close(ctx))
	if err := send(); err != nil {
		t.Errorf("after Close GRE is still refused: %v", err)
	}
}

// TestNetnsRouteCache: routes added and deleted by another program reach
// the cache through route events, in any table; Close stops its
// goroutines.
func TestNetnsRouteCache(t *testing.T) {
	if !netnstest.Run(t, "dmvc") {
		return
	}
	leakcheck.Check(t)
	netnsTopology(t)
	ctx := context.Background()
	c, err := host.NewRouteCache(ctx)
	must(t, err)
	defer c.Close()
	// What was there before it started: the dump.
	if r, ok, _ := c.Lookup(ctx, addr("192.0.2.9"), host.Main); !ok || r.NextHops[0].Gw != addr("198.51.100.254") {
		t.Fatalf("the default route from the dump: %v %v", r, ok)
	}
	wait := func(what string, f func() bool) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for !f() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not seen in 5 s", what)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	sh(t, "ip route add 10.5.0.0/16 via 10.0.0.7 dev gre1 onlink table 42 proto 42")
	wait("a route added in table 42", func() bool {
		r, ok, _ := c.Lookup(ctx, addr("10.5.1.1"), 42, host.Main)
		return ok && r.Table == 42 && r.Protocol == 42 && r.NextHops[0].Onlink
	})
	sh(t, "ip route replace 10.5.0.0/16 via 10.0.0.8 dev gre1 onlink table 42 proto 42")
	wait("the route replaced", func() bool {
		r, ok, _ := c.Lookup(ctx, addr("10.5.1.1"), 42)
		return ok && r.NextHops[0].Gw == addr("10.0.0.8")
	})
	sh(t, "ip route del 10.5.0.0/16 table 42")
	wait("the route deleted", func() bool {
		r, ok, _ := c.Lookup(ctx, addr("10.5.1.1"), 42, host.Main)
		return ok && r.Dst.Bits() == 0 // the default route of main again
	})
}
