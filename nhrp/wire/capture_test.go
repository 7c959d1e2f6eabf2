package wire

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite golden files")

// capturePDU is one NHRP PDU listed in a capture's *.nhrp-pdus.txt file.
type capturePDU struct {
	frame int
	raw   []byte
}

// readPDUs reads the hex PDUs of a capture, as listed next to the pcap.
func readPDUs(t testing.TB, name string) []capturePDU {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", "captures", name+".pcap.nhrp-pdus.txt"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []capturePDU
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<16), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) != 3 || fields[0] != "frame" {
			continue
		}
		var pdu capturePDU
		if pdu.frame, err = strconv.Atoi(strings.TrimSuffix(fields[1], ":")); err != nil {
			t.Fatalf("%s: bad frame line %q", name, sc.Text())
		}
		if pdu.raw, err = hex.DecodeString(fields[2]); err != nil {
			t.Fatal(err)
		}
		out = append(out, pdu)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// goldenCIE and goldenPacket are a readable view of a decoded packet: the
// golden files hold these, and every value in them was checked against
// tshark's decode, tcpdump's expected output and the hex PDUs.
type goldenCIE struct {
	Code        int    `json:"code"`
	PrefixLen   int    `json:"prefix_len"`
	MTU         int    `json:"mtu"`
	HoldingTime int    `json:"holding_time"`
	NBMA        string `json:"nbma,omitempty"`
	Proto       string `json:"proto,omitempty"`
	Preference  int    `json:"preference"`
}

type goldenExt struct {
	Type       int         `json:"type"`
	Compulsory bool        `json:"compulsory"`
	CIEs       []goldenCIE `json:"cies,omitempty"`
	AuthType   uint32      `json:"auth_type,omitempty"`
	VendorID   uint32      `json:"vendor_id,omitempty"`
	Data       string      `json:"data,omitempty"`
}

type goldenPacket struct {
	Frame       int         `json:"frame"`
	Type        int         `json:"type"`
	AddrFamily  int         `json:"afn"`
	ProtoType   int         `json:"pro_type"`
	HopCount    int         `json:"hop_count"`
	Size        int         `json:"size"`
	Checksum    string      `json:"checksum"`
	ExtOffset   int         `json:"ext_offset"`
	Flags       string      `json:"flags"`
	RequestID   uint32      `json:"request_id"`
	TrafficCode int         `json:"traffic_code,omitempty"`
	SrcNBMA     string      `json:"src_nbma"`
	SrcProto    string      `json:"src_proto"`
	DstProto    string      `json:"dst_proto"`
	CIEs        []goldenCIE `json:"cies,omitempty"`
	Payload     string      `json:"payload,omitempty"`
	Extensions  []goldenExt `json:"extensions,omitempty"`
	Error       string      `json:"error,omitempty"`
}

func addrString(a interface {
	IsValid() bool
	String() string
}) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

func goldenCIEs(cs []CIE) []goldenCIE {
	var out []goldenCIE
	for _, c := range cs {
		out = append(out, goldenCIE{
			Code: int(c.Code), PrefixLen: int(c.PrefixLen), MTU: int(c.MTU),
			HoldingTime: int(c.HoldingTime), NBMA: addrString(c.NBMA),
			Proto: addrString(c.Proto), Preference: int(c.Preference),
		})
	}
	return out
}

func goldenView(frame int, raw []byte, p *Packet) goldenPacket {
	g := goldenPacket{
		Frame: frame, Type: int(p.Type), AddrFamily: int(p.AddrFamily), ProtoType: int(p.ProtoType),
		HopCount: int(p.HopCount),
		Size:     int(raw[10])<<8 | int(raw[11]), Checksum: hex.EncodeToString(raw[12:14]),
		ExtOffset: int(raw[14])<<8 | int(raw[15]),
		Flags:     "0x" + hex.EncodeToString([]byte{byte(p.Flags >> 8), byte(p.Flags)}),
		RequestID: p.RequestID, TrafficCode: int(p.TrafficCode),
		SrcNBMA: addrString(p.SrcNBMA), SrcProto: addrString(p.SrcProto), DstProto: addrString(p.DstProto),
		CIEs: goldenCIEs(p.CIEs), Payload: hex.EncodeToString(p.Payload),
	}
	for _, e := range p.Extensions {
		g.Extensions = append(g.Extensions, goldenExt{
			Type: int(e.Type), Compulsory: e.Compulsory, CIEs: goldenCIEs(e.CIEs),
			AuthType: e.AuthType, VendorID: e.VendorID, Data: string(e.Data),
		})
	}
	return g
}

// ciscoCaptures come from tcpdump's test suite, with tcpdump's decode;
// frrCaptures from the live FRR interoperation test (no tcpdump decode:
// Debian's tcpdump has no NHRP printer; tshark checked them).
var (
	ciscoCaptures = []string{
		"tcpdump__nhrp-trace",
		"tcpdump__NHRP_registration",
		"tcpdump__ios_nhrp",
	}
	frrCaptures = []string{
		"frr__interop-ourhub",
		"frr__interop-frrhub",
	}
	captureNames = append(append([]string(nil), ciscoCaptures...), frrCaptures...)
)

// TestCaptures decodes every NHRP packet of the real Cisco and FRR captures,
// compares the values with the golden files and requires the re-encoding
// to be identical, byte for byte.
func TestCaptures(t *testing.T) {
	for _, name := range captureNames {
		t.Run(name, func(t *testing.T) {
			pdus := readPDUs(t, name)
			if len(pdus) == 0 {
				t.Fatal("no PDUs")
			}
			var got []goldenPacket
			for _, pdu := range pdus {
				p, err := Decode(pdu.raw)
				if err != nil {
					t.Fatalf("frame %d: %v", pdu.frame, err)
				}
				got = append(got, goldenView(pdu.frame, pdu.raw, p))
				out, err := p.AppendBinary(nil)
				if err != nil {
					t.Fatalf("frame %d: encode: %v", pdu.frame, err)
				}
				if !bytes.Equal(out, pdu.raw) {
					t.Errorf("frame %d: re-encoding differs\n got %x\nwant %x", pdu.frame, out, pdu.raw)
				}
			}
			path := filepath.Join("testdata", "golden", name+".json")
			if *update {
				b, _ := json.MarshalIndent(got, "", "  ")
				if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			var want []goldenPacket
			if err := json.Unmarshal(b, &want); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("decoded values differ from %s (-want +got):\n%s", path, diff)
			}
		})
	}
}

// TestFuzzedCapture: the fuzzed packet from the tcpdump suite (it claims
// 30,547 bytes and has 40) is rejected with a typed error.
func TestFuzzedCapture(t *testing.T) {
	pdus := readPDUs(t, "tcpdump__pb_nhrp_1")
	if len(pdus) != 1 {
		t.Fatalf("want 1 PDU, got %d", len(pdus))
	}
	_, err := Decode(pdus[0].raw)
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("want *Error, got %v", err)
	}
	if !errors.Is(err, ErrTruncated) || e.Code != ErrorProtocol || e.Offset != 10 {
		t.Fatalf("got %v (code %d offset %d), want truncated protocol error at offset 10", err, e.Code, e.Offset)
	}
}
