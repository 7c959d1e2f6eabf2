//go:build linux

package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/opendmvpn/dmvpn/daemon/control"
	"github.com/opendmvpn/dmvpn/lab/testbed"
)

// NodeState is a namespace of a running lab.
type NodeState struct {
	Name string `json:"name"`
	NS   string `json:"ns"`
	// Kind is hub, spoke, host, nat or internet.
	Kind string `json:"kind"`
	Addr string `json:"addr,omitempty"`
	// Daemon is set for the nodes running dmvpnd.
	Daemon *DaemonState `json:"daemon,omitempty"`
}

// DaemonState is a dmvpnd process of the lab.
type DaemonState struct {
	Pid    int    `json:"pid"`
	Config string `json:"config"`
	Socket string `json:"socket"`
	Log    string `json:"log"`
	Tunnel string `json:"tunnel"`
	// NBMA is the node's address on the internet (its NAT router's when
	// behind one): where the hubs see it.
	NBMA string `json:"nbma,omitempty"`
	// IPsecDir is the state directory of the node's charon, AuditLog its
	// registration audit stream, Subject its certificate's subject; all
	// empty without IPsec.
	IPsecDir string `json:"ipsec_dir,omitempty"`
	AuditLog string `json:"audit_log,omitempty"`
	Subject  string `json:"subject,omitempty"`
}

// State is what a running lab records in its directory.
type State struct {
	Topology string    `json:"topology"`
	Prefix   string    `json:"prefix"`
	Started  time.Time `json:"started"`
	// IPsec is whether the nodes run IPsec (PKI holds the certificates);
	// Rogue whether the rogue spoke is there.
	IPsec bool   `json:"ipsec"`
	PKI   string `json:"pki,omitempty"`
	Rogue bool   `json:"rogue,omitempty"`
	// Firewall is whether the nodes run their firewall.
	Firewall bool `json:"firewall,omitempty"`
	// Dataplane is the nodes' data plane.
	Dataplane string      `json:"dataplane,omitempty"`
	Nodes     []NodeState `json:"nodes"`
}

func (l *Lab) statePath() string { return filepath.Join(l.Dir, "state.json") }

// load reads the state of a running lab; nil when there is none.
func (l *Lab) load() (*State, error) {
	b, err := os.ReadFile(l.statePath())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("lab state %s: %w", l.statePath(), err)
	}
	return &s, nil
}

func (l *Lab) save(s *State) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(l.statePath(), b, 0o644)
}

// node returns a node of the state by name.
func (s *State) node(name string) (*NodeState, error) {
	var names []string
	for i := range s.Nodes {
		if s.Nodes[i].Name == name {
			return &s.Nodes[i], nil
		}
		names = append(names, s.Nodes[i].Name)
	}
	return nil, fmt.Errorf("no node %q in the lab (nodes: %s)", name, strings.Join(names, ", "))
}

// running reports whether the lab's namespaces exist.
func (s *State) running() bool {
	for _, n := range s.Nodes {
		if _, err := os.Stat(filepath.Join("/run/netns", n.NS)); err == nil {
			return true
		}
	}
	return false
}

// binary finds a program of this project: beside the running executable
// first, then in PATH.
func binary(name string) (string, error) {
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("%s not found beside dmvpn-lab or in PATH (make build puts it in bin/)", name)
	}
	return p, nil
}

