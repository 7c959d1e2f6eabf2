package ctl

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
)

const capturesDir = "../nhrp/wire/testdata/captures/"

// runCtl runs dmvpnctl with args and returns stdout, stderr and the exit
// status.
func runCtl(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	code := Run(context.Background(), args, strings.NewReader(""), &out, &errb, nil)
	return out.String(), errb.String(), code
}

// jsonLines decodes one JSON object per line.
func jsonLines(t *testing.T, s string) []map[string]any {
	t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(s))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		out = append(out, m)
	}
	return out
}

// keyValues picks the required keys of the decode output.
func keyValues(m map[string]any) map[string]any {
	out := map[string]any{}
	for _, k := range []string{"frame", "type", "hop_count", "request_id", "flags", "src_nbma", "src_proto", "dst_proto"} {
		out[k] = m[k]
	}
	var cies []string
	for _, c := range m["cies"].([]any) {
		c := c.(map[string]any)
		cies = append(cies, strings.Join([]string{jsonNum(c["code"]), jsonNum(c["prefix_len"]), jsonNum(c["mtu"]), jsonNum(c["holding_time"]), c["nbma"].(string), c["proto"].(string)}, "/"))
	}
	out["cies"] = cies
	var exts []string
	for _, e := range m["extensions"].([]any) {
		e := e.(map[string]any)
		s := jsonNum(e["type"])
		if e["compulsory"].(bool) {
			s += "C"
		}
		if c, ok := e["cies"]; ok {
			s += "[" + jsonNum(float64(len(c.([]any)))) + "]"
		}
		exts = append(exts, s)
	}
	out["extensions"] = exts
	return out
}

func jsonNum(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// TestDecodeTrace: the four packets of the phase-3 trace, with the values
// checked against tshark's decode.
func TestDecodeTrace(t *testing.T) {
	out, errs, code := runCtl(t, "decode", capturesDir+"tcpdump__nhrp-trace.pcap")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	var got []map[string]any
	for _, m := range jsonLines(t, out) {
		got = append(got, keyValues(m))
	}
	auth := "7C"
	want := []map[string]any{
		{"frame": 1.0, "type": 8.0, "hop_count": 255.0, "request_id": 0.0, "flags": 0.0,
			"src_nbma": "192.168.200.1", "src_proto": "10.255.255.1", "dst_proto": "10.255.255.3",
			"cies": []string(nil), "extensions": []string{"4C[0]", "5C[0]", auth, "9[0]", "0C"}},
		{"frame": 2.0, "type": 1.0, "hop_count": 255.0, "request_id": 5.0, "flags": 51202.0,
			"src_nbma": "192.168.200.3", "src_proto": "10.255.255.3", "dst_proto": "10.255.255.2",
			"cies": []string{"0/0/1514/7200//"}, "extensions": []string{"3C[0]", "4C[0]", "5C[0]", auth, "9[0]", "0C"}},
		{"frame": 3.0, "type": 1.0, "hop_count": 254.0, "request_id": 5.0, "flags": 51202.0,
			"src_nbma": "192.168.200.3", "src_proto": "10.255.255.3", "dst_proto": "10.255.255.2",
			"cies": []string{"0/0/1514/7200//"}, "extensions": []string{"3C[0]", "4C[1]", "5C[0]", auth, "9[0]", "0C"}},
		{"frame": 4.0, "type": 2.0, "hop_count": 255.0, "request_id": 5.0, "flags": 63490.0,
			"src_nbma": "192.168.200.3", "src_proto": "10.255.255.3", "dst_proto": "10.255.255.2",
			"cies": []string{"0/32/1514/7200/192.168.200.2/10.255.255.2"}, "extensions": []string{"3C[1]", "4C[1]", "5C[0]", auth, "9[0]", "0C"}},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("(-want +got):\n%s", diff)
	}
	lines := jsonLines(t, out)
	if pw := lines[0]["extensions"].([]any)[2].(map[string]any)["password"]; pw != "secret" {
		t.Errorf("password %v", pw)
	}
	if k := lines[0]["gre_key"]; k != 1000.0 {
		t.Errorf("gre_key %v", k)
	}
}

func TestDecodeRegistrationVLAN(t *testing.T) {
	out, _, code := runCtl(t, "decode", capturesDir+"tcpdump__NHRP_registration.pcap")
	lines := jsonLines(t, out)
	if code != 0 || len(lines) != 4 {
		t.Fatalf("exit %d, %d lines", code, len(lines))
	}
	nat := lines[1]["extensions"].([]any)[4].(map[string]any)
	cie := nat["cies"].([]any)[0].(map[string]any)
	if nat["type"] != 9.0 || cie["nbma"] != "169.254.100.5" || cie["proto"] != "155.1.0.5" {
		t.Fatalf("NAT extension %v", nat)
	}
}

// TestDecodeSkipsNonGRE: the fuzzed capture is IP protocol 54, not GRE.
func TestDecodeSkipsNonGRE(t *testing.T) {
	out, errs, code := runCtl(t, "decode", capturesDir+"tcpdump__pb_nhrp_1.pcap")
	if code != 0 || out != "" {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, out, errs)
	}
	out, _, code = runCtl(t, "decode", "--text", capturesDir+"tcpdump__pb_nhrp_1.pcap")
	if code != 0 || !strings.Contains(out, "1 frames, 0 NHRP packets, 1 other frames skipped") {
		t.Fatalf("exit %d, %q", code, out)
	}
}

