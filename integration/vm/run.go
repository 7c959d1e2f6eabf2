package vm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// QEMU is the emulator the VMs run under.
const QEMU = "qemu-system-x86_64"

// Defaults for the zero values of Config.
const (
	DefaultMemory  = 256 // MiB: enough for FRR hub + 2 spokes in one VM
	DefaultCPUs    = 1
	DefaultTimeout = 2 * time.Minute
)

// guestMarker is on the guest's kernel command line; InGuest looks for it.
const guestMarker = "dmvpn.vm=1"

// kernelCmdline is the guest kernel's command line. pci=noacpi routes PCI
// interrupts without interpreting ACPI's link devices, which under TCG took
// ~0.6 s of every boot (measured: 2.9 s instead of 3.5 s to the command);
// ACPI still powers the VM off. no_timer_check skips the boot-time check
// that the timer interrupt ticks through the IO-APIC: under TCG on a
// starved host it timed out and the kernel panicked ("IO-APIC + timer
// doesn't work"), as virtual machines' kernels are told to avoid.
const kernelCmdline = "console=ttyS0 panic=-1 quiet loglevel=4 pci=noacpi no_timer_check " + guestMarker

// markerStart is the console line stage2 prints just before the command.
const markerStart = "dmvpn-vm: command starts"

// ErrTimeout is wrapped by Run's error when the command outlived
// Config.Timeout and the VM was killed.
var ErrTimeout = errors.New("vm: timed out")

// NIC is a virtio network card of the VM, connected to a host TAP device.
// The guest sees its NICs as eth0, eth1, … in Config.NICs order; the
// command configures them (`ip link set eth0 up`, addresses, routes).
type NIC struct {
	// TAP is the host TAP device, in Config.NetNS. Create it beforehand
	// with AddTAP, so that the host side can be configured before the VM
	// boots; if it does not exist QEMU creates a transient one.
	TAP string
	// MAC is the guest's address; nil means a fresh one from NewMAC.
	MAC net.HardwareAddr
}

// Config describes one VM run.
type Config struct {
	// Dir is the command's working directory in the guest; the host's
	// file system is the guest's, so a host path works. Empty means the
	// caller's working directory (as with exec.Cmd).
	Dir string
	// Env is the command's environment; nil means the caller's
	// environment (as with exec.Cmd).
	Env []string
	// Timeout bounds the whole run, boot included; zero means
	// DefaultTimeout. The context passed to Run bounds it too.
	Timeout time.Duration
	// Memory is the guest's memory in MiB; zero means DefaultMemory.
	Memory int
	// CPUs is the number of guest CPUs; zero means DefaultCPUs.
	CPUs int
	// Hostname is the guest's host name; empty means "dmvpn-vm".
	Hostname string
	// NetNS is the host network namespace QEMU runs in (and so where it
	// finds the TAP devices of NICs); empty means the caller's.
	NetNS string
	// NICs are the guest's network cards.
	NICs []NIC
	// Shares are host directories mounted read-write at the same path in
	// the guest (9p, no caching): what the guest writes there the host
	// sees at once, e.g. captures or files a test checks. Everything else
	// the guest writes goes to a tmpfs overlay and is lost at power-off.
	Shares []string
	// KernelArgs are added to the guest kernel's command line (e.g.
	// "clocksource=tsc", "tsc=reliable").
	KernelArgs []string
	// Reserved says the caller holds a VM slot for this run (Reserve);
	// otherwise Run waits for one (DefaultSlots VMs run at once on the
	// machine).
	Reserved bool
}

// Result is what came back from a VM run.
type Result struct {
	// ExitCode is the command's exit status in the guest.
	ExitCode int
	// Output is the command's standard output and error, interleaved.
	Output []byte
	// Console is the VM's serial console: kernel messages, init and
	// QEMU's own errors. Useful when the VM fails.
	Console []byte
	// Boot is the time from QEMU's start to the command's start.
	Boot time.Duration
	// Elapsed is the time from QEMU's start to its exit.
	Elapsed time.Duration
	// MACs are the guest NICs' addresses, in Config.NICs order.
	MACs []net.HardwareAddr
	// Queued is how long Run waited for a VM slot before starting QEMU.
	Queued time.Duration
}

