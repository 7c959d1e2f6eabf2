//go:build linux

package firewall

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/opendmvpn/dmvpn/internal/netnstest"
)

// inNetns runs fn on a thread of its own inside the named namespace; the
// thread dies with it and never serves another goroutine. Sockets fn
// opens stay in that namespace.
func inNetns(t *testing.T, ns string, fn func() error) error {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits
		f, err := os.Open("/run/netns/" + ns)
		if err != nil {
			errc <- err
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("entering %s: %w", ns, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// echoServer answers each connection with what it reads, until the test
// ends.
func echoServer(t *testing.T, ln net.Listener) {
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				io.Copy(c, c)
			}()
		}
	}()
}

// echoFrom dials addr from the namespace ns (the test's own when ns is
// empty) and checks that a message comes back.
func echoFrom(t *testing.T, ns, addr string) error {
	t.Helper()
	dial := func() error {
		c, err := net.DialTimeout("tcp4", addr, 2*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte("dmvpn\n")); err != nil {
			return err
		}
		buf := make([]byte, 6)
		if _, err := io.ReadFull(c, buf); err != nil {
			return fmt.Errorf("reading the echo: %w", err)
		}
		return nil
	}
	if ns == "" {
		return dial()
	}
	return inNetns(t, ns, dial)
}

// asymLab makes two hosts behind the router's tunnel stand-in gre1 (a
// veth to a bridge), on two subnets, so that their traffic crosses the
// router one way only, as a flow between two spokes crosses one hub and
// its reply another:
//
//	a 10.1.0.2 ──┐                  a → b: direct on the bridge
//	             br ── gre1 router  b → a: through the router
//	b 10.2.0.2 ──┘   (10.1.0.1, 10.2.0.1), in gre1 and out gre1
func asymLab(t *testing.T) (a, b string) {
	t.Helper()
	pid := os.Getpid()
	a, b, sw := fmt.Sprintf("fwasa%d", pid), fmt.Sprintf("fwasb%d", pid), fmt.Sprintf("fwassw%d", pid)
	for _, ns := range []string{a, b, sw} {
		sh(t, "ip", "netns", "add", ns)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
		sh(t, "ip", "-n", ns, "link", "set", "lo", "up")
	}
	sh(t, "ip", "-n", sw, "link", "add", "br0", "type", "bridge")
	sh(t, "ip", "-n", sw, "link", "set", "br0", "up")
	sh(t, "ip", "link", "add", "gre1", "type", "veth", "peer", "name", "p0", "netns", sw)
	for i, ns := range []string{a, b} {
		sh(t, "ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", fmt.Sprintf("p%d", i+1), "netns", sw)
	}
	for _, p := range []string{"p0", "p1", "p2"} {
		sh(t, "ip", "-n", sw, "link", "set", p, "master", "br0", "up")
	}
	for _, s := range []string{"net.ipv4.ip_forward=1", "net.ipv4.conf.all.send_redirects=0", "net.ipv4.conf.default.send_redirects=0",
		"net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"} {
		sh(t, "sysctl", "-qw", s)
	}
	sh(t, "ip", "addr", "add", "10.1.0.1/24", "dev", "gre1")
	sh(t, "ip", "addr", "add", "10.2.0.1/24", "dev", "gre1")
	sh(t, "ip", "link", "set", "gre1", "up")
	for _, h := range []struct{ ns, addr, route string }{
		{a, "10.1.0.2/24", "10.2.0.0/24 dev eth0"},     // b on the bridge
		{b, "10.2.0.2/24", "10.1.0.0/24 via 10.2.0.1"}, // a through the router
	} {
		for _, s := range []string{"net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0", "net.ipv4.conf.all.accept_redirects=0"} {
			sh(t, "ip", "netns", "exec", h.ns, "sysctl", "-qw", s)
		}
		sh(t, "ip", "-n", h.ns, "addr", "add", h.addr, "dev", "eth0")
		sh(t, "ip", "-n", h.ns, "link", "set", "eth0", "up")
		sh(t, append([]string{"ip", "-n", h.ns, "route", "add"}, strings.Fields(h.route)...)...)
	}
	return a, b
}

