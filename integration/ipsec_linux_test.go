package integration

import (
	"context"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/opendmvpn/dmvpn/daemon/control"
	"github.com/opendmvpn/dmvpn/integration/vm"
	"github.com/opendmvpn/dmvpn/internal/pki"
	"github.com/opendmvpn/dmvpn/lab/testbed"
	"github.com/opendmvpn/dmvpn/nhrp"
	"github.com/opendmvpn/dmvpn/nhrp/wire"
)

// charonPath is strongSwan's IKE daemon (Debian's strongswan-charon).
const charonPath = "/usr/lib/ipsec/charon"

func requireCharon(t testing.TB) {
	t.Helper()
	if _, err := os.Stat(charonPath); err != nil {
		t.Skipf("strongSwan's charon is missing (%v): make test installs strongswan-charon", err)
	}
}

// testPKI is a CA and a directory of node certificates.
type testPKI struct {
	t   testing.TB
	dir string
	ca  *pki.CA
	caF string
	// mode is the nodes' ipsec mode; empty means userspace.
	mode string
}

func newTestPKI(t testing.TB) *testPKI {
	t.Helper()
	ca, err := pki.NewCA("C=FI, O=Example, CN=Example DMVPN CA")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	caF, err := ca.WriteCA(dir, "ca")
	if err != nil {
		t.Fatal(err)
	}
	return &testPKI{t: t, dir: dir, ca: ca, caF: caF}
}

// node issues a node certificate and returns its ipsec section.
func (p *testPKI) node(name, dn string, extra string) string {
	p.t.Helper()
	is, err := p.ca.IssueDN(dn)
	if err != nil {
		p.t.Fatal(err)
	}
	return p.section(name, is, extra)
}

// section writes a certificate and returns the ipsec section using it.
func (p *testPKI) section(name string, is *pki.Issued, extra string) string {
	return p.sectionCA(name, is, p.caF, extra)
}

// sectionCA is section with another CA certificate file.
func (p *testPKI) sectionCA(name string, is *pki.Issued, caFile, extra string) string {
	p.t.Helper()
	cert, key, err := is.Write(p.dir, name)
	if err != nil {
		p.t.Fatal(err)
	}
	state := filepath.Join(p.dir, "state-"+name)
	if name == "hub" {
		// The hub's charon keeps its files under /run, as the default
		// state directory does (a managed charon gets a /run of its own,
		// which must not hide them), reached through a symbolic link.
		run, err := os.MkdirTemp("/run", "dmvpn-test-")
		if err != nil {
			p.t.Fatal(err)
		}
		p.t.Cleanup(func() { os.RemoveAll(run) })
		if err := os.Symlink(run, state); err != nil {
			p.t.Fatal(err)
		}
	}
	mode := p.mode
	if mode == "" {
		mode = "userspace"
	}
	return fmt.Sprintf(`ipsec:
  mode: %s
  ca: %s
  cert: %s
  key: %s
  charon: managed
  state_dir: %s
  dpd_delay: 1s
  retransmit_timeout: 500ms
  retransmit_tries: 3
  audit_log: %s
%s`, mode, caFile, cert, key, state, filepath.Join(p.dir, "audit-"+name+".jsonl"), extra)
}

// dumpLogs prints the end of every charon log when the test failed.
func (p *testPKI) dumpLogs() {
	if !p.t.Failed() {
		return
	}
	logs, _ := filepath.Glob(filepath.Join(p.dir, "state-*", "charon.log"))
	for _, l := range logs {
		b, _ := os.ReadFile(l)
		lines := strings.Split(string(b), "\n")
		if len(lines) > 60 {
			lines = lines[len(lines)-60:]
		}
		p.t.Logf("%s:\n%s", l, strings.Join(lines, "\n"))
	}
}

// ipsecExtra gives every node of the end-to-end topology its certificate.
func (p *testPKI) ipsecExtra() func(string) string {
	return func(n string) string {
		switch n {
		case "hub":
			return p.node(n, "C=FI, O=Example, OU=GRE=10.0.0.1, OU=AS=65000, CN=hub", "")
		case "s1":
			return p.node(n, "C=FI, O=Example, OU=GRE=10.0.0.11, OU=AS=65011, OU=NET=10.1.0.0/24, CN=s1", "")
		case "s2":
			return p.node(n, "C=FI, O=Example, OU=GRE=10.0.0.12, OU=AS=65012, OU=NET=10.2.0.0/24, CN=s2", "")
		case "s3":
			return p.node(n, "C=FI, O=Example, OU=GRE=10.0.0.13, OU=AS=65013, OU=NET=10.3.0.0/24, CN=s3", "")
		}
		return ""
	}
}

