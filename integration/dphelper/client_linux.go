package dphelper

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"strings"
	"sync"

	"github.com/opendmvpn/dmvpn/gre"
	"github.com/opendmvpn/dmvpn/lab/testbed"
)

// Instance is a helper process running a backend in a node.
type Instance struct {
	Proc *testbed.Proc
	// Info is what the device reported when it came up; Reason is the
	// backend chooser's reason line.
	Info   gre.Info
	Reason string

	mu      sync.Mutex
	nextID  int
	missPos int
}

var (
	reReady   = regexp.MustCompile(`^(READY |FATAL )`)
	reBackend = regexp.MustCompile(`^BACKEND `)
	reMiss    = regexp.MustCompile(`^MISS `)
)

// Start runs a helper for cfg in node n (re-executing this binary) and
// waits until its device is up.
func Start(ctx context.Context, n *testbed.Node, cfg Config) (*Instance, error) {
	raw, err := json.Marshal(cfg)
	if err != nil {
		return nil, fmt.Errorf("dphelper: %w", err)
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("dphelper: %w", err)
	}
	p, err := n.Start(testbed.ProcSpec{Name: "dataplane-" + n.Name, Args: []string{exe}, Env: []string{EnvVar + "=" + string(raw)}, Stdin: true})
	if err != nil {
		return nil, err
	}
	line, _, err := p.WaitFor(ctx, reReady, 0)
	if err != nil {
		p.Stop()
		return nil, err
	}
	if strings.HasPrefix(line, "FATAL") {
		p.Stop()
		return nil, fmt.Errorf("dphelper: %s: %s", n.Name, line)
	}
	in := &Instance{Proc: p}
	if err := json.Unmarshal([]byte(strings.TrimPrefix(line, lineReady)), &in.Info); err != nil {
		p.Stop()
		return nil, fmt.Errorf("dphelper: ready line: %w", err)
	}
	if l, _, err := p.WaitFor(ctx, reBackend, 0); err == nil {
		in.Reason = strings.TrimPrefix(l, lineBackend)
	}
	return in, nil
}

// call sends a command and returns the reply after "OK"/"COUNTERS".
func (in *Instance) call(ctx context.Context, cmd string) (string, error) {
	in.mu.Lock()
	in.nextID++
	id := fmt.Sprintf("%d", in.nextID)
	in.mu.Unlock()
	if err := in.Proc.Send(id + " " + cmd); err != nil {
		return "", fmt.Errorf("dphelper: send %q: %w", cmd, err)
	}
	line, _, err := in.Proc.WaitFor(ctx, regexp.MustCompile(`^R`+id+` `), 0)
	if err != nil {
		return "", err
	}
	reply := strings.TrimPrefix(line, lineReply+id+" ")
	if strings.HasPrefix(reply, replyErr) {
		return "", fmt.Errorf("dphelper: %s: %s", cmd, reply)
	}
	return reply, nil
}

// Counters returns the device's counters.
func (in *Instance) Counters(ctx context.Context) (gre.Counters, error) {
	r, err := in.call(ctx, "counters")
	if err != nil {
		return gre.Counters{}, err
	}
	return decodeCounters(strings.TrimPrefix(r, replyCounter))
}

// SetNeighbor adds a static neighbour entry.
func (in *Instance) SetNeighbor(ctx context.Context, proto, nbma netip.Addr) error {
	_, err := in.call(ctx, "neigh "+proto.String()+" "+nbma.String())
	return err
}

// DeleteNeighbor removes a neighbour entry.
func (in *Instance) DeleteNeighbor(ctx context.Context, proto netip.Addr) error {
	_, err := in.call(ctx, "delneigh "+proto.String())
	return err
}

// WriteNHRP sends an NHRP packet through the device.
func (in *Instance) WriteNHRP(ctx context.Context, to netip.Addr, b []byte) error {
	_, err := in.call(ctx, fmt.Sprintf("nhrp %s %x", to, b))
	return err
}

// WaitMiss returns the next neighbour-miss event the device reported.
func (in *Instance) WaitMiss(ctx context.Context) (gre.Miss, error) {
	in.mu.Lock()
	from := in.missPos
	in.mu.Unlock()
	line, pos, err := in.Proc.WaitFor(ctx, reMiss, from)
	if err != nil {
		return gre.Miss{}, err
	}
	in.mu.Lock()
	in.missPos = pos
	in.mu.Unlock()
	f := strings.Fields(line)
	if len(f) != 3 {
		return gre.Miss{}, fmt.Errorf("dphelper: bad miss line %q", line)
	}
	nh, err := netip.ParseAddr(f[1])
	if err != nil {
		return gre.Miss{}, fmt.Errorf("dphelper: bad miss line %q", line)
	}
	m := gre.Miss{NextHop: nh}
	if f[2] != "-" {
		if m.Dst, err = netip.ParseAddr(f[2]); err != nil {
			return gre.Miss{}, fmt.Errorf("dphelper: bad miss line %q", line)
		}
	}
	return m, nil
}

// Stop closes the device (quit command) and waits for the helper to exit.
func (in *Instance) Stop(ctx context.Context) error {
	_ = in.Proc.Send("0 quit")
	if err := in.Proc.Wait(ctx); err != nil {
		in.Proc.Stop()
		return fmt.Errorf("dphelper: %s: %w; output:\n%s", in.Proc.Name, err, in.Proc.Output())
	}
	return nil
}
