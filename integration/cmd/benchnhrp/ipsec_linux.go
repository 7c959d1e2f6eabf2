package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/strongswan/govici/vici"

	"github.com/opendmvpn/dmvpn/internal/pki"
	"github.com/opendmvpn/dmvpn/ipsec"
	"github.com/opendmvpn/dmvpn/nhrp/wire"
)

// In IPsec mode the simulated spokes are real IKE peers: charons in load
// namespaces (ipsecPerCharon spokes each), each with a connection and a
// certificate (OU=GRE= its tunnel address) per spoke, each from its own
// NBMA address; a spoke's registration goes out as soon as its CHILD_SA
// is up, inside it.

// ipsecPerCharon is how many spokes one simulator charon carries: one
// charon with its single kernel-libipsec does not set up more than about
// 150 SAs on this machine, so more spokes take more charons, each in its
// own load namespace.
const ipsecPerCharon = 100

// ipsecWindow is how many SAs one simulator charon sets up at once. The
// simulated spokes share the hub's two cores: all of them at once (100
// per charon) make every charon's IKE_AUTH retransmissions give up
// (0.5 s, three tries, as dmvpnd's spokes) before the hub answers, and
// each new attempt costs the hub another key exchange — a storm no real
// set of spokes, each with a CPU of its own, would make.
const ipsecWindow = 10

// ipsecCharons is how many simulator charons (load namespaces) n spokes take.
func ipsecCharons(n int) int { return (n + ipsecPerCharon - 1) / ipsecPerCharon }

// ipsecSpokeNBMA numbers the IPsec spokes' NBMA addresses: spoke i is in
// load namespace i/ipsecPerCharon, at 198.18.<namespace>.<1+i%per> (the
// benchmarking range, configured on that namespace's uplink: charon needs
// them on an interface; the internet router routes the /24 to it).
func ipsecSpokeNBMA(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{198, 18, byte(i / ipsecPerCharon), byte(1 + i%ipsecPerCharon)})
}

// makePKI writes the CA, the hub's and n spokes' certificates to dir.
func makePKI(dir string, n int) error {
	ca, err := pki.NewCA("C=FI, O=Example, CN=Example DMVPN CA")
	if err != nil {
		return err
	}
	if _, err := ca.WriteCA(dir, "ca"); err != nil {
		return err
	}
	is, err := ca.IssueDN("C=FI, O=Example, OU=GRE=" + hubProto.String() + ", CN=hub")
	if err != nil {
		return err
	}
	if _, _, err := is.Write(dir, "hub"); err != nil {
		return err
	}
	for i := range n {
		is, err := ca.IssueDN(fmt.Sprintf("C=FI, O=Example, OU=GRE=%s, CN=s%d", spokeProto(i), i))
		if err != nil {
			return err
		}
		if _, _, err := is.Write(dir, fmt.Sprintf("s%d", i)); err != nil {
			return err
		}
	}
	return nil
}

// ipsecResult is what the IPsec load generator measured.
type ipsecResult struct {
	Single time.Duration `json:"single"` // one spoke: initiate → registration reply
	All    time.Duration `json:"all"`    // the others at once: initiate → last reply
	Resets int           `json:"resets"` // SAs reset because nothing came back over them
}

// ipsecPart is what one load child (one simulator charon) reports when
// its spokes are all registered: when it started initiating them and when
// the last reply came (Unix nanoseconds), so that the parent takes the
// span over every child.
type ipsecPart struct {
	Start  int64 `json:"start"`
	Last   int64 `json:"last"`
	Resets int   `json:"resets"`
}

// ipsecLoad drives the simulator's charon.
type ipsecLoad struct {
	g      *loadgen
	ch     *ipsec.Charon
	cmd    *vici.Session
	ev     *vici.Session
	evc    chan vici.Event
	from   int // the spokes [from, n) are this charon's
	n      int
	dpd    time.Duration // the spokes' dpd_delay
	byAddr map[netip.Addr]int
	mu     sync.Mutex
	want   []bool      // initiated: to be registered
	upAt   []time.Time // when its CHILD_SA last came up
	initAt []time.Time // when it was last initiated
	resets int         // SAs torn down and brought up again (silent)
	sent   []time.Time // last registration sent, per spoke
	got    []time.Time // last positive reply, per spoke
	id     uint32
}