// Up builds the topology, makes the PKI (unless opts.NoIPsec), starts
// dmvpnd in every hub and spoke, waits for convergence, prints show dmvpn
// of every node and the IPsec SAs, demonstrates a spoke-to-spoke shortcut
// and, with opts.Rogue, a refused rogue spoke. A lab already up is
// reported, not rebuilt.
func (l *Lab) Up(ctx context.Context, topo string, opts UpOptions) error {
	if s, err := l.load(); err != nil {
		return err
	} else if s != nil && s.running() {
		fmt.Fprintf(l.Out, "The lab is already up (topology %s, %d namespaces, %s, started %s).\n", s.Topology, len(s.Nodes), s.ipsecWord(), s.Started.Local().Format(time.DateTime))
		fmt.Fprintf(l.Out, "Explore it with `%s shell spoke1`, or take it down with `%s down`.\n", l.Self, l.Self)
		return nil
	} else if s != nil {
		_ = l.Down(ctx) // stale state (namespaces gone): clean what is left
	}
	t, err := FindTopology(topo)
	if err != nil {
		return err
	}
	if opts.Rogue {
		t = t.withRogue()
	}
	t.NoFirewall, t.Dataplane = opts.NoFirewall, opts.Dataplane
	dmvpnd, err := binary("dmvpnd")
	if err != nil {
		return err
	}
	if err := testbed.Available(); err != nil {
		return err
	}
	if !opts.NoIPsec {
		if err := charonAvailable(t.ipsecMode()); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(l.Dir, 0o755); err != nil {
		return fmt.Errorf("lab directory: %w", err)
	}
	fmt.Fprintf(l.Out, "Building the %q lab: %s.\n", t.Name, t.About)
	tb, err := testbed.New(ctx, t.spec(l.Prefix))
	if err != nil {
		return err
	}
	st := &State{Topology: t.Name, Prefix: l.Prefix, Started: time.Now(), IPsec: !opts.NoIPsec, Rogue: opts.Rogue, Firewall: !opts.NoFirewall,
		Dataplane: t.dataplane()}
	for _, n := range tb.Nodes() {
		ns := NodeState{Name: n.Name, NS: n.NS, Kind: kindOf(t, n.Name)}
		if n.Addr.IsValid() {
			ns.Addr = n.Addr.String()
		}
		st.Nodes = append(st.Nodes, ns)
	}
	if err := l.save(st); err != nil {
		_ = tb.Close()
		return err
	}
	fail := func(err error) error {
		fmt.Fprintf(l.Out, "Bringing the lab up failed; taking it down again.\n")
		_ = l.Down(context.WithoutCancel(ctx))
		return err
	}
	var creds map[string]credentials
	if st.IPsec {
		st.PKI = filepath.Join(l.Dir, "pki")
		if creds, err = writePKI(st.PKI, t); err != nil {
			return fail(err)
		}
		l.printPKI(t, st)
	}
	// The hubs first, and ready (their charon has its connection loaded)
	// before the spokes start: an IKE_SA_INIT that reaches a hub's charon
	// before that is refused, and the spoke tries again only when its
	// wait for the SA runs out.
	started := time.Now()
	for _, group := range [][]Node{t.hubs(), slices.DeleteFunc(slices.Clone(t.Nodes), func(n Node) bool { return n.Site.Kind == testbed.Hub })} {
		for _, n := range group {
			ns, _ := st.node(n.Site.Name)
			d, err := l.startDaemon(t, n, ns.NS, dmvpnd, creds)
			if err != nil {
				return fail(err)
			}
			ns.Daemon = d
			if err := l.save(st); err != nil {
				return fail(err)
			}
		}
		for _, n := range group {
			ns, _ := st.node(n.Site.Name)
			if err := l.ready(ctx, ns); err != nil {
				return fail(err)
			}
		}
	}
	charons := ""
	if st.IPsec {
		charons = ", each with its own charon"
	}
	fmt.Fprintf(l.Out, "dmvpnd runs in %d nodes (%s data plane%s); waiting for the tunnels and registrations…\n", len(t.Nodes), t.dataplane(), charons)
	if err := l.converge(ctx, t, st, started, 30*time.Second); err != nil {
		return fail(err)
	}
	if err := l.bgpConverge(ctx, t, st, 30*time.Second); err != nil {
		return fail(err)
	}
	for _, n := range t.Nodes {
		if n.Rogue() {
			continue
		}
		ns, _ := st.node(n.Site.Name)
		fmt.Fprintf(l.Out, "\n======== %s: show dmvpn ========\n", n.Site.Name)
		l.ctl(ctx, ns.Daemon.Socket, "show", "dmvpn")
	}
	if hubs := t.hubs(); len(hubs) > 0 {
		ns, _ := st.node(hubs[0].Site.Name)
		fmt.Fprintf(l.Out, "\n======== %s: show ip bgp summary ========\n", hubs[0].Site.Name)
		l.ctl(ctx, ns.Daemon.Socket, "show", "ip", "bgp", "summary")
	}
	stay := func(what string, err error) error {
		fmt.Fprintf(l.Out, "\n%s failed: %v\nThe lab stays up for you to look: %s status; %s down.\n", what, err, l.Self, l.Self)
		return err
	}
	if st.IPsec {
		if err := l.showIPsec(ctx, t, st); err != nil {
			return stay("The IPsec check", err)
		}
	}
	if err := l.demo(ctx, t, st); err != nil {
		return stay("The shortcut demonstration", err)
	}
	if st.Rogue {
		if err := l.rogueDemo(ctx, t, st); err != nil {
			return stay("The rogue spoke's demonstration", err)
		}
	}
	if st.Firewall && st.IPsec { // without IPsec GRE from the internet is accepted by design
		if err := l.firewallDemo(ctx, t, st); err != nil {
			return stay("The firewall's demonstration", err)
		}
	}
	fmt.Fprintf(l.Out, "\nThe lab is up. Explore it:\n")
	hints := [][2]string{{"shell spoke1", "the shell of spoke1 (try: show dmvpn, show ip nhrp shortcut, ?)"}}
	if st.IPsec {
		hints = append(hints, [2]string{"shell hub1", "the shell of hub1 (show ip nhrp detail: the certificate of each registration)"})
	}
	for _, n := range t.Nodes {
		if n.Site.NBMA2.IsValid() {
			hints = append(hints, [2]string{"fail " + n.Site.Name + " isp1", n.Site.Name + " loses its first ISP: watch it fail over (restore " + n.Site.Name + " isp1 brings it back)"})
		}
	}
	hints = append(hints, [][2]string{
		{"exec spoke1-h1 -- ping 10.2.0.2", "a command in a node"},
		{"status", "nodes and daemons"},
		{"down", "remove everything"},
	}...)
	for _, h := range hints {
		fmt.Fprintf(l.Out, "  %-45s %s\n", l.Self+" "+h[0], h[1])
	}
	return nil
}

func kindOf(t Topology, name string) string {
	switch {
	case name == "inet", name == "inet2":
		return "internet"
	case strings.HasSuffix(name, "-nat"):
		return "nat"
	case strings.Contains(name, "-h"):
		return "host"
	}
	for _, n := range t.Nodes {
		if n.Site.Name == name {
			if n.Rogue() {
				return "rogue"
			}
			return string(n.Site.Kind)
		}
	}
	return "node"
}

// startDaemon writes a node's configuration and starts dmvpnd in its
// namespace, detached from this process so it outlives it. With creds
// (IPsec) the node gets its ipsec section: dmvpnd starts the node's
// charon as its child.
func (l *Lab) startDaemon(t Topology, n Node, ns, dmvpnd string, creds map[string]credentials) (*DaemonState, error) {
	dir := filepath.Join(l.Dir, n.Site.Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	d := &DaemonState{
		Config: filepath.Join(dir, "dmvpnd.yaml"), Socket: filepath.Join(dir, "dmvpnd.sock"),
		Log: filepath.Join(dir, "dmvpnd.log"), Tunnel: n.Tunnel.String(), NBMA: n.Site.NBMA.Addr().String(),
	}
	section := ""
	if c, ok := creds[n.Site.Name]; ok {
		d.IPsecDir, d.AuditLog, d.Subject = filepath.Join(dir, "ipsec"), filepath.Join(dir, "audit.jsonl"), c.Subject
		section = ipsecSection(c, t.ipsecMode(), d.IPsecDir, d.AuditLog)
	}
	if err := os.WriteFile(d.Config, []byte(t.config(n, d.Socket, section)), 0o644); err != nil {
		return nil, err
	}
	var extra []string
	if n.Rogue() {
		// Its certificate names another node's address: dmvpnd would
		// refuse it, as it should; the rogue plays an attacker whose
		// node does not check.
		extra = append(extra, "--unchecked-credentials")
	}
	if err := spawn(d, n.Site.Name, ns, dmvpnd, extra, os.O_TRUNC); err != nil {
		return nil, err
	}
	return d, nil
}

// spawn starts dmvpnd for d in namespace ns, its output appended to (or,
// with os.O_TRUNC, replacing) d.Log, and records its pid in d.
func spawn(d *DaemonState, name, ns, dmvpnd string, extra []string, mode int) error {
	logf, err := os.OpenFile(d.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND|mode, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	args := append([]string{"netns", "exec", ns, dmvpnd, "-c", d.Config}, extra...)
	cmd := exec.Command("ip", args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting dmvpnd in %s: %w", name, err)
	}
	pid := cmd.Process.Pid
	d.Pid = pid
	go func() { // reap it if it dies while we run, and say how in its log
		_ = cmd.Wait()
		if f, err := os.OpenFile(d.Log, os.O_WRONLY|os.O_APPEND, 0); err == nil {
			fmt.Fprintf(f, "dmvpn-lab: dmvpnd (pid %d) exited: %v\n", pid, cmd.ProcessState)
			f.Close()
		}
	}()
	return nil
}

// ready waits until a node's dmvpnd answers on its control socket: its
// tunnel (and IPsec) are up.
func (l *Lab) ready(ctx context.Context, ns *NodeState) error {
	c := control.NewClient(ns.Daemon.Socket)
	if err := waitUntil(ctx, 15*time.Second, func() (bool, error) {
		var s control.Status
		if err := c.Get(ctx, control.PathStatus, &s); err != nil {
			return false, daemonDied(ns, err)
		}
		return true, nil
	}); err != nil {
		return fmt.Errorf("%s: dmvpnd did not come up: %w\n%s", ns.Name, err, tail(ns.Daemon.Log))
	}
	return nil
}

func ipBatch(ns string, lines []string) error {
	cmd := exec.Command("ip", "-n", ns, "-batch", "-")
	cmd.Stdin = strings.NewReader(strings.Join(lines, "\n") + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("ip -n %s: %w: %s", ns, err, out)
	}
	return nil
}

// daemonDied turns a failed API call into the reason the daemon is gone,
// when it is.
func daemonDied(ns *NodeState, err error) error {
	if ns.Daemon != nil && !alive(ns.Daemon.Pid) {
		return fmt.Errorf("dmvpnd exited: %w", err)
	}
	return nil // not yet: keep waiting
}

func tail(path string) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 15 {
		lines = lines[len(lines)-15:]
	}
	return "  " + strings.Join(lines, "\n  ")
}

// alive reports whether pid is a running dmvpnd.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
		if f := strings.Fields(string(st)); len(f) > 2 && f[2] == "Z" {
			return false
		}
	}
	// The command line reads empty for a moment while ip netns exec
	// executes dmvpnd (the new image has no arguments yet): a daemon
	// just started is not taken for dead.
	return len(b) == 0 || strings.Contains(string(b), "dmvpnd")
}

