package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/opendmvpn/dmvpn/daemon/control"
	"github.com/opendmvpn/dmvpn/lab/testbed"
)

// The guest half of the side-by-side benchmark (-frr): it runs inside the
// VM (Debian's kernel, ip_gre), in the VM's initial network namespace, and
// starts one hub at a time — FRR's nhrpd (with zebra) or dmvpnd on the
// kernel data plane — on the orders of the load generator on the host,
// which reaches it over the VM's NIC (a TAP on the host). Orders and
// answers are JSON lines on TCP.

const (
	guestAddr  = "198.51.100.2"
	hostAddr   = "198.51.100.1"
	agentPort  = 7700
	frrSpace   = "bench" // FRR's path space (-N)
	ourSocket  = "/run/benchnhrp/dmvpnd.sock"
	ourConfig  = "/run/benchnhrp/hub.yaml"
	ourState   = "/run/benchnhrp/dmvpnd." + benchTun + ".state" // the default beside ourSocket
	benchTun   = "gre1"
	prefillDev = "bnfill0"
)

// order is a request of the load generator to the guest.
type order struct {
	Op string `json:"op"` // start, limit, measure, stop, profile-start, profile-stop, exit
	// Impl is "frr", "ours", "base" (ours, another build) or "null" (the
	// null hub: frrnull_linux.go).
	Impl string `json:"impl,omitempty"`
	// Spokes is how many spokes the run registers (sizes the neighbour
	// table: gc_thresh3 at least twice that).
	Spokes int `json:"spokes,omitempty"`
	// Thresh3 (limit) sets gc_thresh3 (and gc_thresh2 to half, gc_thresh1
	// to an eighth), as a kernel left at its defaults has them (1024).
	Thresh3 int `json:"thresh3,omitempty"`
	// Prefill (limit) fills the table with that many other entries first.
	Prefill int `json:"prefill,omitempty"`
	// Dmvpnd is the path of our daemon.
	Dmvpnd string `json:"dmvpnd,omitempty"`
	// Dir is a directory shared with the host (profiles).
	Dir string `json:"dir,omitempty"`
	// MaxEntries (start, ours) is the hub's limits.max_entries; when
	// set, the neighbour table's limits go back to the kernel's defaults
	// first, for dmvpnd to raise from it (the scale run: kscale_linux.go).
	MaxEntries int `json:"max_entries,omitempty"`
}

// answer is the guest's reply.
type answer struct {
	Err string `json:"err,omitempty"`
	// RSS of the hub's processes, by name, in bytes.
	RSS map[string]int64 `json:"rss,omitempty"`
	// Neighbours on the tunnel with a link-layer address, and on the
	// whole IPv4 table.
	Neigh      int `json:"neigh"`
	NeighTotal int `json:"neigh_total"`
	// TableFulls is the kernel's count of refused neighbour entries
	// (the arp_cache table_fulls statistic).
	TableFulls uint64 `json:"table_fulls"`
	// Ours: the engine's and the data plane's counters.
	Ours *ourCounters `json:"ours,omitempty"`
	// CPU is the hub's CPU time so far (user+system), per process.
	CPU map[string]time.Duration `json:"cpu,omitempty"`
	// Profile is where a profile was written (perf data; its kallsyms
	// beside it).
	Profile string `json:"profile,omitempty"`
	// Clock is the guest kernel's clock source (and those available).
	Clock string `json:"clock,omitempty"`
	// Thresh is the IPv4 neighbour table's gc_thresh1-3.
	Thresh [3]int `json:"thresh"`
	// Check (neighcheck) compares the neighbour table with the spokes.
	Check neighCheck `json:"check"`
}

// ourCounters are what our hub counts that the comparison shows.
type ourCounters struct {
	Entries int               `json:"entries"`
	Dropped map[string]uint64 `json:"dropped,omitempty"`
	DPDrops map[string]uint64 `json:"dataplane_drops,omitempty"`
	RegRecv uint64            `json:"reg_recv"`
	RegSent uint64            `json:"reg_sent"`
}

