package integration

import (
	"context"
	"encoding/binary"
	"net/netip"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/opendmvpn/dmvpn/lab/testbed"
)

// nhrpResolutionRequest builds a minimal, well-formed RFC 2332 Resolution
// Request (fixed header, mandatory part, no extensions) so tshark's NHRP
// dissector has something valid to decode.
func nhrpResolutionRequest(srcNBMA, srcProto, dstProto netip.Addr) []byte {
	b := make([]byte, 40)
	binary.BigEndian.PutUint16(b[0:], 1)      // ar$afn: IPv4
	binary.BigEndian.PutUint16(b[2:], 0x0800) // ar$pro.type
	b[9] = 255                                // hop count
	binary.BigEndian.PutUint16(b[10:], uint16(len(b)))
	b[16], b[17], b[18], b[19] = 1, 1, 4, 0 // version, Resolution Request, shtl, sstl
	b[20], b[21] = 4, 4                     // src/dst protocol address lengths
	binary.BigEndian.PutUint32(b[24:], 7)   // request id
	s, p, d := srcNBMA.As4(), srcProto.As4(), dstProto.As4()
	copy(b[28:], s[:])
	copy(b[32:], p[:])
	copy(b[36:], d[:])
	var sum uint32
	for i := 0; i < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(b[12:], ^uint16(sum))
	return b
}

// TestWireFormat captures the internet link while LAN hosts talk through
// the tunnel and NHRP crosses it, and has tshark check every frame: outer
// IPv4 between the NBMA addresses, GRE with the key, nothing inner in
// clear, NHRP dissected without errors.
func TestWireFormat(t *testing.T) {
	needRoot(t, "ping", "tcpdump", "tshark")
	forEachBackend(t, testWireFormat)
}

func testWireFormat(t *testing.T, be string) {
	p := twoSpokes(t, be, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	pcap := filepath.Join(t.TempDir(), "inet.pcap")
	dump, err := p.tb.Node("inet").Start(testbed.ProcSpec{Name: "tcpdump", Args: []string{"tcpdump", "-i", "to-spb", "-n", "-U", "-Z", "root", "-w", pcap}})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := dump.WaitFor(ctx, regexp.MustCompile(`listening on`), 0); err != nil {
		t.Fatal(err)
	}
	ping(t, p.ha, p.hb.Addr)
	ping(t, p.hb, p.ha.Addr, "-s", "1400")
	if err := p.a.WriteNHRP(ctx, nbmaB, nhrpResolutionRequest(nbmaA, tunA, tunB)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := p.b.Proc.WaitFor(ctx, reNHRP, 0); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // let tcpdump catch up (slow under emulation)
	dump.Stop()

	out, err := p.tb.Node("inet").Run(ctx, "tshark", "-r", pcap, "-n", "-T", "fields", "-E", "separator=|",
		"-e", "frame.number", "-e", "ip.proto", "-e", "ip.src", "-e", "ip.dst", "-e", "gre.flags_and_version",
		"-e", "gre.key", "-e", "gre.proto", "-e", "nhrp.hdr.op.type", "-e", "nhrp.hdr.chksum.status", "-e", "_ws.malformed", "-e", "_ws.expert.severity")
	if err != nil {
		t.Fatal(err)
	}
	var ip, icmp, nhrp int
	nbma := map[string]bool{nbmaA.String(): true, nbmaB.String(): true}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if strings.HasPrefix(line, "Running as user") || line == "" {
			continue
		}
		f := strings.Split(line, "|")
		if len(f) != 11 {
			t.Fatalf("tshark line %q", line)
		}
		if f[1] == "" {
			continue // ARP
		}
		ip++
		protos, srcs, dsts := strings.Split(f[1], ","), strings.Split(f[2], ","), strings.Split(f[3], ",")
		if protos[0] != "47" || !nbma[srcs[0]] || !nbma[dsts[0]] {
			t.Errorf("frame %s outside GRE between NBMA addresses: proto %s %s → %s", f[0], f[1], f[2], f[3])
			continue
		}
		if f[4] != "0x2000" {
			t.Errorf("frame %s GRE flags %s, want 0x2000 (key only)", f[0], f[4])
		}
		if f[5] != "0x000003e9" && f[5] != "1001" {
			t.Errorf("frame %s GRE key %q, want 1001", f[0], f[5])
		}
		if f[9] != "" {
			t.Errorf("frame %s malformed: %s", f[0], line)
		}
		switch f[6] {
		case "0x0800":
			if len(protos) == 2 && protos[1] == "1" {
				icmp++
			}
		case "0x2001":
			nhrp++
			if f[7] != "1" {
				t.Errorf("frame %s NHRP type %q, want 1 (resolution request)", f[0], f[7])
			}
			if strings.Contains(f[10], "8388608") || f[8] != "1" { // PI_ERROR; checksum status 1 = good
				t.Errorf("frame %s NHRP expert error: %s", f[0], line)
			}
		default:
			t.Errorf("frame %s GRE protocol %s", f[0], f[6])
		}
	}
	if icmp < 12 || nhrp != 1 {
		t.Fatalf("captured %d IP frames: %d GRE/ICMP (want ≥ 12), %d NHRP (want 1)\n%s", ip, icmp, nhrp, out)
	}
}