// crypto returns a node's IPsec state.
func (d *daemonNode) crypto() control.CryptoResponse {
	d.t.Helper()
	var r control.CryptoResponse
	d.get(control.PathCrypto, &r)
	return r
}

// saUpWith reports whether the node has an established SA with nbma.
func (d *daemonNode) saUpWith(nbma netip.Addr) bool {
	for _, sa := range d.crypto().SAs {
		if sa.RemoteHost == nbma && sa.Up() {
			return true
		}
	}
	return false
}

// charonPID finds the managed charon of a node by its configuration file.
func charonPID(t testing.TB, stateDir string) int {
	t.Helper()
	want := "STRONGSWAN_CONF=" + filepath.Join(stateDir, "strongswan.conf")
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		env, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err != nil {
			continue
		}
		comm, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "comm"))
		if strings.TrimSpace(string(comm)) == "charon" && strings.Contains(string(env), want) {
			return pid
		}
	}
	t.Fatalf("no charon with %s", want)
	return 0
}

// killHubCharon kills the hub's charon (SIGKILL) and waits until every
// spoke has an SA with the hub and an answer to a registration sent
// since; it returns how long that took.
func (x *e2e) killHubCharon(t testing.TB, p *testPKI) time.Duration {
	t.Helper()
	killed := time.Now()
	syscall.Kill(charonPID(t, filepath.Join(p.dir, "state-hub")), syscall.SIGKILL)
	return waitFor(t, slowVM(30*time.Second), "all spokes registered again after the hub's charon was killed", func() bool {
		for i := range x.spokes {
			if !x.hub.saUpWith(nbmaOf(x, i)) {
				return false
			}
			st := x.spokes[i].nhs()
			if len(st) == 0 || st[0].LastReply.Before(killed) {
				return false
			}
		}
		return true
	})
}

// wireCount counts what crossed the internet router in a capture: ESP
// (IP protocol 50: kernel mode), IKE (UDP 500/4500, which carries
// userspace mode's ESP too), GRE (47; those carrying the injector's
// marker apart), the rest.
type wireCount struct {
	esp, ike, gre, injected, other int
	spokeToSpoke                   int // ESP or IKE between the two spokes given
}

func countWire(t testing.TB, path string, marker []byte, a, b netip.Addr) wireCount {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := pcapgo.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	var c wireCount
	for p := range gopacket.NewPacketSource(r, r.LinkType()).Packets() {
		ip, _ := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
		if ip == nil {
			continue
		}
		src, _ := netip.AddrFromSlice(ip.SrcIP)
		dst, _ := netip.AddrFromSlice(ip.DstIP)
		between := (src == a && dst == b) || (src == b && dst == a)
		switch ip.Protocol {
		case layers.IPProtocolESP:
			c.esp++
		case layers.IPProtocolGRE:
			c.gre++
			if strings.Contains(string(ip.Payload), string(marker)) {
				c.injected++
			}
			continue
		case layers.IPProtocolUDP:
			if u, ok := p.Layer(layers.LayerTypeUDP).(*layers.UDP); ok && (u.SrcPort == 500 || u.SrcPort == 4500 || u.DstPort == 500 || u.DstPort == 4500) {
				c.ike++
			} else {
				c.other++
				continue
			}
		default:
			c.other++
			continue
		}
		if between {
			c.spokeToSpoke++
		}
	}
	return c
}

