package userspace

import (
	"encoding/binary"
	"os"
	"testing"

	"golang.zx2c4.com/wireguard/tun"

	"github.com/opendmvpn/dmvpn/gre"
)

// discardTUN is a tun.Device that accepts and drops writes.
type discardTUN struct{ writes int }

func (t *discardTUN) File() *os.File                         { return nil }
func (t *discardTUN) Read([][]byte, []int, int) (int, error) { return 0, os.ErrClosed }
func (t *discardTUN) Write(b [][]byte, off int) (int, error) { t.writes += len(b); return len(b), nil }
func (t *discardTUN) MTU() (int, error)                      { return 1472, nil }
func (t *discardTUN) Name() (string, error)                  { return "fuzz0", nil }
func (t *discardTUN) Events() <-chan tun.Event               { return nil }
func (t *discardTUN) Close() error                           { return nil }
func (t *discardTUN) BatchSize() int                         { return 1 }

func fuzzDevice(t testing.TB) *Device {
	null, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { null.Close() })
	d := &Device{cfg: gre.Config{Name: "fuzz0", Key: 1001}, tun: &discardTUN{}, tunFile: null, nhrp: make(chan nhrpPacket, 1)}
	d.mtu.Store(1472)
	return d
}

// greDatagram builds outer IPv4 + GRE(key) + payload.
func greDatagram(key uint32, proto uint16, payload []byte) []byte {
	b := make([]byte, 28+len(payload))
	b[0], b[9] = 0x45, 47
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
	copy(b[12:], []byte{198, 51, 100, 1})
	copy(b[16:], []byte{203, 0, 113, 1})
	(&gre.Header{Protocol: proto, HasKey: true, Key: key}).Marshal(b[20:])
	copy(b[28:], payload)
	return b
}

// FuzzReceive feeds arbitrary datagrams to the receive path: nothing may
// panic, and every datagram is either delivered or counted as a drop.
func FuzzReceive(f *testing.F) {
	f.Add(greDatagram(1001, gre.ProtoIPv4, ipv4Packet("10.1.0.2", "10.2.0.2", protoICMP, true, 16)))
	f.Add(greDatagram(1001, gre.ProtoNHRP, []byte{0, 1, 8, 0}))
	f.Add(greDatagram(1002, gre.ProtoIPv4, ipv4Packet("10.1.0.2", "10.2.0.2", protoICMP, true, 16)))
	big := ipv4Packet("10.1.0.2", "10.2.0.2", protoTCP, true, 20+3000)
	big[32] = 5 << 4
	f.Add(greDatagram(1001, gre.ProtoIPv4, big))
	f.Add([]byte{0x45, 0, 0, 20})
	d := fuzzDevice(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		before := total(d.stats.Snapshot())
		buf := make([]byte, len(b)+rxTunOffset+vnetHdrLen)
		copy(buf, b)
		var out [][]byte
		p := d.receive(buf, len(b), 1, &out)
		if p != nil {
			out = append(out, p)
		}
		d.rxCount.flush(d)
		d.flushTun(&out)
		if total(d.stats.Snapshot()) == before {
			t.Fatalf("datagram %x neither delivered nor counted", b)
		}
		select {
		case <-d.nhrp:
		default:
		}
	})
}

// total sums what the receive path counts for every datagram.
func total(c gre.Counters) uint64 {
	n := c.RxPackets + c.NHRPRx
	for _, v := range c.Drops {
		n += v
	}
	return n
}
