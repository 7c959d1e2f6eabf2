package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/osrg/gobgp/v4/pkg/packet/bgp"
)

// The simulated spokes: spoke i has its own tunnel address (a local route
// of the generator's namespace owns 172.16.128.0/17), its own AS and a /22
// its "certificate" allows, of which it announces four /24s.

// spokeAddr is spoke i's tunnel address.
func spokeAddr(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{172, 16, byte(128 + i/250), byte(1 + i%250)})
}

// spokeAS is spoke i's AS (four octets: above 65535).
func spokeAS(i int) uint32 { return 100000 + uint32(i) }

// spokeNet is the network spoke i may announce inside.
func spokeNet(i int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i / 64), byte((i % 64) * 4), 0}), 22)
}

// spokePrefixes are the n /24s spoke i announces.
func spokePrefixes(i, n int) []netip.Prefix {
	base := spokeNet(i).Addr().As4()
	out := make([]netip.Prefix, n)
	for k := range n {
		b := base
		b[2] += byte(k)
		out[k] = netip.PrefixFrom(netip.AddrFrom4(b), 24)
	}
	return out
}

// maxSpokes is how many spokes the address plan holds (172.16.128.0/17,
// and 10.0.0.0/8 in /22s).
const maxSpokes = 16000

// bulkSpoke is the neighbour that announces many prefixes at once (the
// FIB rate): up to maxBulk /24s of bulkNet.
const (
	bulkSpoke = maxSpokes
	maxBulk   = 16384
)

var bulkNet = netip.MustParsePrefix("100.64.0.0/10")

// bulkPrefixes are the first n /24s of bulkNet.
func bulkPrefixes(n int) []netip.Prefix {
	out := make([]netip.Prefix, n)
	for k := range n {
		out[k] = netip.PrefixFrom(netip.AddrFrom4([4]byte{100, byte(64 + k/256), byte(k % 256), 0}), 24)
	}
	return out
}

// generator speaks BGP for the simulated spokes from one process: a TCP
// session per spoke from its own address, OPEN, KEEPALIVEs, one UPDATE
// with its prefixes once established — GoBGP's packet codec, not GoBGP
// servers. Commands on standard input start, withdraw, announce and stop
// spokes; it reports each session established.
type generator struct {
	hub      netip.Addr
	prefixes int
	// bulk is how many prefixes bulkSpoke announces.
	bulk int

	mu     sync.Mutex
	spokes map[int]*genSpoke
	out    *bufio.Writer
	// batch counts what the last START still waits for.
	batchLeft atomic.Int64
}

// genSpoke is one simulated spoke.
type genSpoke struct {
	i      int
	cancel context.CancelFunc
	mu     sync.Mutex
	conn   net.Conn // the established session, nil otherwise
}

// runGen is the generator role: it reads commands until its input ends.
func runGen() int {
	hub, err := netip.ParseAddr(os.Getenv(envHub))
	if err != nil {
		fmt.Println("FATAL hub address:", err)
		return 1
	}
	prefixes, _ := strconv.Atoi(os.Getenv(envPrefixes))
	g := &generator{hub: hub, prefixes: max(prefixes, 1), spokes: map[int]*genSpoke{}, out: bufio.NewWriter(os.Stdout)}
	fmt.Println("READY")
	readCommands(func(cmd string, arg func(int) int) {
		switch cmd {
		case "START":
			g.start(arg(1), arg(2))
		case "WITHDRAW":
			g.send(arg(1), true)
		case "ANNOUNCE":
			g.send(arg(1), false)
		case "BULK":
			g.bulk = arg(1)
			g.start(bulkSpoke, bulkSpoke+1)
		case "STOP":
			g.stop(arg(1), arg(2))
		default:
			g.printf("ERR unknown command %q", cmd)
		}
	})
	g.stop(0, maxSpokes)
	return 0
}

// readCommands reads the driver's commands from standard input, a line
// each (a word and integer arguments), and hands each to do with its
// arguments (arg(k): the k-th word as an integer, 0 when absent).
func readCommands(do func(cmd string, arg func(int) int)) {
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		f := strings.Fields(in.Text())
		if len(f) == 0 {
			continue
		}
		do(f[0], func(k int) int {
			if len(f) <= k {
				return 0
			}
			v, _ := strconv.Atoi(f[k])
			return v
		})
	}
}

