// Command greinject sends keyed GRE packets with a forged source address
// on a raw socket, around every rule and SA: the plaintext GRE an attacker
// (or a misrouted peer) would send. Tests use it to check that plaintext
// GRE is never accepted where IPsec is required.
package main

import (
	"encoding/binary"
	"flag"
	"fmt"
	"net/netip"
	"os"

	"golang.org/x/sys/unix"

	"github.com/opendmvpn/dmvpn/gre"
)

func main() {
	src := flag.String("src", "", "forged outer source address")
	dst := flag.String("dst", "", "outer destination address")
	key := flag.Uint("key", 0, "GRE key")
	proto := flag.Uint("proto", gre.ProtoIPv4, "GRE protocol type (0x0800 IPv4, 0x2001 NHRP)")
	payload := flag.String("payload", "", "hex of the GRE payload")
	count := flag.Int("n", 1, "packets to send")
	flag.Parse()
	if err := run(*src, *dst, uint32(*key), uint16(*proto), *payload, *count); err != nil {
		fmt.Fprintln(os.Stderr, "greinject:", err)
		os.Exit(1)
	}
}

func run(src, dst string, key uint32, proto uint16, payloadHex string, n int) error {
	s, err := netip.ParseAddr(src)
	if err != nil {
		return err
	}
	d, err := netip.ParseAddr(dst)
	if err != nil {
		return err
	}
	var payload []byte
	if _, err := fmt.Sscanf(payloadHex, "%x", &payload); err != nil && payloadHex != "" {
		return fmt.Errorf("payload: %w", err)
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_RAW)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	h := gre.Header{Protocol: proto, HasKey: true, Key: key}
	pkt := make([]byte, 20+h.Len(), 20+h.Len()+len(payload))
	pkt = append(pkt, payload...)
	pkt[0], pkt[8], pkt[9] = 0x45, 64, 47
	binary.BigEndian.PutUint16(pkt[2:], uint16(len(pkt)))
	s4, d4 := s.As4(), d.As4()
	copy(pkt[12:], s4[:])
	copy(pkt[16:], d4[:])
	h.Marshal(pkt[20:])
	for i := 0; i < n; i++ {
		if err := unix.Sendto(fd, pkt, 0, &unix.SockaddrInet4{Addr: d4}); err != nil {
			return err
		}
	}
	return nil
}