// TestIPsecEndToEnd runs the NHRP scenario with IPsec on every node
// (strongSwan per namespace, userspace ESP): registrations only after the
// SA is up and authorised by certificate, phase 3 with an on-demand
// spoke-to-spoke SA, no GRE in clear on the wire, plaintext GRE injected
// from a spoke's address dropped, and recovery after the hub's charon is
// killed.
func TestIPsecEndToEnd(t *testing.T) {
	requireTestbed(t)
	requireCharon(t)
	p := newTestPKI(t)
	t.Cleanup(func() { p.dumpLogs() })
	var all *capture
	// The hub says firewall: off — what is tested there is the data
	// plane's own refusal of GRE in clear, which the baseline policy
	// would stop before it; the spokes run the baseline (no section).
	ipsecYAML := p.ipsecExtra()
	x := newE2EWith(t, "userspace", func(n string) string {
		if n == "hub" {
			return ipsecYAML(n) + "firewall: off\n"
		}
		return ipsecYAML(n)
	}, func(tb *testbed.Testbed) { all = startFullCapture(t, tb.Node("inet")) })

	d := waitFor(t, 30*time.Second, "all spokes registered over IPsec", x.allRegistered)
	t.Logf("all three spokes registered over IPsec (%v more after the last daemon answered)", d.Round(time.Millisecond))
	for i, s := range x.spokes {
		if !x.hub.saUpWith(nbmaOf(x, i)) {
			t.Errorf("hub has no SA with spoke %d", i+1)
		}
		e, _ := x.hub.entry(netip.PrefixFrom(e2eTunnel[i], 32))
		if !strings.Contains(e.Identity, "OU=GRE="+e2eTunnel[i].String()) || len(e.Attrs["AS"]) != 1 {
			t.Errorf("spoke %d binding without its certificate identity: %s", i+1, jsonString(e))
		}
		_ = s
	}

	// Phase 3 with IPsec: the shortcut comes with an SA between the spokes.
	// Both may initiate it at once: charon then refuses the second
	// CHILD_SA, and the first serves — not a failure, no retry.
	failures := func(i int) map[string]uint64 { return x.spokes[i].crypto().Stats.IKEFailures }
	f0, f1 := failures(0), failures(1)
	h1, h2 := x.hosts[0], x.hosts[1]
	if _, err := pingTTL(t, h1, h2.Addr); err != nil {
		t.Fatal(err)
	}
	took := waitFor(t, 10*time.Second, "the shortcuts between LAN 1 and LAN 2", func() bool {
		_, ok1 := x.shortcut(0, 1)
		_, ok2 := x.shortcut(1, 0)
		return ok1 && ok2
	})
	t.Logf("shortcut with IPsec installed %v after the first packet", took.Round(time.Millisecond))
	if d0, d1 := statDiff(f0, failures(0)), statDiff(f1, failures(1)); len(d0)+len(d1) > 0 {
		t.Errorf("SA bring-up failures while the shortcut came up: spoke 1 %v, spoke 2 %v", d0, d1)
	}
	if !x.spokes[0].saUpWith(netip.MustParseAddr("198.51.100.65")) {
		t.Error("no SA between spoke 1 and spoke 2 after the shortcut")
	}
	for i := 0; i < 5; i++ {
		if ttl, err := pingTTL(t, h1, h2.Addr); err != nil || ttl != 62 {
			t.Fatalf("ping %d over the shortcut: TTL %d, %v", i, ttl, err)
		}
	}
	// Both spokes may have initiated: one SA is left between them.
	s1, s2 := netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("198.51.100.65")
	waitFor(t, 5*time.Second, "one SA between spoke 1 and spoke 2", func() bool {
		return len(x.spokes[0].sasWith(s2)) == 1 && len(x.spokes[1].sasWith(s1)) == 1
	})

	// Plaintext GRE from spoke 1's address straight to the hub (around
	// every SA): dropped and counted, no binding.
	marker := []byte("dmvpn-plaintext-probe")
	reg, _ := (&wire.Packet{Type: wire.TypeRegistrationRequest, HopCount: 255, RequestID: 99,
		SrcNBMA: netip.MustParseAddr("198.51.100.1"), SrcProto: netip.MustParseAddr("10.0.0.99"),
		DstProto: netip.MustParseAddr("10.0.0.1"), CIEs: []wire.CIE{{PrefixLen: 255, HoldingTime: 60}},
		Extensions: []wire.Extension{{Type: wire.ExtVendorPrivate, VendorID: 0xffffff, Data: marker}}}).MarshalBinary()
	inj := vm.GoBuild(t, "./integration/cmd/greinject")
	before := x.hub.traffic().Dataplane.Drops["ingress"]
	if out, err := x.tb.Node("inet").Run(context.Background(), inj, "-src", "198.51.100.1", "-dst", "192.0.2.1",
		"-key", "42", "-proto", "0x2001", "-payload", hex.EncodeToString(reg), "-n", "20"); err != nil {
		t.Fatalf("greinject: %v: %s", err, out)
	}
	waitFor(t, 5*time.Second, "the hub to drop the plaintext GRE", func() bool {
		return x.hub.traffic().Dataplane.Drops["ingress"] >= before+20
	})
	if _, ok := x.hub.entry(netip.MustParsePrefix("10.0.0.99/32")); ok {
		t.Error("plaintext GRE created a binding")
	}
	// Spoke 1 runs the baseline: its GRE under IPsec passed it, GRE in
	// clear is dropped and counted before the data plane sees it.
	fw := x.spokes[0].firewall()
	if fw.Policy == nil || !fw.Policy.Active || !fw.Policy.Baseline || ruleCount(fw, "in_gre_ipsec") == 0 {
		t.Errorf("spoke 1's baseline firewall: %s", jsonString(fw))
	}
	s1Drops := x.spokes[0].traffic().Dataplane.Drops["ingress"]
	clear0 := ruleCount(fw, "in_gre_clear")
	if out, err := x.tb.Node("inet").Run(context.Background(), inj, "-src", "192.0.2.1", "-dst", "198.51.100.1",
		"-key", "42", "-proto", "0x2001", "-payload", hex.EncodeToString(reg), "-n", "20"); err != nil {
		t.Fatalf("greinject: %v: %s", err, out)
	}
	waitFor(t, 5*time.Second, "spoke 1's baseline to drop the plaintext GRE", func() bool {
		return ruleCount(x.spokes[0].firewall(), "in_gre_clear") >= clear0+20
	})
	if d := x.spokes[0].traffic().Dataplane.Drops["ingress"] - s1Drops; d != 0 {
		t.Errorf("%d of the GRE in clear reached spoke 1's data plane past its baseline", d)
	}

	// The hub's charon killed: it is restarted, and every spoke is
	// registered again over a new SA.
	back := x.killHubCharon(t, p)
	t.Logf("hub charon SIGKILL: all spokes registered again %v later", back.Round(time.Millisecond))

	// On the wire: IKE and ESP only, and the injected packets.
	wc := countWire(t, all.stop(), marker, nbmaOf(x, 0), nbmaOf(x, 1))
	t.Logf("internet router saw %d IKE/ESP packets, %d GRE (%d of them injected), %d other", wc.ike, wc.gre, wc.injected, wc.other)
	if wc.gre != wc.injected {
		t.Errorf("%d GRE packets in clear on the wire that were not injected", wc.gre-wc.injected)
	}
	if wc.ike == 0 {
		t.Error("no IKE/ESP on the wire")
	}
	if wc.spokeToSpoke == 0 {
		t.Error("no IKE/ESP between spoke 1 and spoke 2 on the wire")
	}

	// The shortcut goes idle and expires: its SA is ended as well.
	waitFor(t, 30*time.Second, "the idle shortcut to expire", func() bool { _, ok := x.shortcut(0, 1); return !ok })
	waitFor(t, 15*time.Second, "the SA between spoke 1 and spoke 2 to end", func() bool {
		return len(x.spokes[0].sasWith(s2)) == 0
	})
}

// sasWith returns a node's IKE SAs with a peer, whatever their state.
func (d *daemonNode) sasWith(nbma netip.Addr) []string {
	var out []string
	for _, sa := range d.crypto().SAs {
		if sa.RemoteHost == nbma {
			out = append(out, sa.IKEID+" "+sa.State)
		}
	}
	return out
}

// nbmaOf is spoke i's NBMA address as the hub sees it.
func nbmaOf(x *e2e, i int) netip.Addr {
	return []netip.Addr{netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("198.51.100.65"), netip.MustParseAddr("203.0.113.1")}[i]
}

// nhs returns a node's next hop servers.
func (d *daemonNode) nhs() []nhrp.NHSStatus {
	d.t.Helper()
	var r control.NHSResponse
	d.get(control.PathNHS, &r)
	return r.Servers
}

// startFullCapture captures everything on the internet router.
func startFullCapture(t testing.TB, n *testbed.Node) *capture {
	t.Helper()
	return startTcpdump(t, n, "tcpdump-all", "all.pcap", "any", "ip")
}