func (g *generator) printf(format string, a ...any) {
	g.mu.Lock()
	defer g.mu.Unlock()
	fmt.Fprintf(g.out, format+"\n", a...)
	g.out.Flush()
}

// start makes spokes [from, to) dial the hub until their sessions are up
// (and again whenever one drops, until stopped).
func (g *generator) start(from, to int) {
	g.batchLeft.Store(int64(to - from))
	for i := from; i < to; i++ {
		ctx, cancel := context.WithCancel(context.Background())
		s := &genSpoke{i: i, cancel: cancel}
		g.mu.Lock()
		if old := g.spokes[i]; old != nil {
			old.cancel()
		}
		g.spokes[i] = s
		g.mu.Unlock()
		go g.spoke(ctx, s)
	}
}

// stop closes the sessions of spokes [from, to) (a NOTIFICATION, Cease)
// and stops them dialing.
func (g *generator) stop(from, to int) {
	g.mu.Lock()
	var stopped []*genSpoke
	for i, s := range g.spokes {
		if i >= from && i < to {
			stopped = append(stopped, s)
			delete(g.spokes, i)
		}
	}
	g.mu.Unlock()
	for _, s := range stopped {
		s.mu.Lock()
		if s.conn != nil {
			_ = write(s.conn, bgp.NewBGPNotificationMessage(bgp.BGP_ERROR_CEASE, bgp.BGP_ERROR_SUB_ADMINISTRATIVE_SHUTDOWN, nil))
		}
		s.mu.Unlock()
		s.cancel()
	}
}

// send makes spoke i withdraw its prefixes, or announce them again.
func (g *generator) send(i int, withdraw bool) {
	g.mu.Lock()
	s := g.spokes[i]
	g.mu.Unlock()
	if s == nil {
		g.printf("ERR spoke %d is not running", i)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn == nil {
		g.printf("ERR spoke %d has no session", i)
		return
	}
	if err := g.update(s.conn, i, withdraw); err != nil {
		g.printf("ERR spoke %d: %v", i, err)
	}
}

// spoke keeps spoke i's session up until ctx ends, dialing again every
// 25 ms while the hub refuses it (not yet a neighbour).
func (g *generator) spoke(ctx context.Context, s *genSpoke) {
	reported := false
	for ctx.Err() == nil {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: spokeAddr(s.i).AsSlice()}, Timeout: 2 * time.Second}
		c, err := d.DialContext(ctx, "tcp", netip.AddrPortFrom(g.hub, 179).String())
		if err == nil {
			g.session(ctx, s, c, &reported)
			c.Close()
		}
		select {
		case <-ctx.Done():
		case <-time.After(25 * time.Millisecond):
		}
	}
}

func write(c net.Conn, m *bgp.BGPMessage) error {
	b, err := m.Serialize()
	if err != nil {
		return err
	}
	_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, err = c.Write(b)
	return err
}

// readMsg reads one message and returns its type (the body is checked
// only for its length).
func readMsg(c net.Conn, buf []byte) (uint8, error) {
	if _, err := io.ReadFull(c, buf[:bgp.BGP_HEADER_LENGTH]); err != nil {
		return 0, err
	}
	l := int(binary.BigEndian.Uint16(buf[16:18]))
	if l < bgp.BGP_HEADER_LENGTH || l > len(buf) {
		return 0, fmt.Errorf("bad message length %d", l)
	}
	if _, err := io.ReadFull(c, buf[bgp.BGP_HEADER_LENGTH:l]); err != nil {
		return 0, err
	}
	return buf[18], nil
}

// keepalive is the hold time the simulated spokes offer (the hub's own,
// if shorter, wins) and a third of it their keepalive interval.
const holdTime = 90

