//go:build linux

package firewall

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
	"golang.org/x/sys/unix"

	"github.com/opendmvpn/dmvpn/internal/netnstest"
)

// sh runs a command and fails the test on an error.
func sh(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %v: %s", args, err, out)
	}
	return string(out)
}

// uplinkLab makes, around the test's own namespace (the router), a LAN
// host and an internet host:
//
//	lan host 10.9.0.2 —lan0— router —wan0 192.0.2.1— internet 192.0.2.2
//
// The internet host has no route to the LAN: only masquerade brings the
// LAN's replies back.
func uplinkLab(t *testing.T) (lan, inet string) {
	t.Helper()
	lan, inet = fmt.Sprintf("fwmqlan%d", os.Getpid()), fmt.Sprintf("fwmqinet%d", os.Getpid())
	for _, ns := range []string{lan, inet} {
		sh(t, "ip", "netns", "add", ns)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
		sh(t, "ip", "-n", ns, "link", "set", "lo", "up")
	}
	sh(t, "ip", "link", "add", "lan0", "type", "veth", "peer", "name", "eth0", "netns", lan)
	sh(t, "ip", "link", "add", "wan0", "type", "veth", "peer", "name", "eth0", "netns", inet)
	sh(t, "ip", "addr", "add", "10.9.0.1/24", "dev", "lan0")
	sh(t, "ip", "addr", "add", "192.0.2.1/24", "dev", "wan0")
	sh(t, "ip", "link", "set", "lan0", "up")
	sh(t, "ip", "link", "set", "wan0", "up")
	sh(t, "ip", "-n", lan, "addr", "add", "10.9.0.2/24", "dev", "eth0")
	sh(t, "ip", "-n", lan, "link", "set", "eth0", "up")
	sh(t, "ip", "-n", lan, "route", "add", "default", "via", "10.9.0.1")
	sh(t, "ip", "-n", inet, "addr", "add", "192.0.2.2/24", "dev", "eth0")
	sh(t, "ip", "-n", inet, "link", "set", "eth0", "up")
	sh(t, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	return lan, inet
}

// tcpdumpIn captures on an interface of a namespace. stop waits until the
// capture holds what done accepts (tcpdump -U writes each packet as it
// reads it; at most 10 s), ends tcpdump and returns what it captured.
func tcpdumpIn(t *testing.T, ns, iface string) (stop func(done func([]seen) bool) []seen) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "cap.pcap")
	cmd := exec.Command("ip", "netns", "exec", ns, "tcpdump", "-n", "-U", "-i", iface, "-w", path, "ip")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Skipf("skipping: needs tcpdump: %v", err)
	}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "listening on") {
				close(ready)
				break
			}
		}
		for sc.Scan() {
		}
	}()
	select {
	case <-ready:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		t.Fatal("tcpdump did not start")
	}
	return func(done func([]seen) bool) []seen {
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			if got, err := scanCapture(path); err == nil && done(got) {
				break
			}
		}
		cmd.Process.Signal(unix.SIGINT)
		cmd.Wait()
		got, err := scanCapture(path)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
}

// seen is a packet the internet host received.
type seen struct {
	proto   layers.IPProtocol
	src     netip.Addr
	srcPort int
}

// scanCapture reads the IPv4 packets of a capture file, as far as it is
// written.
func scanCapture(path string) ([]seen, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r, err := pcapgo.NewReader(f)
	if err != nil {
		return nil, err
	}
	var out []seen
	for p := range gopacket.NewPacketSource(r, r.LinkType()).Packets() {
		ip, _ := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
		if ip == nil {
			continue
		}
		s := seen{proto: ip.Protocol}
		s.src, _ = netip.AddrFromSlice(ip.SrcIP)
		if u, ok := p.Layer(layers.LayerTypeUDP).(*layers.UDP); ok {
			s.srcPort = int(u.SrcPort)
		}
		out = append(out, s)
	}
	return out, nil
}