func startIPsecLoad(ctx context.Context, g *loadgen, dir string, from, n int, dpd time.Duration) (*ipsecLoad, error) {
	ch, err := ipsec.StartCharon(ctx, ipsec.Config{Dir: filepath.Join(dir, fmt.Sprintf("state-load%d", from/ipsecPerCharon)),
		DPDDelay: dpd, RetransmitTimeout: 500 * time.Millisecond, RetransmitTries: 3}, ipsec.ModeUserspace, nil)
	if err != nil {
		return nil, err
	}
	// The simulated spokes share one destination, the hub: charon keeps a
	// single route to it in its table and removes it with whichever SA
	// installed it. A route of our own sends their GRE into the TUN (the
	// load generator's raw socket is routed as protocol 255).
	for _, args := range [][]string{
		{"rule", "add", "pref", "210", "ipproto", "gre", "lookup", "210"},
		{"rule", "add", "pref", "211", "ipproto", "255", "lookup", "210"},
		{"route", "replace", hubNBMA.String(), "dev", "ipsec0", "table", "210"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			ch.Stop()
			return nil, fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	l := &ipsecLoad{g: g, ch: ch, from: from, n: n, dpd: dpd, byAddr: make(map[netip.Addr]int), want: make([]bool, n), upAt: make([]time.Time, n), initAt: make([]time.Time, n), sent: make([]time.Time, n), got: make([]time.Time, n), id: 1 << 20}
	if l.cmd, err = vici.NewSession(vici.WithSocketPath(ch.Socket())); err != nil {
		ch.Stop()
		return nil, err
	}
	if l.ev, err = vici.NewSession(vici.WithSocketPath(ch.Socket())); err != nil {
		l.close()
		return nil, err
	}
	if err := l.ev.Subscribe("child-updown"); err != nil {
		l.close()
		return nil, err
	}
	l.evc = make(chan vici.Event, 4096)
	l.ev.NotifyEvents(l.evc)
	ca, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		l.close()
		return nil, err
	}
	if err := l.call("load-cert", "type", "X509", "flag", "CA", "data", string(ca)); err != nil {
		l.close()
		return nil, err
	}
	for i := from; i < n; i++ {
		l.byAddr[ipsecSpokeNBMA(i)] = i
		cert, err1 := os.ReadFile(filepath.Join(dir, fmt.Sprintf("s%d.crt", i)))
		key, err2 := os.ReadFile(filepath.Join(dir, fmt.Sprintf("s%d.key", i)))
		if err1 != nil || err2 != nil {
			l.close()
			return nil, fmt.Errorf("spoke %d credentials: %v %v", i, err1, err2)
		}
		if err := l.call("load-key", "type", "any", "data", string(key)); err != nil {
			l.close()
			return nil, err
		}
		if err := l.cmdRequest("load-conn", connMessage(i, string(cert), dpd)); err != nil {
			l.close()
			return nil, err
		}
	}
	return l, nil
}

// connMessage is simulated spoke i's connection to the hub, as dmvpnd
// loads a spoke's (userspace mode), from its own NBMA address.
func connMessage(i int, cert string, dpd time.Duration) *vici.Message {
	m := func(kv ...any) *vici.Message {
		v := vici.NewMessage()
		for k := 0; k+1 < len(kv); k += 2 {
			v.Set(kv[k].(string), kv[k+1])
		}
		return v
	}
	child := m("local_ts", []string{"dynamic[gre]"}, "remote_ts", []string{"dynamic[gre]"}, "mode", "tunnel",
		"esp_proposals", []string{ipsec.DefaultESPProposal}, "dpd_action", "restart", "close_action", "start", "start_action", "none")
	conn := m("version", "2", "local_addrs", []string{ipsecSpokeNBMA(i).String()}, "remote_addrs", []string{hubNBMA.String()},
		"proposals", []string{ipsec.DefaultProposal}, "dpd_delay", fmt.Sprintf("%ds", max(1, int(dpd/time.Second))), "mobike", "no", "encap", "yes", "keyingtries", "0",
		"local", m("auth", "pubkey", "certs", []string{cert}), "remote", m("auth", "pubkey"),
		"children", m("gre", child))
	return m(fmt.Sprintf("s%d", i), conn)
}

func (l *ipsecLoad) call(cmd string, kv ...any) error {
	v := vici.NewMessage()
	for k := 0; k+1 < len(kv); k += 2 {
		v.Set(kv[k].(string), kv[k+1])
	}
	return l.cmdRequest(cmd, v)
}

func (l *ipsecLoad) cmdRequest(cmd string, v *vici.Message) error {
	out, err := l.cmd.CommandRequest(cmd, v)
	if err != nil {
		return fmt.Errorf("%s: %w", cmd, err)
	}
	if s, _ := out.Get("success").(string); s == "no" {
		return fmt.Errorf("%s: %v", cmd, out.Get("errmsg"))
	}
	return nil
}

func (l *ipsecLoad) close() {
	if l.ev != nil {
		l.ev.Close()
	}
	if l.cmd != nil {
		l.cmd.Close()
	}
	l.ch.Stop()
}

// initiate starts spoke i's SA without waiting for it.
func (l *ipsecLoad) initiate(i int) error {
	l.mu.Lock()
	l.want[i] = true
	l.initAt[i] = time.Now()
	l.mu.Unlock()
	return l.call("initiate", "child", "gre", "ike", fmt.Sprintf("s%d", i), "timeout", "-1", "loglevel", "-1")
}

// inFlight is how many of the charon's SAs are being set up: initiated
// less than 10 s ago and not up yet.
func (l *ipsecLoad) inFlight() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for i := l.from; i < l.n; i++ {
		if l.want[i] && l.upAt[i].IsZero() && time.Since(l.initAt[i]) < 10*time.Second {
			n++
		}
	}
	return n
}