// Run waits for a VM slot (unless cfg.Reserved), boots the image, runs argv
// in the guest as root with cfg's working directory and environment, waits
// for it to exit and powers the VM off. Config.Timeout counts from QEMU's
// start; the wait for a slot is bounded by ctx only.
// The guest's root is the host's, read-only over 9p with a tmpfs overlay
// (so writable, and discarded); /run is an empty tmpfs, /tmp the host's
// seen through the overlay; the kernel's modules are the host's
// /lib/modules, so modprobe works; `ip netns` works.
//
// A non-zero exit status of the command is not an error: it is in
// Result.ExitCode. The error is non-nil when the VM could not run the
// command or did not report its status (with the console's tail), and wraps
// ErrTimeout when the run was killed for taking too long; Result then holds
// the output so far. QEMU never outlives Run.
func (img *Image) Run(ctx context.Context, cfg Config, argv ...string) (*Result, error) {
	if len(argv) == 0 {
		return nil, errors.New("vm: no command")
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Memory == 0 {
		cfg.Memory = DefaultMemory
	}
	if cfg.Memory < 128 {
		return nil, fmt.Errorf("vm: %d MiB of memory is too little to boot (256 is enough)", cfg.Memory)
	}
	if cfg.CPUs == 0 {
		cfg.CPUs = DefaultCPUs
	}
	if cfg.Hostname == "" {
		cfg.Hostname = "dmvpn-vm"
	}
	if cfg.Dir == "" {
		wd, err := os.Getwd()
		if err != nil {
			return nil, fmt.Errorf("vm: %w", err)
		}
		cfg.Dir = wd
	}
	if fi, err := os.Stat(cfg.Dir); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("vm: working directory %s is not a directory on the host (the guest's root)", cfg.Dir)
	}
	if cfg.Env == nil {
		cfg.Env = os.Environ()
	}
	res := &Result{}
	if !cfg.Reserved {
		queued := time.Now()
		release, err := Reserve(ctx, 1)
		if err != nil {
			return nil, err
		}
		defer release()
		res.Queued = time.Since(queued)
	}
	for _, n := range cfg.NICs {
		mac := n.MAC
		if mac == nil {
			mac = NewMAC()
		}
		res.MACs = append(res.MACs, mac)
	}

	jobDir, err := os.MkdirTemp("", "dmvpn-vm-job-")
	if err != nil {
		return nil, fmt.Errorf("vm: %w", err)
	}
	defer os.RemoveAll(jobDir)
	if err := writeJob(jobDir, cfg, argv); err != nil {
		return nil, err
	}
	args, err := img.qemuArgs(cfg, jobDir, res.MACs)
	if err != nil {
		return nil, err
	}

	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	// Own process group, killed as a whole; and killed if this process
	// dies (Pdeathsig follows the thread that started the child, which
	// stays locked until Wait returns).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	console := &consoleWriter{}
	cmd.Stdout, cmd.Stderr = console, console

	runtime.LockOSThread()
	start := time.Now()
	console.start = start
	err = cmd.Start()
	if err == nil {
		err = cmd.Wait()
	}
	runtime.UnlockOSThread()
	res.Elapsed = time.Since(start)
	res.Console, res.Boot = console.result()
	res.Output, _ = os.ReadFile(filepath.Join(jobDir, "out"))

	if msg, err := os.ReadFile(filepath.Join(jobDir, "setup-error")); err == nil {
		return res, fmt.Errorf("vm: guest: %s", bytes.TrimSpace(msg))
	}
	// an exit status that came back stands, whatever happened after it
	rc, rerr := os.ReadFile(filepath.Join(jobDir, "rc"))
	switch {
	case rerr == nil:
	case ctx.Err() != nil && errors.Is(ctx.Err(), context.DeadlineExceeded):
		return res, fmt.Errorf("%w after %v running %q; console:\n%s", ErrTimeout, res.Elapsed.Round(time.Millisecond), argv, tail(res.Console))
	case ctx.Err() != nil:
		return res, fmt.Errorf("vm: %w", ctx.Err())
	case err != nil:
		return res, fmt.Errorf("vm: no exit status came back from the guest: qemu: %w; console:\n%s", err, tail(res.Console))
	default:
		return res, fmt.Errorf("vm: no exit status came back from the guest (qemu exited normally); console:\n%s", tail(res.Console))
	}
	res.ExitCode, err = strconv.Atoi(strings.TrimSpace(string(rc)))
	if err != nil {
		return res, fmt.Errorf("vm: bad exit status %q from the guest: %w", rc, err)
	}
	return res, nil
}

