// Package tsharktest writes NHRP packets into pcap files and runs tshark
// on them: the independent check that every packet we emit is well-formed
// NHRP. Tests use it; it needs tshark on the PATH.
package tsharktest

import (
	"bytes"
	"encoding/csv"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
)

// ErrNoTshark is returned when tshark is not installed.
var ErrNoTshark = errors.New("tshark is missing: install it (make test does: apt-get install tshark) to run the independent NHRP check")

// Frame is an NHRP packet with the addresses of its outer IP header.
type Frame struct {
	Src, Dst netip.Addr
	Key      uint32
	NHRP     []byte
}

// WritePcap writes the frames as Ethernet/IP/GRE (keyed) frames.
func WritePcap(path string, frames []Frame) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	w := pcapgo.NewWriter(f)
	if err := w.WriteFileHeader(65535, layers.LinkTypeEthernet); err != nil {
		return err
	}
	for i, fr := range frames {
		eth := &layers.Ethernet{SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}}
		gre := &layers.GRE{KeyPresent: true, Key: fr.Key, Protocol: layers.EthernetType(0x2001)}
		var ip gopacket.SerializableLayer
		if fr.Src.Is6() {
			eth.EthernetType = layers.EthernetTypeIPv6
			ip = &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolGRE,
				SrcIP: net.IP(fr.Src.AsSlice()), DstIP: net.IP(fr.Dst.AsSlice())}
		} else {
			eth.EthernetType = layers.EthernetTypeIPv4
			ip = &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolGRE,
				SrcIP: net.IP(fr.Src.AsSlice()), DstIP: net.IP(fr.Dst.AsSlice())}
		}
		buf := gopacket.NewSerializeBuffer()
		opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
		if err := gopacket.SerializeLayers(buf, opts, eth, ip, gre, gopacket.Payload(fr.NHRP)); err != nil {
			return err
		}
		b := buf.Bytes()
		ci := gopacket.CaptureInfo{Timestamp: time.Unix(1700000000, int64(i)*1000), CaptureLength: len(b), Length: len(b)}
		if err := w.WritePacket(ci, b); err != nil {
			return err
		}
	}
	return nil
}

// Fields runs tshark on a capture and returns the named fields of every
// frame (multiple occurrences joined by commas).
func Fields(path string, fields ...string) ([]map[string]string, error) {
	if _, err := exec.LookPath("tshark"); err != nil {
		return nil, ErrNoTshark
	}
	args := []string{"-r", path, "-n", "-T", "fields", "-E", "separator=|", "-E", "occurrence=a", "-E", "aggregator=,", "-E", "quote=n"}
	for _, f := range fields {
		args = append(args, "-e", f)
	}
	var stderr bytes.Buffer
	cmd := exec.Command("tshark", args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("tshark: %w: %s", err, stderr.String())
	}
	r := csv.NewReader(bytes.NewReader(out))
	r.Comma = '|'
	r.FieldsPerRecord = len(fields)
	r.LazyQuotes = true
	rows, err := r.ReadAll()
	if err != nil {
		return nil, fmt.Errorf("tshark output: %w", err)
	}
	var res []map[string]string
	for _, row := range rows {
		m := make(map[string]string, len(fields))
		for i, f := range fields {
			m[f] = row[i]
		}
		res = append(res, m)
	}
	return res, nil
}

// Problem is a frame tshark did not dissect cleanly.
type Problem struct {
	Frame  string
	Detail string
}

// CheckNHRP runs tshark on a capture and returns every frame that is not
// NHRP, has a bad NHRP checksum, or carries expert information other than
// what allowed returns true for (tshark 4.0's known quirks, handled by the
// caller narrowly). It also returns the NHRP packet types tshark saw.
func CheckNHRP(path string, allowed func(frame int, msg string) bool) ([]Problem, []string, error) {
	rows, err := Fields(path, "frame.number", "frame.protocols", "nhrp.hdr.op.type", "nhrp.hdr.chksum.status", "_ws.expert.message")
	if err != nil {
		return nil, nil, err
	}
	var probs []Problem
	var types []string
	for i, r := range rows {
		if !strings.Contains(r["frame.protocols"], "nhrp") {
			probs = append(probs, Problem{r["frame.number"], "not dissected as NHRP: " + r["frame.protocols"]})
			continue
		}
		t, _, _ := strings.Cut(r["nhrp.hdr.op.type"], ",")
		types = append(types, t)
		for _, st := range strings.Split(r["nhrp.hdr.chksum.status"], ",") {
			if st != "1" {
				probs = append(probs, Problem{r["frame.number"], "checksum status " + r["nhrp.hdr.chksum.status"]})
			}
		}
		for _, m := range strings.Split(r["_ws.expert.message"], ",") {
			if m != "" && (allowed == nil || !allowed(i+1, m)) {
				probs = append(probs, Problem{r["frame.number"], "expert info: " + m})
			}
		}
	}
	return probs, types, nil
}
