package nhrpcap

import (
	"bytes"
	"encoding/binary"
	"net"
	"os"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
)

// capturesDir holds the real Cisco captures, kept with the codec's tests.
const capturesDir = "../../nhrp/wire/testdata/captures/"

type found struct {
	Number   int
	Src, Dst string
	Key      uint32
	HasKey   bool
	Seq      uint32
	HasSeq   bool
	Len      int
}

func scanAll(t *testing.T, b []byte) ([]found, Stats) {
	t.Helper()
	var out []found
	st, err := Scan(bytes.NewReader(b), func(f *Frame) error {
		out = append(out, found{f.Number, f.OuterSrc.String(), f.OuterDst.String(), f.Key, f.KeyPresent, f.Seq, f.SeqPresent, len(f.NHRP)})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out, st
}

func TestScanCiscoCaptures(t *testing.T) {
	tests := []struct {
		file string
		want []found
		st   Stats
	}{
		{"tcpdump__nhrp-trace.pcap", []found{
			{1, "192.168.200.1", "192.168.200.3", 1000, true, 0, false, 98},
			{2, "192.168.200.3", "192.168.200.1", 1000, true, 0, false, 86},
			{3, "192.168.200.1", "192.168.200.2", 1000, true, 0, false, 106},
			{4, "192.168.200.2", "192.168.200.3", 1000, true, 0, false, 134},
		}, Stats{Frames: 4, NHRP: 4}},
		// 802.1Q tagged.
		{"tcpdump__NHRP_registration.pcap", []found{
			{1, "169.254.100.1", "169.254.100.5", 2, true, 0, false, 108},
			{2, "169.254.100.5", "169.254.100.1", 2, true, 0, false, 128},
			{3, "169.254.100.1", "169.254.100.5", 2, true, 0, false, 108},
			{4, "169.254.100.5", "169.254.100.1", 2, true, 0, false, 128},
		}, Stats{Frames: 4, NHRP: 4}},
		{"tcpdump__ios_nhrp.pcap", []found{{1, "10.0.12.2", "10.0.12.1", 0, false, 0, false, 81}}, Stats{Frames: 1, NHRP: 1}},
		// IP protocol 54, not GRE: skipped.
		{"tcpdump__pb_nhrp_1.pcap", nil, Stats{Frames: 1, Skipped: 1}},
	}
	for _, tc := range tests {
		b, err := os.ReadFile(capturesDir + tc.file)
		if err != nil {
			t.Fatal(err)
		}
		got, st := scanAll(t, b)
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("%s (-want +got):\n%s", tc.file, diff)
		}
		if st != tc.st {
			t.Errorf("%s: stats %+v, want %+v", tc.file, st, tc.st)
		}
	}
}

var nhrpBytes = []byte{0, 1, 8, 0, 0, 0, 0, 0, 0, 1, 0, 20, 0, 0, 0, 0, 1, 3, 0, 0}

// greFrame builds GRE (with optional checksum, key, sequence) over IPv4 or
// IPv6 carrying payload of protocol proto.
func greIP(t *testing.T, v6 bool, proto uint16, csum, key, seq bool, payload []byte) []byte {
	t.Helper()
	gre := &layers.GRE{Protocol: layers.EthernetType(proto), ChecksumPresent: csum, KeyPresent: key, Key: 42, SeqPresent: seq, Seq: 7}
	var ip gopacket.SerializableLayer
	if v6 {
		ip = &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolGRE, SrcIP: net.ParseIP("2001:db8::1"), DstIP: net.ParseIP("2001:db8::2")}
	} else {
		ip = &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolGRE, SrcIP: net.IPv4(192, 0, 2, 1), DstIP: net.IPv4(192, 0, 2, 2)}
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ip, gre, gopacket.Payload(payload)); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func pcapFile(t *testing.T, lt layers.LinkType, frames ...[]byte) []byte {
	t.Helper()
	var b bytes.Buffer
	w := pcapgo.NewWriter(&b)
	if err := w.WriteFileHeader(65535, lt); err != nil {
		t.Fatal(err)
	}
	for i, f := range frames {
		ci := gopacket.CaptureInfo{Timestamp: time.Unix(1, int64(i)), CaptureLength: len(f), Length: len(f)}
		if err := w.WritePacket(ci, f); err != nil {
			t.Fatal(err)
		}
	}
	return b.Bytes()
}

func ether(et uint16, tags int, payload []byte) []byte {
	b := []byte{2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1}
	for i := 0; i < tags; i++ {
		b = binary.BigEndian.AppendUint16(b, 0x8100)
		b = binary.BigEndian.AppendUint16(b, uint16(10+i))
	}
	b = binary.BigEndian.AppendUint16(b, et)
	return append(b, payload...)
}