// qemuArgs builds the command line that boots img with cfg; the job
// directory is shared as 9p tag "job", macs are the NICs' addresses.
func (img *Image) qemuArgs(cfg Config, jobDir string, macs []net.HardwareAddr) ([]string, error) {
	var args []string
	if cfg.NetNS != "" {
		args = append(args, "ip", "netns", "exec", cfg.NetNS)
	}
	args = append(args, QEMU,
		"-nodefaults", "-no-user-config", "-M", "pc", "-accel", "tcg,thread=multi", "-cpu", "max",
		"-smp", strconv.Itoa(cfg.CPUs), "-m", strconv.Itoa(cfg.Memory),
		"-display", "none", "-serial", "stdio", "-monitor", "none", "-no-reboot",
		"-kernel", img.Vmlinux, "-initrd", img.Initramfs,
		"-append", strings.Join(append([]string{kernelCmdline}, cfg.KernelArgs...), " "),
	)
	fsdev := func(id, path string, readonly bool) {
		opt := "local,id=" + id + ",path=" + qemuEscape(path) + ",security_model=none,multidevs=remap"
		if readonly {
			opt += ",readonly=on"
		}
		args = append(args, "-fsdev", opt, "-device", "virtio-9p-pci,fsdev="+id+",mount_tag="+id)
	}
	fsdev("hostroot", "/", true)
	fsdev("job", jobDir, false)
	for i, s := range cfg.Shares {
		abs, err := filepath.Abs(s)
		if err != nil {
			return nil, fmt.Errorf("vm: share %s: %w", s, err)
		}
		if fi, err := os.Stat(abs); err != nil || !fi.IsDir() {
			return nil, fmt.Errorf("vm: share %s is not a directory", s)
		}
		fsdev("share"+strconv.Itoa(i), abs, false)
	}
	for i, n := range cfg.NICs {
		if n.TAP == "" {
			return nil, fmt.Errorf("vm: NIC %d has no TAP", i)
		}
		id := "net" + strconv.Itoa(i)
		args = append(args,
			"-netdev", "tap,id="+id+",ifname="+qemuEscape(n.TAP)+",script=no,downscript=no",
			"-device", "virtio-net-pci,netdev="+id+",mac="+macs[i].String())
	}
	return args, nil
}

// qemuEscape doubles commas, QEMU's escape inside option values.
func qemuEscape(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// writeJob writes what the guest's init and stage2 read from the job
// directory: the shares to mount, the host name and the script to run.
func writeJob(dir string, cfg Config, argv []string) error {
	var shares strings.Builder
	for i, s := range cfg.Shares {
		abs, err := filepath.Abs(s)
		if err != nil {
			return fmt.Errorf("vm: share %s: %w", s, err)
		}
		if strings.ContainsAny(abs, "\n") {
			return fmt.Errorf("vm: share path %q contains a newline", abs)
		}
		fmt.Fprintf(&shares, "share%d %s\n", i, abs)
	}
	script, err := jobScript(guestEnv, cfg.Dir, cfg.Env, argv)
	if err != nil {
		return err
	}
	for name, content := range map[string]string{
		"shares":   shares.String(),
		"hostname": cfg.Hostname,
		"script":   script,
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			return fmt.Errorf("vm: write job: %w", err)
		}
	}
	return nil
}

// guestEnv is the env(1) the job script runs the command with: the host's
// coreutils by absolute path. Not busybox's: Debian's static busybox prefers
// its own applets, so it would run its own sh or ip for "sh" or "ip".
var guestEnv = []string{"/usr/bin/env"}

