package wire

import (
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/opendmvpn/dmvpn/internal/tsharktest"
)

// writeGREPcap writes each NHRP packet as an Ethernet/IP/GRE frame (GRE
// key 1000; outer IPv6 for IPv6 NBMA addresses) into a pcap file.
func writeGREPcap(t *testing.T, path string, pkts [][]byte, afns []uint16) {
	t.Helper()
	var frames []tsharktest.Frame
	for i, b := range pkts {
		f := tsharktest.Frame{Src: netip.MustParseAddr("192.0.2.11"), Dst: netip.MustParseAddr("203.0.113.1"), Key: 1000, NHRP: b}
		if afns[i] == AFIPv6 {
			f.Src, f.Dst = netip.MustParseAddr("2001:db8::11"), netip.MustParseAddr("2001:db8:2::1")
		}
		frames = append(frames, f)
	}
	if err := tsharktest.WritePcap(path, frames); err != nil {
		t.Fatal(err)
	}
}

// tsharkFields are the fields the conformance test reads, in order.
var tsharkFields = []string{
	"frame.number", "frame.protocols", "nhrp.hdr.op.type", "nhrp.hdr.afn", "nhrp.hdr.pro.type",
	"nhrp.src.nbma.addr", "nhrp.src.prot.addr", "nhrp.dst.prot.addr",
	"nhrp.src.nbma.addr_bytes", "nhrp.src.prot.addr_bytes", "nhrp.dst.prot.addr_byets",
	"nhrp.ext.type", "nhrp.ext.c", "nhrp.prefix", "nhrp.hdr.chksum.status", "_ws.expert.message",
}