// register sends spoke i's registration inside its SA.
func (l *ipsecLoad) register(i int) {
	l.mu.Lock()
	l.id++
	id := l.id
	l.sent[i] = time.Now()
	l.mu.Unlock()
	p := l.g.registration(i, id)
	p.SrcNBMA = ipsecSpokeNBMA(i)
	p.Extensions[3].CIEs[0].NBMA = hubNBMA
	l.g.send(ipsecSpokeNBMA(i), hubNBMA, p)
}

// follow sends a registration whenever a spoke's CHILD_SA comes up and
// again every second until it is answered, and records the replies, until
// ctx ends.
func (l *ipsecLoad) follow(ctx context.Context) {
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case e := <-l.evc:
				if s, _ := e.Message.Get("up").(string); s != "yes" {
					continue
				}
				for _, k := range e.Message.Keys() {
					if i, err := strconv.Atoi(strings.TrimPrefix(k, "s")); err == nil && strings.HasPrefix(k, "s") && i >= l.from && i < l.n {
						l.mu.Lock()
						l.upAt[i] = time.Now()
						l.mu.Unlock()
						l.register(i)
					}
				}
			}
		}
	}()
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			for i := l.from; i < l.n; i++ {
				l.mu.Lock()
				// Unanswered for a second (or its SA's event missed):
				// sent again, as a spoke retransmits.
				retry := l.want[i] && !l.got[i].After(l.sent[i]) && time.Since(l.sent[i]) > time.Second
				// Unanswered for 10 s over an SA that is up: the SA is
				// torn down and brought up again, as dmvpnd resets a
				// server that stays silent over its protection (three
				// unanswered registrations with their backoff). Sooner,
				// a hub busy setting up many SAs is reset before it
				// could answer, and a new SA costs it more work.
				reset := retry && !l.upAt[i].IsZero() && time.Since(l.upAt[i]) > 10*time.Second && l.got[i].Before(l.upAt[i])
				// Initiated 10 s ago and still not up: charon gave up
				// on it (an AUTHENTICATION_FAILED answer from a hub
				// too busy ends the SA for good): initiated again, as
				// dmvpnd brings a server's SA up again.
				reset = reset || (retry && l.upAt[i].IsZero() && time.Since(l.initAt[i]) > 10*time.Second)
				if reset {
					l.upAt[i] = time.Time{}
					l.resets++
				}
				l.mu.Unlock()
				if reset {
					l.call("terminate", "ike", fmt.Sprintf("s%d", i), "timeout", "-1")
					l.initiate(i)
				} else if retry {
					l.register(i)
				}
			}
		}
	}()
	go func() {
		buf := make([]byte, 65536)
		for ctx.Err() == nil {
			r, ok, err := l.g.recv(buf)
			if err != nil || !ok || r.pkt.Type != wire.TypeRegistrationReply || len(r.pkt.CIEs) == 0 || r.pkt.CIEs[0].Code != 0 {
				continue
			}
			if i, ok := l.byAddr[r.to]; ok {
				l.mu.Lock()
				l.got[i] = r.at
				l.mu.Unlock()
			}
		}
	}()
}