// A hub forwards the replies of flows whose requests it never saw: with
// two hubs a request may cross one and its reply the other. Here the
// replies from b to a cross the router alone. First the proof that the
// router's conntrack calls them invalid — a policy without the hub's
// exception (a spoke's) drops them at fwd_invalid and counts them — then
// the hub's policy: a's ping and a TCP connection to b both work, the
// replies accepted by fwd_tunnel_tunnel and none dropped as invalid.
func TestHubForwardsAsymmetricFlows(t *testing.T) {
	needNft(t)
	if !netnstest.Run(t, "fwasym") {
		return
	}
	a, b := asymLab(t)
	ctx := context.Background()
	k := NewKernelTable()
	policy := func(hub bool) Policy {
		return Policy{Config: Config{Internet: []string{"wan0"}, LAN: []string{"lan0"}},
			Facts: Facts{Tunnel: "gre1", TunnelMTU: 1400, Hub: hub}}
	}
	count := func(rule string) uint64 {
		t.Helper()
		cs, err := k.Counters(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return cs[rule].Packets
	}
	apply := func(p Policy) {
		t.Helper()
		rs, err := Build(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := k.Replace(ctx, rs); err != nil {
			t.Fatal(err)
		}
	}
	ping := func() error {
		out, err := exec.Command("ip", "netns", "exec", a, "ping", "-n", "-c", "1", "-W", "2", "10.2.0.2").CombinedOutput()
		if err != nil {
			return fmt.Errorf("%w: %s", err, out)
		}
		return nil
	}

	apply(policy(false))
	if err := ping(); err == nil {
		t.Fatal("a's ping to b came back through a router whose forward policy takes nothing from tunnel to tunnel")
	}
	if n := count("fwd_invalid"); n == 0 {
		t.Fatal("the echo reply crossed the router without being invalid to its conntrack: this topology shows nothing")
	}

	apply(policy(true))
	if err := ping(); err != nil {
		t.Errorf("the hub dropped the echo reply of a request it never saw: %v", err)
	}
	var ln net.Listener
	if err := inNetns(t, b, func() (err error) { ln, err = net.Listen("tcp4", "10.2.0.2:7007"); return err }); err != nil {
		t.Fatal(err)
	}
	echoServer(t, ln)
	if err := echoFrom(t, a, "10.2.0.2:7007"); err != nil {
		t.Errorf("TCP from a to b with the SYN-ACK crossing the hub alone: %v", err)
	}
	if n := count("fwd_tunnel_tunnel"); n == 0 {
		t.Error("fwd_tunnel_tunnel counted nothing: the replies did not cross the hub's policy")
	}
	if n := count("fwd_invalid") + count("fwd_invalid_out"); n != 0 {
		t.Errorf("the hub dropped %d packets as invalid", n)
	}
}

// The management ports (control API and metrics on TCP) are never
// reachable from the internet zone, even where a user rule accepts them:
// from the LAN the router's listener answers, from the internet another
// port a user rule opens answers (the path works), the management port
// does not, and in_management counts the attempt.
func TestManagementNeverFromInternet(t *testing.T) {
	needNft(t)
	if !netnstest.Run(t, "fwmgmt") {
		return
	}
	lan, inet := uplinkLab(t)
	ctx := context.Background()
	k := NewKernelTable()
	accept := func(port uint16) UserRule {
		return UserRule{From: ZoneInternet, To: ZoneLocal, Protocol: ProtoTCP, Ports: []uint16{port}, Action: VerdictAccept}
	}
	rs, err := Build(Policy{Config: Config{Internet: []string{"wan0"}, LAN: []string{"lan0"}, Rules: []UserRule{accept(9474), accept(2222)}},
		Facts: Facts{Tunnel: "gre1", TunnelMTU: 1400, ManagementPorts: []uint16{9474}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := k.Replace(ctx, rs); err != nil {
		t.Fatal(err)
	}
	for _, port := range []string{"9474", "2222"} {
		ln, err := net.Listen("tcp4", "0.0.0.0:"+port)
		if err != nil {
			t.Fatal(err)
		}
		echoServer(t, ln)
	}
	if err := echoFrom(t, lan, "10.9.0.1:9474"); err != nil {
		t.Fatalf("the management port from the LAN: %v", err)
	}
	if err := echoFrom(t, inet, "192.0.2.1:2222"); err != nil {
		t.Fatalf("a port a user rule opens, from the internet: %v", err)
	}
	err = echoFrom(t, inet, "192.0.2.1:9474")
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Errorf("the management port from the internet: %v, want no answer at all (a timeout)", err)
	}
	cs, err := k.Counters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if cs["in_management"].Packets == 0 {
		t.Error("in_management counted nothing")
	}
	if cs["user_1"].Packets != 0 {
		t.Errorf("the user's rule accepted %d packets to the management port from the internet", cs["user_1"].Packets)
	}
}

// In kernel IPsec mode GRE leaves only on a route with an IPsec transform.
// In dmvpnd the host's catch-all xfrm block policy refuses clear GRE
// before the output hook, so out_gre_clear is the second layer and counts
// nothing there (TestKernelFirewallInVM); here, without that policy, the
// kernel's own rule is shown to match: GRE to the internet is refused at
// sendto and counted, packet for packet, while UDP leaves.
func TestKernelModeGREOutOnlyUnderIPsec(t *testing.T) {
	needNft(t)
	if !netnstest.Run(t, "fwgreout") {
		return
	}
	uplinkLab(t)
	ctx := context.Background()
	k := NewKernelTable()
	rs, err := Build(Policy{Config: Config{Internet: []string{"wan0"}, LAN: []string{"lan0"}},
		Facts: Facts{Tunnel: "gre1", TunnelMTU: 1400, IPsec: IPsecKernel}})
	if err != nil {
		t.Fatal(err)
	}
	if err := k.Replace(ctx, rs); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_GRE)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	dst := &unix.SockaddrInet4{Addr: [4]byte{192, 0, 2, 2}}
	const n = 5
	for i := 0; i < n; i++ {
		// A keyless GRE header carrying IPv4, and a few bytes.
		if err := unix.Sendto(fd, []byte{0, 0, 0x08, 0, 0x45, 0, 0, 0}, 0, dst); !errors.Is(err, unix.EPERM) {
			t.Fatalf("GRE in clear: sendto %v, want EPERM (dropped in output)", err)
		}
	}
	u, err := net.Dial("udp4", "192.0.2.2:9")
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	if _, err := u.Write([]byte("udp")); err != nil {
		t.Errorf("UDP to the internet: %v (only GRE is held back)", err)
	}
	cs, err := k.Counters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := cs["out_gre_clear"].Packets; got != n {
		t.Errorf("out_gre_clear counted %d packets, want %d", got, n)
	}
}
