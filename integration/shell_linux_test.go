package integration

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"
)

// term is a program running on a pseudo-terminal, read like a person
// reads the screen: escape sequences stripped.
type term struct {
	t      *testing.T
	master *os.File
	cmd    *exec.Cmd
	mu     sync.Mutex
	raw    bytes.Buffer
	mark   int // offset in the cleaned text where the next expect starts
	done   chan struct{}
}

func ioctl(fd, req uintptr, arg unsafe.Pointer) error {
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, fd, req, uintptr(arg)); e != 0 {
		return e
	}
	return nil
}

// openPTY returns the master and slave ends of a new pseudo-terminal of
// 50 rows and 120 columns.
func openPTY() (*os.File, *os.File, error) {
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		return nil, nil, err
	}
	unlock := int32(0)
	if err := ioctl(m.Fd(), syscall.TIOCSPTLCK, unsafe.Pointer(&unlock)); err != nil {
		m.Close()
		return nil, nil, fmt.Errorf("unlockpt: %w", err)
	}
	var n uint32
	if err := ioctl(m.Fd(), syscall.TIOCGPTN, unsafe.Pointer(&n)); err != nil {
		m.Close()
		return nil, nil, fmt.Errorf("ptsname: %w", err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		m.Close()
		return nil, nil, err
	}
	ws := struct{ rows, cols, x, y uint16 }{50, 120, 0, 0}
	if err := ioctl(s.Fd(), syscall.TIOCSWINSZ, unsafe.Pointer(&ws)); err != nil {
		m.Close()
		s.Close()
		return nil, nil, fmt.Errorf("window size: %w", err)
	}
	return m, s, nil
}

// startTerm runs a command on a new pseudo-terminal as its controlling
// terminal.
func startTerm(t *testing.T, env []string, name string, args ...string) *term {
	t.Helper()
	m, s, err := openPTY()
	if err != nil {
		t.Skipf("skipping: no pseudo-terminal: %v", err)
	}
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = s, s, s
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s.Close()
	tm := &term{t: t, master: m, cmd: cmd, done: make(chan struct{})}
	go tm.read()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-tm.done
		m.Close()
	})
	return tm
}

// read collects the output and answers the terminal's cursor-position
// queries as a terminal emulator does.
func (tm *term) read() {
	defer close(tm.done)
	buf := make([]byte, 4096)
	for {
		n, err := tm.master.Read(buf)
		if n > 0 {
			chunk := buf[:n]
			for i := bytes.Count(chunk, []byte("\x1b[6n")); i > 0; i-- {
				_, _ = tm.master.Write([]byte("\x1b[1;1R"))
			}
			tm.mu.Lock()
			tm.raw.Write(chunk)
			tm.mu.Unlock()
		}
		if err != nil {
			_ = tm.cmd.Wait()
			return
		}
	}
}

var ansi = regexp.MustCompile(`\x1b\[[0-9;?<=>]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\x1b[=>78]|\x1b\][^\x07]*\x07|\r`)

// text is the output so far, cleaned.
func (tm *term) text() string {
	tm.mu.Lock()
	defer tm.mu.Unlock()
	return ansi.ReplaceAllString(tm.raw.String(), "")
}

// settle waits until the program has been quiet for a moment, so that
// keys are not typed while it still redraws (or reads the answer to its
// cursor-position query, where a key could be taken for part of it).
func (tm *term) settle() {
	size := func() int {
		tm.mu.Lock()
		defer tm.mu.Unlock()
		return tm.raw.Len()
	}
	last, quiet := size(), time.Now()
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
		if n := size(); n != last {
			last, quiet = n, time.Now()
		} else if time.Since(quiet) >= 150*time.Millisecond {
			return
		}
	}
}

func (tm *term) send(s string) {
	tm.t.Helper()
	tm.settle()
	if _, err := tm.master.Write([]byte(s)); err != nil {
		tm.t.Fatalf("writing %q to the terminal: %v", s, err)
	}
}