func TestScanLinkTypesAndGRE(t *testing.T) {
	v4 := greIP(t, false, ProtoNHRP, false, true, false, nhrpBytes)
	v4all := greIP(t, false, ProtoNHRP, true, true, true, nhrpBytes)
	v6 := greIP(t, true, ProtoNHRP, false, false, true, nhrpBytes)
	ipInGRE := greIP(t, false, 0x0800, false, true, false, nhrpBytes)
	sll := append([]byte{0, 0, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0, 0x08, 0x00}, v4...)
	sll2 := append([]byte{0x08, 0x00, 0, 0, 0, 0, 0, 3, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0}, v4...)
	frag := append([]byte(nil), v4...)
	frag[6] = 0x20 // more fragments
	icmp := []byte{0x45, 0, 0, 28, 0, 0, 0, 0, 64, 1, 0, 0, 192, 0, 2, 1, 192, 0, 2, 2, 8, 0, 0, 0, 0, 0, 0, 0}

	want := func(n int, v6, key, seq bool) found {
		f := found{Number: n, Src: "192.0.2.1", Dst: "192.0.2.2", Len: len(nhrpBytes)}
		if v6 {
			f.Src, f.Dst = "2001:db8::1", "2001:db8::2"
		}
		if key {
			f.Key, f.HasKey = 42, true
		}
		if seq {
			f.Seq, f.HasSeq = 7, true
		}
		return f
	}
	tests := []struct {
		name string
		file []byte
		want []found
		st   Stats
	}{
		{"ethernet", pcapFile(t, layers.LinkTypeEthernet, ether(0x0800, 0, v4), ether(0x0800, 0, icmp), ether(0x0800, 0, ipInGRE), ether(0x86dd, 0, v6)),
			[]found{want(1, false, true, false), want(4, true, false, true)}, Stats{4, 2, 2}},
		{"qinq and checksum/seq bits", pcapFile(t, layers.LinkTypeEthernet, ether(0x0800, 2, v4all)),
			[]found{want(1, false, true, true)}, Stats{1, 1, 0}},
		{"linux cooked", pcapFile(t, layers.LinkTypeLinuxSLL, sll), []found{want(1, false, true, false)}, Stats{1, 1, 0}},
		{"linux cooked v2", pcapFile(t, layers.LinkType(276), sll2), []found{want(1, false, true, false)}, Stats{1, 1, 0}},
		{"raw ip", pcapFile(t, layers.LinkTypeRaw, v4, frag, v6), []found{want(1, false, true, false), want(3, true, false, true)}, Stats{3, 2, 1}},
	}
	for _, tc := range tests {
		got, st := scanAll(t, tc.file)
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("%s (-want +got):\n%s", tc.name, diff)
		}
		if st != tc.st {
			t.Errorf("%s: stats %+v, want %+v", tc.name, st, tc.st)
		}
	}
}

func TestScanPcapng(t *testing.T) {
	var b bytes.Buffer
	w, err := pcapgo.NewNgWriter(&b, layers.LinkTypeEthernet)
	if err != nil {
		t.Fatal(err)
	}
	f := ether(0x0800, 0, greIP(t, false, ProtoNHRP, false, true, false, nhrpBytes))
	for i := 0; i < 2; i++ {
		if err := w.WritePacket(gopacket.CaptureInfo{Timestamp: time.Unix(2, 0), CaptureLength: len(f), Length: len(f)}, f); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	got, st := scanAll(t, b.Bytes())
	if len(got) != 2 || got[1].Number != 2 || st.NHRP != 2 {
		t.Fatalf("got %+v, %+v", got, st)
	}
}

func TestScanNotACapture(t *testing.T) {
	if _, err := Scan(bytes.NewReader([]byte("hello, this is not a capture")), func(*Frame) error { return nil }); err == nil {
		t.Fatal("no error for a text file")
	}
	if _, err := Scan(bytes.NewReader(nil), func(*Frame) error { return nil }); err == nil {
		t.Fatal("no error for an empty file")
	}
}

// TestScanIPv6ExtensionPastEnd: an IPv6 extension header whose length runs
// past the packet ends the frame (found by FuzzScan: it panicked).
func TestScanIPv6ExtensionPastEnd(t *testing.T) {
	ip := make([]byte, 48)
	ip[0] = 0x60
	ip[5] = 8   // payload length: the extension header alone
	ip[6] = 0   // next header: hop-by-hop options
	ip[40] = 47 // then GRE …
	ip[41] = 50 // … after 408 bytes of options the packet does not have
	got, st := scanAll(t, pcapFile(t, layers.LinkTypeEthernet, ether(0x86dd, 0, ip)))
	if len(got) != 0 || st.NHRP != 0 {
		t.Fatalf("got %+v, %+v", got, st)
	}
}

// FuzzScan: arbitrary capture bytes never panic the scanner.
func FuzzScan(f *testing.F) {
	for _, name := range []string{"tcpdump__nhrp-trace.pcap", "tcpdump__NHRP_registration.pcap", "tcpdump__pb_nhrp_1.pcap"} {
		b, err := os.ReadFile(capturesDir + name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		Scan(bytes.NewReader(b), func(fr *Frame) error {
			if !fr.OuterSrc.IsValid() || fr.Number < 1 {
				t.Fatalf("bad frame %+v", fr)
			}
			return nil
		})
	})
}