func runTshark(t *testing.T, path string) []map[string]string {
	t.Helper()
	rows, err := tsharktest.Fields(path, tsharkFields...)
	if errors.Is(err, tsharktest.ErrNoTshark) {
		if os.Getenv("CI") != "" {
			t.Fatalf("tshark is not installed although make test installs it: %v", err)
		}
		t.Skipf("skipping: needs tshark, not installed here (make test installs it): %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	return rows
}

// first returns the first of tshark's comma-aggregated values: an Error
// Indication's quoted packet adds its own values after the outer ones.
func first(v string) string {
	s, _, _ := strings.Cut(v, ",")
	return s
}

// tsharkAddr renders an address as tshark prints it: dotted quad for IPv4
// fields, plain hex for the byte fields it uses for other lengths.
func tsharkAddr(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	if a.Is4() {
		return a.String()
	}
	b := a.As16()
	return hex.EncodeToString(b[:])
}

// authQuirk reports whether tshark 4.0 will call the packet's
// Authentication extension incomplete. It decodes the extension in RFC
// 2332's layout (reserved, SPI, a source protocol address, data), not in
// Cisco's (a 4-byte type and the password), so a Cisco password shorter
// than a protocol address looks truncated to it. That is the dissector's
// mistake, not ours.
func authQuirk(p *Packet, protoLen int) bool {
	e := p.Extension(ExtAuthentication)
	return e != nil && e.AuthType == AuthCleartext && len(e.Data) < protoLen
}

// TestTsharkConformance encodes one packet of every type with every
// extension, IPv4 and IPv6, and requires tshark to dissect each as the
// same NHRP packet without malformed, checksum or length complaints.
func TestTsharkConformance(t *testing.T) {
	samples := samplePackets()
	var pkts [][]byte
	var afns []uint16
	var decoded []*Packet
	for _, p := range samples {
		b, err := p.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		q, err := Decode(b)
		if err != nil {
			t.Fatal(err)
		}
		pkts, afns, decoded = append(pkts, b), append(afns, q.AddrFamily), append(decoded, q)
	}
	path := filepath.Join(t.TempDir(), "samples.pcap")
	writeGREPcap(t, path, pkts, afns)
	rows := runTshark(t, path)
	if len(rows) != len(pkts) {
		t.Fatalf("tshark saw %d frames, we wrote %d", len(rows), len(pkts))
	}
	for i, row := range rows {
		p := decoded[i]
		name := fmt.Sprintf("frame %d (%v, afn %d, proto %#04x)", i+1, p.Type, p.AddrFamily, p.ProtoType)
		check := func(field, want string) {
			t.Helper()
			if got := row[field]; got != want {
				t.Errorf("%s: tshark %s = %q, want %q", name, field, got, want)
			}
		}
		if !strings.Contains(row["frame.protocols"], "gre:nhrp") {
			t.Errorf("%s: not dissected as NHRP: %s", name, row["frame.protocols"])
			continue
		}
		if got := first(row["nhrp.hdr.op.type"]); got != strconv.Itoa(int(p.Type)) {
			t.Errorf("%s: tshark type %s", name, got)
		}
		if got := first(row["nhrp.hdr.afn"]); got != fmt.Sprintf("0x%04x", p.AddrFamily) {
			t.Errorf("%s: tshark afn %s", name, got)
		}
		if got := first(row["nhrp.hdr.pro.type"]); got != fmt.Sprintf("0x%04x", p.ProtoType) {
			t.Errorf("%s: tshark protocol type %s", name, got)
		}
		nbmaField, srcField, dstField := "nhrp.src.nbma.addr", "nhrp.src.prot.addr", "nhrp.dst.prot.addr"
		if p.SrcNBMA.Is6() {
			nbmaField = "nhrp.src.nbma.addr_bytes"
		}
		if p.SrcProto.Is6() {
			srcField, dstField = "nhrp.src.prot.addr_bytes", "nhrp.dst.prot.addr_byets"
		}
		if got := first(row[nbmaField]); got != tsharkAddr(p.SrcNBMA) {
			t.Errorf("%s: tshark src NBMA %s, want %s", name, got, tsharkAddr(p.SrcNBMA))
		}
		if got := first(row[srcField]); got != tsharkAddr(p.SrcProto) {
			t.Errorf("%s: tshark src proto %s, want %s", name, got, tsharkAddr(p.SrcProto))
		}
		if got := first(row[dstField]); got != tsharkAddr(p.DstProto) {
			t.Errorf("%s: tshark dst proto %s, want %s", name, got, tsharkAddr(p.DstProto))
		}

		// Extension types and compulsory bits, in wire order. An Error
		// Indication has none of its own; tshark lists those of the
		// packet it quotes.
		exts := p.Extensions
		if p.Type == TypeErrorIndication {
			q, err := Decode(p.Payload)
			if err != nil {
				t.Fatal(err)
			}
			exts = q.Extensions
		}
		var types, cbits []string
		for _, e := range exts {
			types = append(types, fmt.Sprintf("0x%04x", uint16(e.Type)))
			c := "0"
			if e.Compulsory {
				c = "1"
			}
			cbits = append(cbits, c)
		}
		check("nhrp.ext.type", strings.Join(types, ","))
		check("nhrp.ext.c", strings.Join(cbits, ","))
		if p.Type.HasCIEs() {
			var prefixes []string
			for _, c := range p.CIEs {
				prefixes = append(prefixes, strconv.Itoa(int(c.PrefixLen)))
			}
			for _, e := range p.Extensions {
				for _, c := range e.CIEs {
					prefixes = append(prefixes, strconv.Itoa(int(c.PrefixLen)))
				}
			}
			check("nhrp.prefix", strings.Join(prefixes, ","))
		}
		for _, st := range strings.Split(row["nhrp.hdr.chksum.status"], ",") {
			if st != "1" {
				t.Errorf("%s: tshark checksum status %q, want good (1)", name, row["nhrp.hdr.chksum.status"])
			}
		}

		// Expert info: none at all, but for the authentication quirk,
		// expected exactly where it applies.
		protoLen := 4
		if p.ProtoType == ProtoIPv6 {
			protoLen = 16
		}
		var experts []string
		for _, m := range strings.Split(row["_ws.expert.message"], ",") {
			if m != "" {
				experts = append(experts, m)
			}
		}
		var want []string
		if authQuirk(p, protoLen) {
			want = append(want, "Incomplete Authentication Extension")
		}
		if p.Type == TypeErrorIndication {
			if q, _ := Decode(p.Payload); authQuirk(q, protoLen) {
				want = append(want, "Incomplete Authentication Extension")
			}
		}
		if strings.Join(experts, ",") != strings.Join(want, ",") {
			t.Errorf("%s: tshark expert info %q, want %q", name, experts, want)
		}
	}
}

// TestTsharkCaptures runs the same expert check on the real Cisco and FRR
// captures: tshark dissects them without complaint, as it must dissect
// ours.
func TestTsharkCaptures(t *testing.T) {
	for _, name := range captureNames {
		rows := runTshark(t, filepath.Join("testdata", "captures", name+".pcap"))
		if len(rows) == 0 {
			t.Fatalf("%s: no frames", name)
		}
		for _, row := range rows {
			if row["_ws.expert.message"] != "" {
				t.Errorf("%s frame %s: expert info %q", name, row["frame.number"], row["_ws.expert.message"])
			}
		}
	}
}
