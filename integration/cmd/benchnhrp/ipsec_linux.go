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

// In IPsec mode the simulated spokes are real IKE peers: one charon in
// the load namespace with a connection and a certificate (OU=GRE= its
// tunnel address) per spoke, each from its own NBMA address; a spoke's
// registration goes out as soon as its CHILD_SA is up, inside it.

// ipsecSpokeNBMA numbers the IPsec spokes' NBMA addresses (configured on
// the load node's uplink: charon needs them on an interface).
func ipsecSpokeNBMA(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 51, 100, byte(100 + i)}) }

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

// ipsecLoad drives the simulator's charon.
type ipsecLoad struct {
	g      *loadgen
	ch     *ipsec.Charon
	cmd    *vici.Session
	ev     *vici.Session
	evc    chan vici.Event
	n      int
	mu     sync.Mutex
	want   []bool      // initiated: to be registered
	upAt   []time.Time // when its CHILD_SA last came up
	resets int         // SAs torn down and brought up again (silent)
	sent   []time.Time // last registration sent, per spoke
	got    []time.Time // last positive reply, per spoke
	id     uint32
}

func startIPsecLoad(ctx context.Context, g *loadgen, dir string, n int) (*ipsecLoad, error) {
	ch, err := ipsec.StartCharon(ctx, ipsec.Config{Dir: filepath.Join(dir, "state-load"),
		DPDDelay: time.Second, RetransmitTimeout: 500 * time.Millisecond, RetransmitTries: 3}, ipsec.ModeUserspace, nil)
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
	l := &ipsecLoad{g: g, ch: ch, n: n, want: make([]bool, n), upAt: make([]time.Time, n), sent: make([]time.Time, n), got: make([]time.Time, n), id: 1 << 20}
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
	for i := range n {
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
		if err := l.cmdRequest("load-conn", connMessage(i, string(cert))); err != nil {
			l.close()
			return nil, err
		}
	}
	return l, nil
}

// connMessage is simulated spoke i's connection to the hub, as dmvpnd
// loads a spoke's (userspace mode), from its own NBMA address.
func connMessage(i int, cert string) *vici.Message {
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
		"proposals", []string{ipsec.DefaultProposal}, "dpd_delay", "1s", "mobike", "no", "encap", "yes", "keyingtries", "0",
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
	l.mu.Unlock()
	return l.call("initiate", "child", "gre", "ike", fmt.Sprintf("s%d", i), "timeout", "-1", "loglevel", "-1")
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
					if i, err := strconv.Atoi(strings.TrimPrefix(k, "s")); err == nil && strings.HasPrefix(k, "s") && i < l.n {
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
			for i := range l.n {
				l.mu.Lock()
				// Unanswered for a second (or its SA's event missed):
				// sent again, as a spoke retransmits.
				retry := l.want[i] && !l.got[i].After(l.sent[i]) && time.Since(l.sent[i]) > time.Second
				// Unanswered for 2 s over an SA that is up: the SA is
				// torn down and brought up again, as dmvpnd resets a
				// server that stays silent over its protection.
				reset := retry && !l.upAt[i].IsZero() && time.Since(l.upAt[i]) > 2*time.Second && l.got[i].Before(l.upAt[i])
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
			for i := range l.n {
				if r.to == ipsecSpokeNBMA(i) {
					l.mu.Lock()
					l.got[i] = r.at
					l.mu.Unlock()
				}
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

// runIPsecLoad is the load generator child in IPsec mode: one spoke, then
// the others at once; then, told the hub's charon was killed, the time
// until every spoke is registered again.
func runIPsecLoad(dir string, n int) int {
	fail := func(err error) int { fmt.Println("FATAL", err); return 1 }
	g, err := newLoadgen(hubNBMA, hubProto, greKey)
	if err != nil {
		return fail(err)
	}
	defer g.close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	l, err := startIPsecLoad(ctx, g, dir, n)
	if err != nil {
		return fail(err)
	}
	defer l.close()
	l.follow(ctx)

	start := time.Now()
	if err := l.initiate(0); err != nil {
		return fail(err)
	}
	last, err := l.waitAll(0, 1, start, 30*time.Second)
	if err != nil {
		return fail(err)
	}
	res := ipsecResult{Single: last.Sub(start)}
	start = time.Now()
	for i := 1; i < n; i++ {
		if err := l.initiate(i); err != nil {
			return fail(err)
		}
	}
	if last, err = l.waitAll(1, n, start, 60*time.Second); err != nil {
		return fail(err)
	}
	res.All = last.Sub(start)
	l.mu.Lock()
	res.Resets = l.resets
	l.mu.Unlock()
	b, _ := json.Marshal(res)
	fmt.Println("REGISTERED " + string(b))

	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 2 || f[0] != "KILLED" {
			continue
		}
		ns, _ := strconv.ParseInt(f[1], 10, 64)
		killed := time.Unix(0, ns)
		last, err := l.waitAll(0, n, killed, 60*time.Second)
		if err != nil {
			return fail(err)
		}
		l.mu.Lock()
		resets := l.resets
		l.mu.Unlock()
		fmt.Printf("REREGISTERED %d %d\n", last.Sub(killed), resets)
		return 0
	}
	return 0
}
