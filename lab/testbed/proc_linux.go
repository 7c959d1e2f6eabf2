package testbed

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ProcSpec describes a long-running process to start in a node.
type ProcSpec struct {
	// Name labels the process in errors and logs.
	Name string
	// Args is the command and its arguments.
	Args []string
	// Env is added to the harness's environment.
	Env []string
	// Stdin, when true, gives the process a pipe (Proc.Send writes to it).
	Stdin bool
}

// Proc is a process running in a node. Its combined output is collected.
type Proc struct {
	Name string
	Node *Node

	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *outBuffer
	done  chan struct{}
	err   error
	once  sync.Once
}

// Start runs a process in the node (`ip netns exec` execs it, so the
// process is the command itself). It is killed by Testbed.Close, and by the
// kernel if the harness dies (parent-death signal).
func (n *Node) Start(spec ProcSpec) (*Proc, error) {
	if len(spec.Args) == 0 {
		return nil, errors.New("testbed: Start without a command")
	}
	p := &Proc{Name: spec.Name, Node: n, out: newOutBuffer(), done: make(chan struct{})}
	p.cmd = exec.Command("ip", append([]string{"netns", "exec", n.NS}, spec.Args...)...)
	p.cmd.Env = append(os.Environ(), spec.Env...)
	p.cmd.Stdout = p.out
	p.cmd.Stderr = p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if spec.Stdin {
		w, err := p.cmd.StdinPipe()
		if err != nil {
			return nil, fmt.Errorf("testbed: %s stdin: %w", spec.Name, err)
		}
		p.stdin = w
	}
	n.tb.mu.Lock()
	if n.tb.done {
		n.tb.mu.Unlock()
		return nil, errors.New("testbed: closed")
	}
	n.tb.logf("[%s] start %s: %s", n.Name, spec.Name, strings.Join(spec.Args, " "))
	if err := p.cmd.Start(); err != nil {
		n.tb.mu.Unlock()
		return nil, fmt.Errorf("testbed: start %s in %s: %w", spec.Name, n.Name, err)
	}
	n.tb.procs = append(n.tb.procs, p)
	n.tb.mu.Unlock()
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// Pid returns the process id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Send writes a line to the process's standard input.
func (p *Proc) Send(line string) error {
	if p.stdin == nil {
		return fmt.Errorf("testbed: %s has no stdin", p.Name)
	}
	_, err := io.WriteString(p.stdin, line+"\n")
	return err
}

// CloseStdin closes the standard input pipe.
func (p *Proc) CloseStdin() error {
	if p.stdin == nil {
		return nil
	}
	return p.stdin.Close()
}

// Output returns everything the process printed so far.
func (p *Proc) Output() string { return p.out.String() }

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Wait waits for the process to exit, or until ctx ends.
func (p *Proc) Wait(ctx context.Context) error {
	select {
	case <-p.done:
		return p.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// WaitFor waits until the output contains a line matching re and returns
// the first line after `from` (a line count) that does; from lets a caller
// wait for a new match. It fails when the process exits or ctx ends.
func (p *Proc) WaitFor(ctx context.Context, re *regexp.Regexp, from int) (string, int, error) {
	for {
		lines, changed := p.out.lines()
		for i := from; i < len(lines); i++ {
			if re.MatchString(lines[i]) {
				return lines[i], i + 1, nil
			}
		}
		select {
		case <-changed:
		case <-p.done:
			lines, _ := p.out.lines()
			for i := from; i < len(lines); i++ {
				if re.MatchString(lines[i]) {
					return lines[i], i + 1, nil
				}
			}
			return "", len(lines), fmt.Errorf("testbed: %s exited (%v) before printing %q; output:\n%s", p.Name, p.err, re, p.Output())
		case <-ctx.Done():
			return "", len(lines), fmt.Errorf("testbed: %s: no line matching %q: %w; output:\n%s", p.Name, re, ctx.Err(), p.Output())
		}
	}
}

// Signal sends a signal to the process group.
func (p *Proc) Signal(sig syscall.Signal) error {
	return syscall.Kill(-p.cmd.Process.Pid, sig)
}

// Stop ends the process: SIGTERM to its group, SIGKILL after two seconds.
func (p *Proc) Stop() {
	p.once.Do(func() {
		select {
		case <-p.done:
			return
		default:
		}
		_ = p.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(2 * time.Second):
			_ = p.Signal(syscall.SIGKILL)
			<-p.done
		}
	})
	if p.stdin != nil {
		_ = p.stdin.Close()
	}
}

// outBuffer collects output and wakes waiters on every write.
type outBuffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	changed chan struct{}
}

func newOutBuffer() *outBuffer { return &outBuffer{changed: make(chan struct{})} }

// Write appends output and wakes waiters.
func (b *outBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	n, err := b.buf.Write(p)
	close(b.changed)
	b.changed = make(chan struct{})
	return n, err
}

// String returns everything written so far.
func (b *outBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// lines returns the complete lines so far and a channel closed on the next
// write.
func (b *outBuffer) lines() ([]string, <-chan struct{}) {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.buf.String()
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	} else {
		s = ""
	}
	if s == "" {
		return nil, b.changed
	}
	return strings.Split(s, "\n"), b.changed
}

// deleteNS kills whatever still runs in a namespace and deletes it.
func deleteNS(ns string) error {
	if out, err := exec.Command("ip", "netns", "pids", ns).Output(); err == nil {
		for _, f := range strings.Fields(string(out)) {
			if pid, err := strconv.Atoi(f); err == nil {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput()
	if err != nil && !strings.Contains(string(out), "No such file") {
		return fmt.Errorf("testbed: delete namespace %s: %w: %s", ns, err, out)
	}
	return nil
}

// Sweep deletes the namespaces of earlier runs whose process is gone (a
// run killed before its cleanup), with anything running in them.
func Sweep() error {
	entries, err := os.ReadDir("/run/netns")
	if err != nil {
		return nil // no namespaces at all
	}
	var errs []error
	for _, e := range entries {
		name := e.Name()
		pid, ok := ownerPid(name)
		if !ok || pid == os.Getpid() || syscall.Kill(pid, 0) == nil {
			continue
		}
		if err := deleteNS(name); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// ownerPid parses the pid out of "dmvt<pid>x<hex>-<node>".
func ownerPid(ns string) (int, bool) {
	if !strings.HasPrefix(ns, NamePrefix) {
		return 0, false
	}
	rest := ns[len(NamePrefix):]
	i := strings.IndexByte(rest, 'x')
	if i <= 0 {
		return 0, false
	}
	pid, err := strconv.Atoi(rest[:i])
	return pid, err == nil && pid > 0
}

// RSS returns a process's resident memory in bytes (0 when unknown or pid
// is 0): the VmRSS line of its /proc status.
func RSS(pid int) int64 {
	if pid == 0 {
		return 0
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb * 1024
		}
	}
	return 0
}