// hubProc is a process of the hub under test.
type hubProc struct {
	name string
	cmd  *exec.Cmd
}

// guest is the agent's state.
type guest struct {
	impl  string
	procs []hubProc
	perf  *exec.Cmd
	pdata string
}

// runGuest is the agent: set up the VM's network, then serve orders.
func runGuest() int {
	if err := guestSetup(); err != nil {
		fmt.Println("FATAL guest setup:", err)
		return 1
	}
	l, err := net.Listen("tcp", net.JoinHostPort(guestAddr, strconv.Itoa(agentPort)))
	if err != nil {
		fmt.Println("FATAL", err)
		return 1
	}
	fmt.Println("guest: listening")
	l.(*net.TCPListener).SetDeadline(time.Now().Add(5 * time.Minute))
	c, err := l.Accept()
	l.Close()
	if err != nil {
		fmt.Println("FATAL no load generator:", err)
		return 1
	}
	defer c.Close()
	g := &guest{}
	defer g.stop()
	sc := bufio.NewScanner(c)
	enc := json.NewEncoder(c)
	for sc.Scan() {
		var o order
		if err := json.Unmarshal(sc.Bytes(), &o); err != nil {
			enc.Encode(answer{Err: err.Error()})
			continue
		}
		if o.Op == "exit" {
			enc.Encode(answer{})
			return 0
		}
		a, err := g.do(o)
		if err != nil {
			a.Err = err.Error()
			fmt.Printf("guest: %s %s: %v\n", o.Op, o.Impl, err)
		}
		if err := enc.Encode(a); err != nil {
			fmt.Println("FATAL", err)
			return 1
		}
	}
	return 0
}

func guestSetup() error {
	return runAll(
		[]string{"modprobe", "ip_gre"},
		[]string{"modprobe", "dummy"},
		[]string{"ip", "link", "set", "eth0", "up"},
		[]string{"ip", "addr", "add", guestAddr + "/24", "dev", "eth0"},
		[]string{"ip", "route", "add", "198.18.0.0/15", "via", hostAddr},
		[]string{"sysctl", "-qw", "net.core.rmem_max=33554432", "net.core.wmem_max=33554432"},
	)
}

func runAll(cmds ...[]string) error {
	for _, c := range cmds {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %w: %s", strings.Join(c, " "), err, strings.TrimSpace(string(out)))
		}
	}
	return nil
}

func (g *guest) do(o order) (answer, error) {
	switch o.Op {
	case "start":
		g.stop()
		thresh := max(65536, 2*o.Spokes)
		if o.MaxEntries > 0 {
			thresh = 1024 // the kernel's default: dmvpnd sizes it
		}
		if err := setThresh(thresh); err != nil {
			return answer{}, err
		}
		var err error
		switch o.Impl {
		case "frr":
			err = g.startFRR()
		case "ours", "base":
			err = g.startOurs(o.Dmvpnd, o.MaxEntries)
		case "null":
			err = g.startNull()
		default:
			err = fmt.Errorf("no hub %q", o.Impl)
		}
		g.impl = o.Impl
		if err != nil {
			return answer{}, err
		}
		return g.measure(), nil
	case "limit":
		if o.Prefill > 0 {
			if err := prefill(o.Prefill); err != nil {
				return answer{}, err
			}
		}
		return answer{}, setThresh(o.Thresh3)
	case "measure":
		return g.measure(), nil
	case "neighcheck":
		c, err := checkNeighbours(o.Spokes)
		return answer{Check: c}, err
	case "profile-start":
		return answer{}, g.profileStart()
	case "profile-stop":
		path, err := g.profileStop(o.Dir)
		return answer{Profile: path}, err
	case "stop":
		g.stop()
		return answer{}, nil
	}
	return answer{}, fmt.Errorf("unknown order %q", o.Op)
}

