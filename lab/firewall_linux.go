//go:build linux

package lab

import (
	"context"
	be "encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"time"

	"golang.org/x/sys/unix"

	"github.com/opendmvpn/dmvpn/daemon/control"
	"github.com/opendmvpn/dmvpn/gre"
)

// firewallDemo shows the firewall at work: a GRE packet forged from the
// internet router with the first spoke's address, in clear (no IPsec
// around it), is sent to hub1, and hub1's policy drops and counts it.
func (l *Lab) firewallDemo(ctx context.Context, t Topology, st *State) error {
	h := t.hubs()[0]
	hub, _ := st.node(h.Site.Name)
	inet, err := st.node("inet")
	if err != nil {
		return err
	}
	if !st.IPsec {
		// NHRP and GRE run in clear on purpose: the policy takes GRE
		// from the internet zone (in_gre), so there is no drop to show.
		fmt.Fprintf(l.Out, "\n======== %s: show firewall (no IPsec: GRE from the internet is accepted, rule in_gre) ========\n", h.Site.Name)
		l.ctl(ctx, hub.Daemon.Socket, "show", "firewall")
		return nil
	}
	src := t.spokes()[0].Site.NBMA.Addr()
	dst := h.Site.NBMA.Addr()
	c := control.NewClient(hub.Daemon.Socket)
	dropped := func() (uint64, error) {
		var r control.FirewallResponse
		if err := c.Get(ctx, control.PathFirewall, &r); err != nil {
			return 0, err
		}
		n := uint64(0)
		if r.Policy != nil {
			for _, ch := range r.Policy.Chains {
				for _, ru := range ch.Rules {
					if ru.Name == "in_gre_clear" {
						n += ru.Packets
					}
				}
			}
		}
		if r.Dataplane != nil && r.Dataplane.FastPath {
			n += r.Dataplane.IngressRefused // outer GRE past netfilter
		}
		return n, nil
	}
	before, err := dropped()
	if err != nil {
		return err
	}
	fmt.Fprintf(l.Out, "\n======== the firewall: a GRE packet in clear, injected at %s ========\n", h.Site.Name)
	fmt.Fprintf(l.Out, "From the internet router, a GRE packet (key %#x) with %s's address %s as its source, not under IPsec, to %s…\n",
		t.Key, t.spokes()[0].Site.Name, src, dst)
	if err := injectGRE(inet.NS, src, dst, t.Key); err != nil {
		return fmt.Errorf("injecting GRE: %w", err)
	}
	var after uint64
	err = waitUntil(ctx, 5*time.Second, func() (bool, error) {
		n, err := dropped()
		after = n
		return n > before, err
	})
	if err != nil {
		return fmt.Errorf("%s did not count the injected GRE as dropped (%d before, %d after): %w", h.Site.Name, before, after, err)
	}
	fmt.Fprintf(l.Out, "%s dropped it: rule in_gre_clear (GRE without IPsec) counted %d packet(s).\n", h.Site.Name, after-before)
	fmt.Fprintf(l.Out, "\n======== %s: show firewall ========\n", h.Site.Name)
	l.ctl(ctx, hub.Daemon.Socket, "show", "firewall")
	return nil
}

// injectGRE sends one keyed GRE packet with a forged source address from
// inside a namespace, on a raw socket: plaintext GRE as an attacker would
// send it. Its payload is an ICMP echo request to the tunnel's hub
// address, which the hub would answer if it accepted the packet.
func injectGRE(ns string, src, dst netip.Addr, key uint32) error {
	errc := make(chan error, 1)
	go func() {
		// The thread enters the namespace and dies with the goroutine:
		// it never serves another goroutine.
		runtime.LockOSThread()
		errc <- func() error {
			f, err := os.Open("/run/netns/" + ns)
			if err != nil {
				return err
			}
			defer f.Close()
			if err := unix.Unshare(unix.CLONE_FS); err != nil {
				return err
			}
			if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
				return fmt.Errorf("entering %s: %w", ns, err)
			}
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_RAW)
			if err != nil {
				return err
			}
			defer unix.Close(fd)
			pkt := grePacket(src, dst, key)
			return unix.Sendto(fd, pkt, 0, &unix.SockaddrInet4{Addr: dst.As4()})
		}()
	}()
	return <-errc
}

// grePacket builds outer IPv4 + keyed GRE + inner IPv4 ICMP echo.
func grePacket(src, dst netip.Addr, key uint32) []byte {
	inner := make([]byte, 28)
	inner[0], inner[8], inner[9] = 0x45, 64, 1
	be.BigEndian.PutUint16(inner[2:], uint16(len(inner)))
	in4, dst4 := netip.MustParseAddr("10.1.0.2").As4(), netip.MustParseAddr("172.16.0.1").As4()
	copy(inner[12:], in4[:])
	copy(inner[16:], dst4[:])
	be.BigEndian.PutUint16(inner[10:], checksum(inner[:20]))
	inner[20] = 8 // echo request
	be.BigEndian.PutUint16(inner[22:], checksum(inner[20:]))
	h := gre.Header{Protocol: gre.ProtoIPv4, HasKey: true, Key: key}
	pkt := make([]byte, 20+h.Len(), 20+h.Len()+len(inner))
	pkt = append(pkt, inner...)
	pkt[0], pkt[8], pkt[9] = 0x45, 64, 47
	be.BigEndian.PutUint16(pkt[2:], uint16(len(pkt)))
	s4, d4 := src.As4(), dst.As4()
	copy(pkt[12:], s4[:])
	copy(pkt[16:], d4[:])
	h.Marshal(pkt[20:])
	return pkt
}

func checksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}
