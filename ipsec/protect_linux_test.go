//go:build linux

package ipsec

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/opendmvpn/dmvpn/host"
	"github.com/opendmvpn/dmvpn/internal/leakcheck"
	"github.com/opendmvpn/dmvpn/internal/netnstest"
)

// inNetns runs the calling test again in a fresh network namespace and
// returns true in the child, where the test body runs.
func inNetns(t *testing.T) bool {
	t.Helper()
	return netnstest.Run(t, "dmvi")
}

func sh(t *testing.T, cmd string) string {
	t.Helper()
	out, err := exec.Command("sh", "-c", cmd).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", cmd, err, out)
	}
	return string(out)
}

// TestProtectUserspace checks the routing that userspace mode sets up
// around charon's table 220: GRE to a peer with an SA goes into the ipsec
// TUN, GRE to a peer without one is prohibited (never in clear), other
// traffic to a peer's NBMA address uses main, and inner traffic still
// reaches the rules after charon's (the shortcut table's).
func TestProtectUserspace(t *testing.T) {
	if !inNetns(t) {
		return
	}
	// What charon and the NHRP engine would have: the TUN, charon's rule
	// and table, a shortcut rule and table.
	sh(t, `ip link set lo up
ip link add wan0 type veth peer name wan0p && ip link set wan0 up && ip link set wan0p up
ip link add ipsec0 type veth peer name ipsec0p && ip link set ipsec0 up && ip link set ipsec0p up
ip addr add 198.51.100.1/24 dev wan0
ip route add default via 198.51.100.254
ip route add 10.0.0.0/8 via 198.51.100.253
ip rule add pref 220 not fwmark 0x42 lookup 220
ip route add 192.0.2.1 dev ipsec0 table 220
ip rule add pref 1000 lookup 42
ip route add 10.2.0.0/24 via 198.51.100.252 table 42`)
	m, err := host.New(host.Options{})
	if err != nil {
		t.Fatal(err)
	}
	c, err := m.Client(ProtectionOwner)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := Protection(ModeUserspace)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Set(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	get := func(args string) string {
		out, _ := exec.Command("sh", "-c", "ip route get "+args).CombinedOutput()
		return string(out)
	}
	// The kernel answers route queries for TCP, UDP and ICMP only: GRE
	// is sent for real.
	txIPsec := func() string { return strings.TrimSpace(sh(t, "cat /sys/class/net/ipsec0/statistics/tx_packets")) }
	before := txIPsec()
	if err := sendGRE(t, [4]byte{192, 0, 2, 1}); err != nil {
		t.Errorf("GRE to a peer with an SA: %v", err)
	}
	if txIPsec() == before {
		t.Error("GRE to a peer with an SA did not go into the ipsec TUN")
	}
	if err := sendGRE(t, [4]byte{192, 0, 2, 9}); err != unix.EACCES {
		t.Errorf("GRE to a peer without an SA: %v, want EACCES (prohibited)", err)
	}
	for _, c := range []struct{ args, want string }{
		{"192.0.2.1 ipproto icmp", "via 198.51.100.254 dev wan0"}, // ping to the peer: main
		{"192.0.2.1 ipproto udp dport 4500", "via 198.51.100.254 dev wan0"},
		{"10.2.0.2 ipproto icmp", "via 198.51.100.252"}, // shortcut table
		{"10.3.0.2 ipproto icmp", "via 198.51.100.253"}, // main
	} {
		if got := get(c.args); !strings.Contains(got, c.want) {
			t.Errorf("ip route get %s: %q, want %q", c.args, strings.TrimSpace(got), c.want)
		}
	}
	if err := c.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	rules := sh(t, "ip rule")
	for _, p := range []string{"219:", "221:", "222:"} {
		if strings.Contains(rules, p) {
			t.Errorf("rule %s left after Close:\n%s", p, rules)
		}
	}
	// Closed, GRE to a peer without an SA would leave in clear.
	if err := sendGRE(t, [4]byte{192, 0, 2, 9}); err != nil {
		t.Errorf("after Close: %v", err)
	}
}

// sendGRE sends an empty GRE packet on a protocol-47 raw socket (the
// kernel builds the IP header and routes it as GRE).
func sendGRE(t *testing.T, dst [4]byte) error {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_GRE)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	return unix.Sendto(fd, []byte{0, 0, 0x08, 0}, 0, &unix.SockaddrInet4{Addr: dst})
}

// TestIngressFilterFollowsLinks: the ingress check answers from link
// events — an ipsec TUN accepted, another link refused, a link renamed to
// ipsec accepted from then on, one renamed away and one deleted refused —
// and stops its goroutine on Close.
func TestIngressFilterFollowsLinks(t *testing.T) {
	if !inNetns(t) {
		return
	}
	defer leakcheck.Check(t)
	sh(t, "ip link add ipsec7 type veth peer name p7 && ip link add eth9 type veth peer name p9 && ip link add lan3 type veth peer name p3")
	f := NewIngressFilter()
	defer f.Close()
	index := func(name string) int {
		t.Helper()
		l, err := netlink.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		return l.Attrs().Index
	}
	ipsec7, eth9, lan3 := index("ipsec7"), index("eth9"), index("lan3")
	if !f.Accept(ipsec7) || f.Accept(eth9) || f.Accept(lan3) {
		t.Fatalf("at start: ipsec7 %v, eth9 %v, lan3 %v", f.Accept(ipsec7), f.Accept(eth9), f.Accept(lan3))
	}
	sh(t, "ip link set lan3 name ipsec8 && ip link set ipsec7 name wan7 && ip link del eth9")
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, eth9Known := (*f.ipsec.Load())[eth9]
		if f.Accept(lan3) && !f.Accept(ipsec7) && !eth9Known {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the renames: ipsec8 %v, wan7 %v, eth9 still known %v", f.Accept(lan3), f.Accept(ipsec7), eth9Known)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if f.Accept(eth9) {
		t.Error("a deleted link accepted")
	}
}