// expect waits until the output after the mark contains every string,
// then moves the mark past the last of them.
func (tm *term) expect(wants ...string) string {
	tm.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		all := tm.text()
		seen := all[min(tm.mark, len(all)):]
		end, ok := 0, true
		for _, w := range wants {
			i := strings.Index(seen, w)
			if i < 0 {
				ok = false
				break
			}
			end = max(end, i+len(w))
		}
		if ok {
			tm.mark += end
			return seen[:end]
		}
		if time.Now().After(deadline) {
			tm.t.Fatalf("the terminal did not show %q; after the mark:\n%s", wants, seen)
		}
		select {
		case <-tm.done:
			tm.t.Fatalf("the program exited before showing %q; after the mark:\n%s", wants, seen)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// testShell types into the interactive shell of spoke1, opened with
// `dmvpn-lab shell spoke1`: the prompt, `?` help, tab completion,
// abbreviations, an ambiguous word, history, show commands, debug nhrp
// interrupted with Ctrl-C, and exit.
func testShell(t *testing.T, l *labEnv) {
	home := t.TempDir()
	tm := startTerm(t, []string{"TERM=xterm", "HOME=" + home}, filepath.Join(l.bin, "dmvpn-lab"), "--dir", l.dir, "--prefix", l.prefix, "shell", "spoke1")
	tm.expect("spoke1# ")

	tm.send("?")
	tm.expect("  clear     Reset functions", "  show      Show running system information", "spoke1# ")
	tm.send("sh ip nh ?")
	tm.expect("  shortcut  Shortcut routes", "  traffic   NHRP packet counters", "  detail    Show detailed information", "  <cr>", "spoke1# sh ip nh ")
	tm.send("\x15") // Ctrl-U: clear the line

	// Tab completes a keyword; Enter runs the completed line.
	tm.send("show ip nhrp sho\t")
	tm.expect("show ip nhrp shortcut")
	tm.send("\r")
	tm.expect("10.2.0.0/24 via 172.16.2.1, gre1 created", "  Type: shortcut, Flags:", "  NBMA address: 198.51.100.17", "spoke1# ")

	// Abbreviations.
	tm.send("sh dm\r")
	tm.expect("Interface: gre1, IPv4 NHRP Details", "Type:Spoke, NHRP Peers:", " # Ent  Peer NBMA Addr Peer Tunnel Add State  UpDn Tm Attrb",
		"198.51.100.17        172.16.2.1    UP", "DT1", "192.0.2.1            172.16.0.1    UP", "spoke1# ")
	tm.send("s i n nhs det\r")
	tm.expect("172.16.0.1      RE  NBMA Address: 192.0.2.1 priority = 1 cluster = 0  req-sent", "spoke1# ")
	tm.send("d\r")
	tm.expect(`% ambiguous command "d": could be debug, decode`, "spoke1# ")
	tm.send("sh bogus\r")
	tm.expect(`% unknown command "bogus" after "show"`, "spoke1# ")

	// History: Up recalls the previous command.
	tm.send("sh ip nhrp shortcut\r")
	tm.expect("10.2.0.0/24 via 172.16.2.1", "spoke1# ")
	tm.send("\x1b[A")
	tm.expect("sh ip nhrp shortcut")
	tm.send("\r")
	tm.expect("10.2.0.0/24 via 172.16.2.1", "spoke1# ")

	// debug nhrp streams until Ctrl-C; clearing the shortcuts elsewhere
	// makes events.
	tm.send("debug nhrp\r")
	tm.expect("NHRP debugging is on (events); Ctrl-C to stop")
	time.Sleep(300 * time.Millisecond) // the subscription is in place
	if out := l.ctl(t, "spoke1", "clear", "ip", "nhrp", "shortcut"); !strings.Contains(out, "entries cleared") {
		t.Errorf("clear ip nhrp shortcut: %s", out)
	}
	tm.expect("NHRP: shortcut-down 10.2.0.0/24 via 172.16.2.1 nbma 198.51.100.17: cleared")
	tm.send("\x03")
	tm.expect("^C", "spoke1# ")

	tm.send("sh ver\r")
	tm.expect("Node spoke1 (spoke), up", "spoke1# ")
	tm.send("exit\r")
	select {
	case <-tm.done:
	case <-time.After(5 * time.Second):
		t.Fatalf("the shell did not exit; output:\n%s", tm.text())
	}
	if !tm.cmd.ProcessState.Success() {
		t.Errorf("the shell exited with %v", tm.cmd.ProcessState)
	}
	if b, err := os.ReadFile(filepath.Join(home, ".dmvpnctl_history")); err != nil || !strings.Contains(string(b), "sh ip nhrp shortcut") {
		t.Errorf("history file: %v %q", err, b)
	}
}