// waitUntil polls cond every 100 ms until it holds, fails or time runs out.
func waitUntil(ctx context.Context, timeout time.Duration, cond func() (bool, error)) error {
	timeout = scaled(timeout)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not within %v", timeout)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// EnvWaitScale names the environment variable that multiplies every wait
// of the lab (an integer, 1 by default): a slow machine, or a VM under
// emulation where every process start takes a second.
const EnvWaitScale = "DMVPN_LAB_WAIT_SCALE"

// scaled is d multiplied by the wait scale.
func scaled(d time.Duration) time.Duration {
	if n, err := strconv.Atoi(os.Getenv(EnvWaitScale)); err == nil && n > 1 && n <= 100 {
		return d * time.Duration(n)
	}
	return d
}

// Down stops every dmvpnd of the lab (SIGTERM, then SIGKILL; each stops
// its charon), deletes its namespaces, kills any charon of the lab that
// is still there and removes its directory (configurations, PKI, logs).
// It also removes namespaces of the lab's prefix that a crashed run left
// without state.
func (l *Lab) Down(ctx context.Context) error {
	s, err := l.load()
	if err != nil {
		return err
	}
	var errs []error
	stopped, removed := 0, 0
	charons := len(labCharons(l.Dir))
	if s != nil {
		for _, n := range s.Nodes {
			if n.Daemon != nil && alive(n.Daemon.Pid) {
				_ = syscall.Kill(n.Daemon.Pid, syscall.SIGTERM)
				stopped++
			}
		}
		deadline := time.Now().Add(5 * time.Second)
		for _, n := range s.Nodes {
			if n.Daemon == nil {
				continue
			}
			for alive(n.Daemon.Pid) && time.Now().Before(deadline) {
				time.Sleep(50 * time.Millisecond)
			}
			if alive(n.Daemon.Pid) {
				_ = syscall.Kill(n.Daemon.Pid, syscall.SIGKILL)
			}
		}
	}
	entries, _ := os.ReadDir("/run/netns")
	for i := len(entries) - 1; i >= 0; i-- {
		name := entries[i].Name()
		if !strings.HasPrefix(name, l.Prefix+"-") {
			continue
		}
		if err := deleteNS(name); err != nil {
			errs = append(errs, err)
		} else {
			removed++
		}
	}
	if err := killCharons(l.Dir); err != nil {
		errs = append(errs, err)
	}
	if err := os.RemoveAll(l.Dir); err != nil {
		errs = append(errs, err)
	}
	with := ""
	if charons > 0 {
		with = fmt.Sprintf(" (and %d charon)", charons)
	}
	if s == nil && removed == 0 {
		fmt.Fprintln(l.Out, "No lab is up.")
	} else {
		fmt.Fprintf(l.Out, "Lab down: %d dmvpnd stopped%s, %d namespaces removed, %s removed.\n", stopped, with, removed, l.Dir)
	}
	return errors.Join(errs...)
}

// deleteNS kills what runs in a namespace and deletes it.
func deleteNS(ns string) error {
	if out, err := exec.Command("ip", "netns", "pids", ns).Output(); err == nil {
		for _, f := range strings.Fields(string(out)) {
			if pid, err := strconv.Atoi(f); err == nil {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil && !strings.Contains(string(out), "No such file") {
		return fmt.Errorf("deleting namespace %s: %w: %s", ns, err, out)
	}
	return nil
}

// Status prints the lab's nodes and the state of every dmvpnd.
func (l *Lab) Status(ctx context.Context) error {
	s, err := l.load()
	if err != nil {
		return err
	}
	if s == nil || !s.running() {
		fmt.Fprintf(l.Out, "No lab is up. Start one with `%s up`.\n", l.Self)
		return nil
	}
	dp := s.Dataplane
	if dp == "" {
		dp = "userspace"
	}
	fmt.Fprintf(l.Out, "Lab %q up since %s, state in %s, %s data plane\n", s.Topology, s.Started.Local().Format(time.DateTime), l.Dir, dp)
	if s.IPsec {
		fmt.Fprintf(l.Out, "IPsec: on — certificates from the lab's CA in %s, a charon per hub and spoke", s.PKI)
		if s.Rogue {
			fmt.Fprintf(l.Out, ", with the rogue spoke")
		}
		fmt.Fprintf(l.Out, "\n\n")
	} else {
		fmt.Fprintf(l.Out, "IPsec: off (up --no-ipsec): NHRP and GRE in clear\n\n")
	}
	fmt.Fprintf(l.Out, "%-10s %-8s %-16s %-22s %s\n", "NODE", "KIND", "ADDRESS", "NAMESPACE", "DMVPND")
	for _, n := range s.Nodes {
		d := "-"
		if n.Addr == "" {
			n.Addr = "-"
		}
		if n.Daemon != nil {
			d = l.daemonSummary(ctx, n)
		}
		fmt.Fprintf(l.Out, "%-10s %-8s %-16s %-22s %s\n", n.Name, n.Kind, n.Addr, n.NS, d)
	}
	return nil
}

func (l *Lab) daemonSummary(ctx context.Context, n NodeState) string {
	if !alive(n.Daemon.Pid) {
		return fmt.Sprintf("not running (log %s)", n.Daemon.Log)
	}
	c := control.NewClient(n.Daemon.Socket)
	cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	var st control.Status
	if err := c.Get(cctx, control.PathStatus, &st); err != nil {
		return fmt.Sprintf("pid %d, %v", n.Daemon.Pid, err)
	}
	s := fmt.Sprintf("pid %d, tunnel %s, %d cache entries", n.Daemon.Pid, st.NHRP.Address, st.NHRP.Entries)
	if n.Daemon.IPsecDir != "" {
		if r, err := crypto(cctx, n.Daemon.Socket); err == nil {
			up := 0
			for _, sa := range r.SAs {
				if sa.Up() {
					up++
				}
			}
			s += fmt.Sprintf(", %d IPsec SAs up", up)
		}
	}
	if n.Kind == "spoke" || n.Kind == "rogue" {
		var nhs control.NHSResponse
		if c.Get(cctx, control.PathNHS, &nhs) == nil {
			up := 0
			for _, x := range nhs.Servers {
				if x.State.String() == "up" {
					up++
				}
			}
			s += fmt.Sprintf(", registered with %d/%d hubs", up, len(nhs.Servers))
		}
	}
	return s
}

// Exec runs a command in a node with the terminal attached and returns
// its exit status.
func (l *Lab) Exec(ctx context.Context, node string, args []string, stdin io.Reader) (int, error) {
	s, err := l.load()
	if err != nil {
		return 1, err
	}
	if s == nil || !s.running() {
		return 1, errors.New("no lab is up (dmvpn-lab up)")
	}
	n, err := s.node(node)
	if err != nil {
		return 1, err
	}
	if len(args) == 0 {
		return 1, errors.New("exec: no command given (dmvpn-lab exec NODE -- CMD …)")
	}
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.NS}, args...)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, l.Out, l.Err
	err = cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), nil
	}
	if err != nil {
		return 1, err
	}
	return 0, nil
}

// ShellCommand returns the command line that opens dmvpnctl on a node.
func (l *Lab) ShellCommand(node string) ([]string, error) {
	s, err := l.load()
	if err != nil {
		return nil, err
	}
	if s == nil || !s.running() {
		return nil, errors.New("no lab is up (dmvpn-lab up)")
	}
	n, err := s.node(node)
	if err != nil {
		return nil, err
	}
	if n.Daemon == nil {
		return nil, fmt.Errorf("%s runs no dmvpnd (it is a %s); the shell opens on hubs and spokes: use dmvpn-lab exec %s -- sh for a shell there", node, n.Kind, node)
	}
	ctl, err := binary("dmvpnctl")
	if err != nil {
		return nil, err
	}
	return []string{"ip", "netns", "exec", n.NS, ctl, "--socket", n.Daemon.Socket}, nil
}

// Shell replaces this process by dmvpnctl on a node.
func (l *Lab) Shell(node string) error {
	argv, err := l.ShellCommand(node)
	if err != nil {
		return err
	}
	ip, err := exec.LookPath(argv[0])
	if err != nil {
		return err
	}
	return syscall.Exec(ip, argv, os.Environ())
}