// TestDecodeError: NHRP inside GRE that does not decode is printed with
// an error key; the next packet still decodes.
func TestDecodeError(t *testing.T) {
	good, err := os.ReadFile(capturesDir + "tcpdump__ios_nhrp.pcap")
	if err != nil {
		t.Fatal(err)
	}
	r, err := pcapgo.NewReader(bytes.NewReader(good))
	if err != nil {
		t.Fatal(err)
	}
	frame, _, err := r.ReadPacketData()
	if err != nil {
		t.Fatal(err)
	}
	bad := append([]byte(nil), frame...)
	bad[len(bad)-3] ^= 0xff // corrupt the NHRP checksum coverage
	path := filepath.Join(t.TempDir(), "mixed.pcap")
	f, _ := os.Create(path)
	w := pcapgo.NewWriter(f)
	w.WriteFileHeader(65535, layers.LinkTypeEthernet)
	for i, fr := range [][]byte{bad, frame} {
		w.WritePacket(gopacket.CaptureInfo{Timestamp: time.Unix(int64(i), 0), CaptureLength: len(fr), Length: len(fr)}, fr)
	}
	f.Close()
	out, _, code := runCtl(t, "decode", path)
	lines := jsonLines(t, out)
	if code != 0 || len(lines) != 2 {
		t.Fatalf("exit %d, %q", code, out)
	}
	if e, _ := lines[0]["error"].(string); !strings.Contains(e, "checksum") || lines[0]["frame"] != 1.0 {
		t.Errorf("first line %v", lines[0])
	}
	if _, ok := lines[1]["error"]; ok || lines[1]["type"] != 3.0 || lines[1]["frame"] != 2.0 {
		t.Errorf("second line %v", lines[1])
	}
}

func TestDecodeText(t *testing.T) {
	out, _, code := runCtl(t, "decode", "--text", capturesDir+"tcpdump__nhrp-trace.pcap")
	for _, want := range []string{
		"frame 1: 192.168.200.1 -> 192.168.200.3 GRE key 1000",
		"Traffic Indication (8)",
		"quoted packet: IPv4 10.255.255.3 -> 10.255.255.2 proto 1",
		"Resolution Reply (2)",
		`cleartext "secret"`,
		"4 frames, 4 NHRP packets, 0 other frames skipped",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in:\n%s", want, out)
		}
	}
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
}

func TestDecodeErrors(t *testing.T) {
	if _, errs, code := runCtl(t, "decode", "/nonexistent.pcap"); code != 1 || !strings.Contains(errs, "no such file") {
		t.Errorf("missing file: exit %d, %q", code, errs)
	}
	if _, errs, code := runCtl(t, "decode"); code == 0 || errs == "" {
		t.Errorf("no argument: exit %d, %q", code, errs)
	}
	path := filepath.Join(t.TempDir(), "x.txt")
	os.WriteFile(path, []byte("not a capture at all"), 0o644)
	if _, errs, code := runCtl(t, "decode", path); code != 1 || !strings.Contains(errs, "pcap") {
		t.Errorf("text file: exit %d, %q", code, errs)
	}
}