// The uplinks' part of the table in a kernel: the LAN is masqueraded
// behind its uplink (the internet host, which has no route to the LAN,
// answers), the router's own IKE and ESP never are (the masquerade rule
// counts none of them and they keep their source port), connections take
// their uplink's mark (saved from the first packet that left through it,
// and set on those that came in through it), and the router's packets
// that carry a mark of their own — charon's 0x42 — keep it.
func TestUplinksMasqueradeAndMarks(t *testing.T) {
	needNft(t)
	if !netnstest.Run(t, "fwmq") {
		return
	}
	lan, inet := uplinkLab(t)
	ctx := context.Background()
	k := NewKernelTable()
	p := Policy{Config: Config{LAN: []string{"lan0"}, Rules: []UserRule{
		{From: ZoneInternet, To: ZoneLocal, Protocol: ProtoUDP, Ports: []uint16{4501}, Action: VerdictAccept}}},
		Facts: Facts{Tunnel: "gre1", TunnelMTU: 1400,
			Uplinks: Uplinks{List: []Uplink{{Name: "isp1", Interface: "wan0", Mark: 0x100, Masquerade: true}}}}}
	rs, err := Build(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := k.Replace(ctx, rs); err != nil {
		t.Fatal(err)
	}
	count := func(rule string) uint64 {
		cs, err := k.Counters(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return cs[rule].Packets
	}
	stop := tcpdumpIn(t, inet, "eth0")

	// The router's own IKE (udp 500 → 500) and ESP, first.
	u, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 500})
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	if _, err := u.WriteToUDP([]byte("ike"), &net.UDPAddr{IP: net.IPv4(192, 0, 2, 2), Port: 500}); err != nil {
		t.Fatal(err)
	}
	esp, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_ESP)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(esp)
	if err := unix.Sendto(esp, []byte{0, 0, 0, 1, 0, 0, 0, 1, 'e', 's', 'p'}, 0, &unix.SockaddrInet4{Addr: [4]byte{192, 0, 2, 2}}); err != nil {
		t.Fatal(err)
	}
	if n := count("nat_isp1"); n != 0 {
		t.Errorf("the masquerade rule matched %d of the router's own packets", n)
	}

	// The LAN: answered only through the masquerade.
	if out, err := exec.Command("ip", "netns", "exec", lan, "ping", "-c", "2", "-W", "2", "192.0.2.2").CombinedOutput(); err != nil {
		t.Fatalf("the LAN host cannot reach the internet through the uplink: %v\n%s", err, out)
	}
	if n := count("nat_isp1"); n != 1 {
		t.Errorf("the masquerade rule matched %d packets, want 1 (the LAN's new connection)", n)
	}
	if n := count("mark_save_isp1"); n == 0 {
		t.Error("the LAN's connection did not take the uplink's mark as it left")
	}
	if n := count("mark_restore_isp1"); n == 0 {
		t.Error("the LAN's second ping did not take the uplink's mark back from its connection")
	}

	// Connections from the internet take the uplink's mark; the router's
	// unmarked answers get it, charon's marked ones keep 0x42.
	udpIn := func(port int) {
		if out, err := exec.Command("ip", "netns", "exec", inet, "bash", "-c",
			fmt.Sprintf("echo x > /dev/udp/192.0.2.1/%d", port)).CombinedOutput(); err != nil {
			t.Fatalf("udp from the internet: %v: %s", err, out)
		}
	}
	plain, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 4501})
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, CharonMark) })
		return serr
	}}
	pc, err := lc.ListenPacket(ctx, "udp4", "192.0.2.1:4500")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	marked := pc.(*net.UDPConn)
	for _, c := range []struct {
		conn *net.UDPConn
		port int
		want uint64 // more mark_out_isp1 packets
	}{{plain, 4501, 1}, {marked, 4500, 0}} {
		new0 := count("mark_new_isp1")
		udpIn(c.port)
		buf := make([]byte, 16)
		c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, from, err := c.conn.ReadFromUDP(buf)
		if err != nil {
			t.Fatalf("udp %d: %v", c.port, err)
		}
		if n := count("mark_new_isp1") - new0; n != 1 {
			t.Errorf("udp %d: the connection in through the uplink was marked %d times, want 1", c.port, n)
		}
		out0 := count("mark_out_isp1")
		if _, err := c.conn.WriteToUDP([]byte("reply"), from); err != nil {
			t.Fatal(err)
		}
		if n := count("mark_out_isp1") - out0; n != c.want {
			t.Errorf("udp %d: the router's answer took the uplink's mark %d times, want %d", c.port, n, c.want)
		}
	}

	// On the wire: the router's IKE and ESP left with its own address and
	// port, the LAN's ping with the uplink's address. The capture is read
	// once it holds the last packet sent, the answer from port 4500: it
	// has seen everything before it.
	var ike, espSeen, icmp bool
	last := func(got []seen) bool {
		for _, s := range got {
			if s.proto == layers.IPProtocolUDP && s.srcPort == 4500 {
				return true
			}
		}
		return false
	}
	got := stop(last)
	if !last(got) {
		t.Fatal("the capture never saw the last packet sent (the answer from port 4500)")
	}
	for _, s := range got {
		switch {
		case s.proto == layers.IPProtocolUDP && s.srcPort == 500:
			ike = s.src == netip.MustParseAddr("192.0.2.1")
		case s.proto == layers.IPProtocolESP:
			espSeen = s.src == netip.MustParseAddr("192.0.2.1")
		case s.proto == layers.IPProtocolICMPv4 && s.src == netip.MustParseAddr("192.0.2.1"):
			icmp = true
		case s.proto == layers.IPProtocolICMPv4 && s.src == netip.MustParseAddr("10.9.0.2"):
			t.Error("a LAN packet reached the internet with its LAN address")
		}
	}
	if !ike || !espSeen || !icmp {
		t.Errorf("on the wire: router's IKE from 192.0.2.1:500 %v, its ESP from 192.0.2.1 %v, the LAN's ping masqueraded %v", ike, espSeen, icmp)
	}
}