// jobScript returns the sh script that enters dir and executes argv with
// exactly env, through the env(1) command envTool. A failure to enter dir is
// reported through setup-error.
func jobScript(envTool []string, dir string, env, argv []string) (string, error) {
	if strings.Contains(argv[0], "=") {
		return "", fmt.Errorf("vm: command %q contains '=' (env would take it for a variable)", argv[0])
	}
	for _, s := range append(append([]string{dir}, env...), argv...) {
		if strings.ContainsRune(s, 0) {
			return "", fmt.Errorf("vm: %q contains a NUL byte", s)
		}
	}
	var b strings.Builder
	q := shellQuote(dir)
	fmt.Fprintf(&b, "cd %s || { echo \"cannot enter the working directory \"%s > /run/dmvpn-vm/job/setup-error; exit 1; }\n", q, q)
	b.WriteString("exec")
	for _, a := range envTool {
		b.WriteString(" " + shellQuote(a))
	}
	b.WriteString(" -i")
	for _, kv := range env {
		if strings.Contains(kv, "=") {
			b.WriteString(" " + shellQuote(kv))
		}
	}
	for _, a := range argv {
		b.WriteString(" " + shellQuote(a))
	}
	b.WriteString("\n")
	return b.String(), nil
}

// shellQuote quotes s for sh: single quotes, with ' written as '\”.
func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// consoleWriter collects QEMU's output (the serial console and QEMU's own
// messages) and notes when stage2 announces the command.
type consoleWriter struct {
	mu      sync.Mutex
	start   time.Time
	buf     bytes.Buffer
	scanned int
	boot    time.Duration
}

func (c *consoleWriter) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.buf.Write(bytes.ReplaceAll(p, []byte("\r"), nil))
	if c.boot == 0 {
		if i := bytes.Index(c.buf.Bytes()[c.scanned:], []byte(markerStart)); i >= 0 {
			c.boot = time.Since(c.start)
		} else if n := c.buf.Len() - len(markerStart); n > c.scanned {
			c.scanned = n
		}
	}
	return len(p), nil
}

func (c *consoleWriter) result() ([]byte, time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return bytes.Clone(c.buf.Bytes()), c.boot
}

// tail returns the last lines of a console log for error messages.
func tail(b []byte) string {
	const max = 3000
	if len(b) > max {
		b = b[len(b)-max:]
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	return string(b)
}

// Probe checks that QEMU can start at all: the binary exists and it runs
// an empty TCG machine. Callers skip VM tests when it fails, with its error
// as the reason; anything after that is a real failure.
func Probe(ctx context.Context) error {
	path, err := exec.LookPath(QEMU)
	if err != nil {
		return fmt.Errorf("vm: qemu cannot start: %w (apt-get install qemu-system-x86)", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, "-M", "none", "-accel", "tcg", "-nodefaults", "-no-user-config",
		"-display", "none", "-serial", "none", "-monitor", "stdio")
	cmd.Stdin = strings.NewReader("quit\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("vm: qemu cannot start: %w: %s", err, tail(out))
	}
	return nil
}

var macState struct {
	once sync.Once
	mu   sync.Mutex
	base [2]byte
	n    uint16
}

// NewMAC returns a locally administered unicast MAC address (52:54:…, the
// QEMU range) not returned before by this process; two bytes are random per
// process, so VMs of concurrent test processes differ too.
func NewMAC() net.HardwareAddr {
	macState.once.Do(func() {
		var b [2]byte
		if f, err := os.Open("/dev/urandom"); err == nil {
			_, _ = f.Read(b[:])
			f.Close()
		}
		pid := os.Getpid()
		macState.base = [2]byte{b[0] ^ byte(pid>>8), b[1] ^ byte(pid)}
	})
	macState.mu.Lock()
	macState.n++
	n := macState.n
	macState.mu.Unlock()
	return net.HardwareAddr{0x52, 0x54, macState.base[0], macState.base[1], byte(n >> 8), byte(n)}
}

// AddTAP creates a persistent TAP device named name in the host network
// namespace netns (empty: the caller's) and sets it up, for a NIC of a VM
// run in that namespace. It goes away with its namespace, or with DelTAP.
func AddTAP(ctx context.Context, netns, name string) error {
	if err := ip(ctx, netns, "tuntap", "add", "dev", name, "mode", "tap"); err != nil {
		return err
	}
	return ip(ctx, netns, "link", "set", "dev", name, "up")
}

// DelTAP deletes a TAP device made by AddTAP.
func DelTAP(ctx context.Context, netns, name string) error {
	return ip(ctx, netns, "link", "del", "dev", name)
}

func ip(ctx context.Context, netns string, args ...string) error {
	if netns != "" {
		args = append([]string{"-n", netns}, args...)
	}
	if out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("vm: ip %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}