// setThresh sets the IPv4 neighbour table's limits: gc_thresh3 = t,
// gc_thresh2 = t/2, gc_thresh1 = t/8 (the kernel's defaults for 1024).
func setThresh(t int) error {
	for i, v := range []int{t / 8, t / 2, t} {
		p := fmt.Sprintf("/proc/sys/net/ipv4/neigh/default/gc_thresh%d", i+1)
		if err := os.WriteFile(p, []byte(strconv.Itoa(v)), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// prefill puts n reachable entries on a dummy device, as another user of
// the table would have (they stay until the kernel's garbage collection
// finds them older than 5 s and the table over gc_thresh2).
func prefill(n int) error {
	if err := runAll([]string{"ip", "link", "add", prefillDev, "type", "dummy"}, []string{"ip", "link", "set", prefillDev, "up"},
		[]string{"ip", "addr", "add", "172.31.0.1/16", "dev", prefillDev}); err != nil {
		return err
	}
	l, err := netlink.LinkByName(prefillDev)
	if err != nil {
		return err
	}
	for i := range n {
		a := net.IPv4(172, 31, byte((i+2)>>8), byte(i+2))
		err := netlink.NeighSet(&netlink.Neigh{LinkIndex: l.Attrs().Index, Family: netlink.FAMILY_V4, State: netlink.NUD_REACHABLE,
			IP: a, HardwareAddr: net.HardwareAddr{2, 0, 0, 0, byte(i >> 8), byte(i)}})
		if err != nil {
			return fmt.Errorf("prefill entry %d: %w", i, err)
		}
	}
	return nil
}

func (g *guest) startFRR() error {
	if err := runAll(
		[]string{"ip", "link", "add", benchTun, "type", "gre", "key", "42", "ttl", "64", "local", guestAddr, "dev", "eth0"},
		[]string{"ip", "link", "set", benchTun, "up"},
	); err != nil {
		return err
	}
	u, err := user.Lookup("frr")
	if err != nil {
		return fmt.Errorf("no frr user (is FRR installed?): %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	run := filepath.Join("/run/frr", frrSpace)
	etc := filepath.Join("/etc/frr", frrSpace)
	for _, d := range []string{run, etc} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
		os.Chown(d, uid, gid)
	}
	files := map[string]string{
		filepath.Join(etc, "vtysh.conf"): "",
		filepath.Join(run, "zebra.conf"): "hostname hub\nlog file " + run + "/zebra.log warnings\ninterface " + benchTun + "\n ip address 10.0.0.1/32\nexit\n",
		filepath.Join(run, "nhrpd.conf"): "hostname hub\nlog file " + run + "/nhrpd.log warnings\ninterface " + benchTun +
			"\n ip nhrp network-id 1\n ip nhrp holdtime 7200\n tunnel source eth0\nexit\n",
	}
	for p, c := range files {
		if err := os.WriteFile(p, []byte(c), 0o644); err != nil {
			return err
		}
		os.Chown(p, uid, gid)
	}
	start := func(d string) error {
		cmd := exec.Command(filepath.Join("/usr/lib/frr", d), "-N", frrSpace, "-P", "0",
			"-f", filepath.Join(run, d+".conf"), "-i", filepath.Join(run, d+".pid"))
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stdout
		if err := cmd.Start(); err != nil {
			return err
		}
		g.procs = append(g.procs, hubProc{name: d, cmd: cmd})
		return nil
	}
	if err := start("zebra"); err != nil {
		return err
	}
	if err := waitFile(filepath.Join(run, "zserv.api"), 60*time.Second); err != nil {
		return err
	}
	return start("nhrpd")
}

func (g *guest) startOurs(dmvpnd string, maxEntries int) error {
	if err := os.MkdirAll(filepath.Dir(ourConfig), 0o700); err != nil {
		return err
	}
	cfg := fmt.Sprintf(`node: hub
role: hub
tunnel:
  interface: %s
  address: 10.0.0.1/8
  key: 42
  dataplane: kernel
  holding_time: 7200
policy:
  allow: all
ipsec: off
logging:
  level: warn
metrics:
  listen: 127.0.0.1:9474
control:
  socket: %s
`, benchTun, ourSocket)
	if maxEntries > 0 {
		cfg += fmt.Sprintf("limits:\n  max_entries: %d\n", maxEntries)
	}
	if err := os.WriteFile(ourConfig, []byte(cfg), 0o600); err != nil {
		return err
	}
	// Each run starts from nothing: the state file the previous run left
	// (its registrations, restored at start) would make this run's
	// registrations refreshes of bindings and neighbours already there.
	if err := os.Remove(ourState); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	cmd := exec.Command(dmvpnd, "-c", ourConfig)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stdout
	if err := cmd.Start(); err != nil {
		return err
	}
	g.procs = append(g.procs, hubProc{name: "dmvpnd", cmd: cmd})
	c := control.NewClient(ourSocket)
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		var st control.Status
		err := c.Get(ctx, control.PathStatus, &st)
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("dmvpnd did not answer: %w", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func waitFile(p string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		if _, err := os.Stat(p); err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not appear", p)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// measure reads the hub's memory, CPU time and the kernel's neighbours.
func (g *guest) measure() answer {
	a := answer{RSS: map[string]int64{}, CPU: map[string]time.Duration{}}
	for _, p := range g.procs {
		a.RSS[p.name] = testbed.RSS(p.cmd.Process.Pid)
		a.CPU[p.name] = cpuOf(p.cmd.Process.Pid)
	}
	if l, err := netlink.LinkByName(benchTun); err == nil {
		ns, _ := netlink.NeighList(l.Attrs().Index, netlink.FAMILY_V4)
		for _, n := range ns {
			if n.State&(netlink.NUD_INCOMPLETE|netlink.NUD_FAILED) == 0 && (len(n.LLIPAddr) > 0 || len(n.HardwareAddr) > 0) {
				a.Neigh++
			}
		}
	}
	all, _ := netlink.NeighList(0, netlink.FAMILY_V4)
	a.NeighTotal = len(all)
	a.TableFulls = tableFulls()
	a.Thresh, _ = readThresh()
	cs, _ := os.ReadFile("/sys/devices/system/clocksource/clocksource0/current_clocksource")
	av, _ := os.ReadFile("/sys/devices/system/clocksource/clocksource0/available_clocksource")
	a.Clock = fmt.Sprintf("%s (available: %s)", strings.TrimSpace(string(cs)), strings.TrimSpace(string(av)))
	if g.impl == "ours" || g.impl == "base" {
		c := control.NewClient(ourSocket)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		oc := &ourCounters{}
		var st control.Status
		if err := c.Get(ctx, control.PathStatus, &st); err == nil {
			oc.Entries = st.NHRP.Entries
		}
		var tr control.TrafficResponse
		if err := c.Get(ctx, control.PathTraffic, &tr); err == nil {
			oc.Dropped = nonZero(tr.NHRP.Dropped)
			if tr.Dataplane != nil {
				oc.DPDrops = nonZero(tr.Dataplane.Drops)
			}
			oc.RegRecv, oc.RegSent = tr.NHRP.Received["Registration Request"], tr.NHRP.Sent["Registration Reply"]
		}
		a.Ours = oc
	}
	return a
}

func nonZero(m map[string]uint64) map[string]uint64 {
	out := map[string]uint64{}
	for k, v := range m {
		if v > 0 {
			out[k] = v
		}
	}
	return out
}

// tableFulls sums the arp_cache table_fulls column of every CPU.
func tableFulls() uint64 {
	b, err := os.ReadFile("/proc/net/stat/arp_cache")
	if err != nil {
		return 0
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) < 2 {
		return 0
	}
	col := -1
	for i, h := range strings.Fields(lines[0]) {
		if h == "table_fulls" {
			col = i
		}
	}
	var sum uint64
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		if col >= 0 && col < len(f) {
			v, _ := strconv.ParseUint(f[col], 16, 64)
			sum += v
		}
	}
	return sum
}

// cpuOf returns a process's user+system CPU time.
func cpuOf(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 {
		s = s[i+1:]
	}
	f := strings.Fields(s)
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100
}

// profileStart records the hub's main process with perf (kernel and
// user stacks, cpu-clock: TCG has no PMU) until profileStop. perf starts
// with its events off and is switched on through its control FIFO, whose
// acknowledgement says it records: under TCG perf needs a minute to set
// up, and stopped by a signal it kept almost nothing.
func (g *guest) profileStart() error {
	if len(g.procs) == 0 {
		return errors.New("no hub running")
	}
	p := g.procs[len(g.procs)-1] // nhrpd or dmvpnd
	dir := filepath.Dir(ourConfig)
	os.MkdirAll(dir, 0o700)
	g.pdata = filepath.Join(dir, "perf-"+p.name+".data")
	ctl, ack := filepath.Join(dir, "perf.ctl"), filepath.Join(dir, "perf.ack")
	for _, f := range []string{ctl, ack} {
		os.Remove(f)
		if err := syscall.Mkfifo(f, 0o600); err != nil {
			return err
		}
	}
	g.perf = exec.Command("perf", "record", "-e", "cpu-clock", "-F", "499", "-g", "-D", "-1",
		"--control", "fifo:"+ctl+","+ack, "-o", g.pdata, "-p", strconv.Itoa(p.cmd.Process.Pid))
	g.perf.Stdout, g.perf.Stderr = os.Stdout, os.Stdout
	if err := g.perf.Start(); err != nil {
		g.perf = nil
		return err
	}
	return g.perfCtl("enable")
}

// perfCtl sends a command to perf and waits for its acknowledgement.
func (g *guest) perfCtl(cmd string) error {
	dir := filepath.Dir(ourConfig)
	done := make(chan error, 1)
	go func() {
		c, err := os.OpenFile(filepath.Join(dir, "perf.ctl"), os.O_WRONLY, 0)
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		if _, err := c.WriteString(cmd + "\n"); err != nil {
			done <- err
			return
		}
		if cmd == "stop" {
			done <- nil
			return
		}
		a, err := os.Open(filepath.Join(dir, "perf.ack"))
		if err != nil {
			done <- err
			return
		}
		defer a.Close()
		b := make([]byte, 16)
		_, err = a.Read(b)
		done <- err
	}()
	select {
	case err := <-done:
		return err
	case <-time.After(5 * time.Minute):
		return fmt.Errorf("perf did not acknowledge %q", cmd)
	}
}

// profileStop ends the recording and copies it, with the guest kernel's
// symbols, into dir (shared with the host, which reports on it: perf
// report under TCG takes minutes).
func (g *guest) profileStop(dir string) (string, error) {
	if g.perf == nil {
		return "", errors.New("no profile running")
	}
	err := errors.Join(g.perfCtl("disable"), g.perfCtl("stop"))
	g.perf.Wait()
	g.perf = nil
	if err != nil {
		return "", err
	}
	out := filepath.Join(dir, filepath.Base(g.pdata))
	if err := runAll([]string{"cp", g.pdata, out}, []string{"cp", "/proc/kallsyms", out + ".kallsyms"}); err != nil {
		return "", err
	}
	return out, nil
}

// stop ends the hub's processes and removes what they left.
func (g *guest) stop() {
	if g.perf != nil {
		g.perf.Process.Kill()
		g.perf.Wait()
		g.perf = nil
	}
	for i := len(g.procs) - 1; i >= 0; i-- {
		p := g.procs[i]
		p.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { p.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			p.cmd.Process.Kill()
			<-done
		}
	}
	g.procs, g.impl = nil, ""
	exec.Command("ip", "link", "del", benchTun).Run()
	exec.Command("ip", "link", "del", prefillDev).Run()
	os.RemoveAll(filepath.Join("/run/frr", frrSpace))
}