// waitAll waits until every spoke in [from, to) has a reply after since
// and returns the time of the last.
func (l *ipsecLoad) waitAll(from, to int, since time.Time, timeout time.Duration) (time.Time, error) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		l.mu.Lock()
		var last time.Time
		done := true
		for i := from; i < to; i++ {
			if !l.got[i].After(since) {
				done = false
				break
			}
			if l.got[i].After(last) {
				last = l.got[i]
			}
		}
		l.mu.Unlock()
		if done {
			return last, nil
		}
		time.Sleep(2 * time.Millisecond)
	}
	l.mu.Lock()
	var missing []string
	for i := from; i < to; i++ {
		if !l.got[i].After(since) {
			missing = append(missing, fmt.Sprintf("%d (%s, sent %s)", i, ipsecSpokeNBMA(i), l.sent[i].Format("15:04:05.000")))
		}
	}
	l.mu.Unlock()
	return time.Time{}, fmt.Errorf("spokes %d-%d not all registered after %v: %s", from, to-1, timeout, strings.Join(missing, ", "))
}

// runIPsecLoad is a load generator child in IPsec mode, simulating the
// spokes [from, to) with its own charon. It prints LOADED once their
// connections are in charon, then follows its standard input: SINGLE
// registers spoke from alone (SINGLE <ns>), GO initiates the others at
// once (REGISTERED <ipsecPart>), KILLED <ns> (the hub's charon was killed
// then) waits until every spoke is registered again (REREGISTERED <last
// reply, Unix ns> <resets>).
func runIPsecLoad(dir string, from, to int, dpd time.Duration) int {
	fail := func(err error) int { fmt.Println("FATAL", err); return 1 }
	g, err := newLoadgen(hubNBMA, hubProto, greKey)
	if err != nil {
		return fail(err)
	}
	defer g.close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	l, err := startIPsecLoad(ctx, g, dir, from, to, dpd)
	if err != nil {
		return fail(err)
	}
	defer l.close()
	l.follow(ctx)
	fmt.Println("LOADED")

	first := from // the spokes left to initiate at GO start here
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) == 1 && f[0] == "SINGLE":
			start := time.Now()
			if err := l.initiate(from); err != nil {
				return fail(err)
			}
			last, err := l.waitAll(from, from+1, start, 30*time.Second)
			if err != nil {
				return fail(err)
			}
			first = from + 1
			fmt.Printf("SINGLE %d\n", last.Sub(start))
		case len(f) == 1 && f[0] == "GO":
			start := time.Now()
			for i := first; i < to; i++ {
				for l.inFlight() >= ipsecWindow {
					time.Sleep(5 * time.Millisecond)
				}
				if err := l.initiate(i); err != nil {
					return fail(err)
				}
			}
			last, err := l.waitAll(first, to, start, 120*time.Second)
			if err != nil {
				return fail(err)
			}
			l.mu.Lock()
			p := ipsecPart{Start: start.UnixNano(), Last: last.UnixNano(), Resets: l.resets}
			l.mu.Unlock()
			b, _ := json.Marshal(p)
			fmt.Println("REGISTERED " + string(b))
		case len(f) == 2 && f[0] == "KILLED":
			ns, _ := strconv.ParseInt(f[1], 10, 64)
			last, err := l.waitAll(from, to, time.Unix(0, ns), 120*time.Second)
			l.mu.Lock()
			resets := l.resets
			l.mu.Unlock()
			if err != nil {
				// Reported, not fatal: the figures before stand.
				fmt.Printf("REREGISTERED -1 %d %v\n", resets, err)
				return 0
			}
			fmt.Printf("REREGISTERED %d %d\n", last.UnixNano(), resets)
			return 0
		}
	}
	return 0
}