// session runs one BGP session: OPEN, KEEPALIVE, then the UPDATE once the
// hub's KEEPALIVE confirms the session; KEEPALIVEs every holdTime/3.
func (g *generator) session(ctx context.Context, s *genSpoke, c net.Conn, reported *bool) {
	i := s.i
	as := spokeAS(i)
	caps := []bgp.ParameterCapabilityInterface{bgp.NewCapMultiProtocol(bgp.RF_IPv4_UC), bgp.NewCapRouteRefresh(), bgp.NewCapFourOctetASNumber(as)}
	open, err := bgp.NewBGPOpenMessage(bgp.AS_TRANS, holdTime, spokeAddr(i), []bgp.OptionParameterInterface{bgp.NewOptionParameterCapability(caps)})
	if err != nil || write(c, open) != nil {
		return
	}
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	defer func() {
		s.mu.Lock()
		s.conn = nil
		s.mu.Unlock()
	}()
	buf := make([]byte, 65535)
	established, gotOpen := false, false
	lastSent := time.Now()
	for {
		_ = c.SetReadDeadline(time.Now().Add(holdTime / 3 * time.Second))
		t, err := readMsg(c, buf)
		var ne net.Error
		switch {
		case err != nil && errors.As(err, &ne) && ne.Timeout() && established:
			t = 0 // time for a KEEPALIVE
		case err != nil:
			if established && ctx.Err() == nil {
				g.printf("DOWN %d %v", i, err)
			} else if os.Getenv("BENCHBGP_LOG") != "" && ctx.Err() == nil {
				g.printf("FAIL %d gotopen=%v %v", i, gotOpen, err)
			}
			return
		}
		switch t {
		case bgp.BGP_MSG_OPEN:
			gotOpen = true
			if write(c, bgp.NewBGPKeepAliveMessage()) != nil {
				return
			}
			lastSent = time.Now()
			continue
		case bgp.BGP_MSG_KEEPALIVE:
			if !established {
				established = true
				s.mu.Lock()
				s.conn = c
				err := g.update(c, i, false)
				s.mu.Unlock()
				if err != nil {
					return
				}
				if !*reported {
					*reported = true
					g.printf("EST %d %d", i, time.Now().UnixNano())
					if g.batchLeft.Add(-1) == 0 {
						g.printf("ESTALL %d", time.Now().UnixNano())
					}
				}
			}
		case bgp.BGP_MSG_ROUTE_REFRESH:
			s.mu.Lock()
			err := g.update(c, i, false)
			s.mu.Unlock()
			if err != nil {
				return
			}
		case bgp.BGP_MSG_NOTIFICATION:
			if os.Getenv("BENCHBGP_LOG") != "" && ctx.Err() == nil {
				g.printf("NOTIF %d %d/%d established %v", i, buf[19], buf[20], established)
			}
			if established && ctx.Err() == nil {
				g.printf("DOWN %d notification %d/%d", i, buf[19], buf[20])
			}
			return
		}
		if established && time.Since(lastSent) >= holdTime/3*time.Second {
			s.mu.Lock()
			err := write(c, bgp.NewBGPKeepAliveMessage())
			s.mu.Unlock()
			if err != nil {
				return
			}
			lastSent = time.Now()
		}
	}
}

// update sends spoke i's prefixes, or withdraws them: in one UPDATE, or
// for bulkSpoke as many as it takes.
func (g *generator) update(c net.Conn, i int, withdraw bool) error {
	ps := spokePrefixes(i, g.prefixes)
	if i == bulkSpoke {
		ps = bulkPrefixes(g.bulk)
	}
	for len(ps) > 0 {
		k := min(len(ps), 900) // 4 bytes each: within 4,096-byte messages
		if err := g.updateOne(c, i, ps[:k], withdraw); err != nil {
			return err
		}
		ps = ps[k:]
	}
	return nil
}

func (g *generator) updateOne(c net.Conn, i int, ps []netip.Prefix, withdraw bool) error {
	var nlri []bgp.PathNLRI
	for _, p := range ps {
		n, err := bgp.NewIPAddrPrefix(p)
		if err != nil {
			return err
		}
		nlri = append(nlri, bgp.PathNLRI{NLRI: n})
	}
	if withdraw {
		return write(c, bgp.NewBGPUpdateMessage(nlri, nil, nil))
	}
	nh, err := bgp.NewPathAttributeNextHop(spokeAddr(i))
	if err != nil {
		return err
	}
	attrs := []bgp.PathAttributeInterface{
		bgp.NewPathAttributeOrigin(bgp.BGP_ORIGIN_ATTR_TYPE_IGP),
		bgp.NewPathAttributeAsPath([]bgp.AsPathParamInterface{bgp.NewAs4PathParam(bgp.BGP_ASPATH_ATTR_TYPE_SEQ, []uint32{spokeAS(i)})}),
		nh,
	}
	return write(c, bgp.NewBGPUpdateMessage(nil, attrs, nlri))
}
