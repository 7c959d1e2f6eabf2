package wire

import (
	"bufio"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
)

// tcpdumpLine matches the NHRP line of tcpdump's decode in the captures'
// *.tcpdump-expected.out files: an independent decoder's view of the
// mandatory part and the first CIE.
var tcpdumpLine = regexp.MustCompile(`NHRP: (\w+ \w+), (?:id (\d+)|code <[^>]*>), hopcnt (\d+), src nbma ([\d.]+), ([\d.]+) -> ([\d.]+)(?: \(code (\d+), pl (\d+), mtu (\d+), htime (\d+), pref (\d+)(?:, nbma ([\d.]+), proto ([\d.]+))?\))?`)

var tcpdumpTypes = map[string]Type{
	"res request": TypeResolutionRequest, "res reply": TypeResolutionReply,
	"reg request": TypeRegistrationRequest, "reg reply": TypeRegistrationReply,
	"traffic indication": TypeTrafficIndication,
}

// TestTcpdumpExpected compares our decode of every Cisco capture with what
// tcpdump printed for the same packets.
func TestTcpdumpExpected(t *testing.T) {
	for _, name := range ciscoCaptures {
		pdus := readPDUs(t, name)
		f, err := os.Open(filepath.Join("testdata", "captures", name+".tcpdump-expected.out"))
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		i := 0
		for sc.Scan() {
			m := tcpdumpLine.FindStringSubmatch(sc.Text())
			if m == nil {
				continue
			}
			if i >= len(pdus) {
				t.Fatalf("%s: more tcpdump lines than PDUs", name)
			}
			p, err := Decode(pdus[i].raw)
			if err != nil {
				t.Fatalf("%s frame %d: %v", name, pdus[i].frame, err)
			}
			i++
			check := func(what string, got any, want string) {
				t.Helper()
				if want == "" {
					return
				}
				var g string
				switch v := got.(type) {
				case string:
					g = v
				default:
					g = strconv.FormatUint(toU64(v), 10)
				}
				if g != want {
					t.Errorf("%s frame %d: %s = %s, tcpdump says %s", name, pdus[i-1].frame, what, g, want)
				}
			}
			if want, ok := tcpdumpTypes[m[1]]; !ok || p.Type != want {
				t.Errorf("%s: type %v, tcpdump says %q", name, p.Type, m[1])
			}
			check("request id", p.RequestID, m[2])
			check("hop count", p.HopCount, m[3])
			check("src nbma", p.SrcNBMA.String(), m[4])
			check("src proto", p.SrcProto.String(), m[5])
			check("dst proto", p.DstProto.String(), m[6])
			if m[7] != "" {
				if len(p.CIEs) == 0 {
					t.Fatalf("%s: no CIE", name)
				}
				c := p.CIEs[0]
				check("code", c.Code, m[7])
				check("prefix", c.PrefixLen, m[8])
				check("mtu", c.MTU, m[9])
				check("holding time", c.HoldingTime, m[10])
				check("preference", c.Preference, m[11])
				check("cie nbma", c.NBMA.String(), m[12])
				check("cie proto", c.Proto.String(), m[13])
			}
		}
		f.Close()
		if i != len(pdus) {
			t.Errorf("%s: tcpdump decoded %d packets, we have %d PDUs", name, i, len(pdus))
		}
	}
}

func toU64(v any) uint64 {
	switch v := v.(type) {
	case uint8:
		return uint64(v)
	case uint16:
		return uint64(v)
	case uint32:
		return uint64(v)
	case CIECode:
		return uint64(v)
	}
	panic("unsupported type")
}
