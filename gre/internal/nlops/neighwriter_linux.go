//go:build linux

package nlops

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// NeighOp is one neighbour change of a batch: Neigh set (added or
// replaced), or deleted with Del (a missing entry is not an error).
type NeighOp struct {
	Neigh *netlink.Neigh
	Del   bool
}

// NeighWriter programs neighbour entries in batches on one netlink socket
// it keeps open: one sendmsg carries up to neighBatch requests and the
// kernel's acknowledgements are read back together, where netlink.NeighSet
// opens a socket per entry and waits for each answer (six system calls an
// entry; a hub programming thousands of spokes spent a sixth of its time
// there, bench-nhrp-frr). It is safe for concurrent use (calls are
// serialised). It works in the network namespace it was created in.
type NeighWriter struct {
	mu  sync.Mutex
	fd  int
	f   *os.File // fd, read through the netpoller
	rc  syscall.RawConn
	seq uint32
	buf []byte
	rb  []byte
}

// neighBatch is how many requests go in one message; their
// acknowledgements must fit in the socket's receive buffer.
const neighBatch = 256

// NewNeighWriter opens the socket.
func NewNeighWriter() (*NeighWriter, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink socket: %w", err)
	}
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 4<<20) != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
	}
	// Errors carry the request's header only, not its payload.
	_ = unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_CAP_ACK, 1)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("netlink bind: %w", err)
	}
	// The answers are waited for through Go's netpoller, not in a
	// blocking read: a thread blocked in the kernel makes the runtime
	// hand its processor off and keeps sysmon polling every 20 µs (13 %
	// of a kernel hub's time in bench-nhrp-frr's profile).
	f := os.NewFile(uintptr(fd), "netlink-neigh")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("netlink socket: %w", err)
	}
	return &NeighWriter{fd: fd, f: f, rc: rc, seq: uint32(time.Now().UnixNano()), rb: make([]byte, 1<<16)}, nil
}

// Close closes the socket.
func (w *NeighWriter) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.fd < 0 {
		return nil
	}
	err := w.f.Close()
	w.fd = -1
	return err
}

// ErrNoAnswer is a request's error when the kernel's answer to it never
// came (the socket's receive buffer overflowed, or it timed out): the
// request may or may not have been applied.
var ErrNoAnswer = errors.New("netlink: no answer to the request")

// Apply applies ops in order and returns one error per op (nil for
// success); deleting an entry that does not exist succeeds.
func (w *NeighWriter) Apply(ops []NeighOp) []error {
	errs := make([]error, len(ops))
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.fd < 0 {
		for i := range errs {
			errs[i] = os.ErrClosed
		}
		return errs
	}
	for from := 0; from < len(ops); from += neighBatch {
		to := min(from+neighBatch, len(ops))
		w.batch(ops[from:to], errs[from:to])
	}
	return errs
}

// batch sends one batch and collects its answers.
func (w *NeighWriter) batch(ops []NeighOp, errs []error) {
	w.buf = w.buf[:0]
	first := w.seq + 1
	for i := range ops {
		w.seq++
		b, err := appendNeighMsg(w.buf, ops[i], w.seq)
		if err != nil {
			errs[i] = err
			continue
		}
		w.buf = b
	}
	pending := 0
	for i := range ops {
		if errs[i] == nil {
			errs[i] = ErrNoAnswer
			pending++
		}
	}
	if pending == 0 {
		return
	}
	if err := unix.Sendto(w.fd, w.buf, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		for i := range errs {
			if errs[i] == ErrNoAnswer {
				errs[i] = fmt.Errorf("netlink send: %w", err)
			}
		}
		return
	}
	// A lost answer must not hang the writer.
	w.f.SetReadDeadline(time.Now().Add(answerWait))
	for pending > 0 {
		n, err := w.recv()
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			// ENOBUFS (answers lost) or the timeout: the rest stay
			// ErrNoAnswer; drain what is left so the next batch starts
			// clean.
			w.drain()
			return
		}
		msgs, err := syscall.ParseNetlinkMessage(w.rb[:n])
		if err != nil {
			continue
		}
		for _, m := range msgs {
			if m.Header.Type != unix.NLMSG_ERROR || len(m.Data) < 4 {
				continue
			}
			i := int(m.Header.Seq - first)
			if i < 0 || i >= len(ops) || errs[i] != ErrNoAnswer {
				continue
			}
			pending--
			code := -int32(binary.NativeEndian.Uint32(m.Data[:4]))
			switch {
			case code == 0:
				errs[i] = nil
			case ops[i].Del && (syscall.Errno(code) == unix.ENOENT || syscall.Errno(code) == unix.ESRCH):
				errs[i] = nil
			default:
				errs[i] = syscall.Errno(code)
			}
		}
	}
}

// answerWait bounds the wait for the kernel's answers to a batch.
const answerWait = 5 * time.Second

// recv reads one message of answers, waiting through the netpoller until
// the read deadline.
func (w *NeighWriter) recv() (int, error) {
	var n int
	var rerr error
	err := w.rc.Read(func(fd uintptr) bool {
		n, _, rerr = unix.Recvfrom(int(fd), w.rb, unix.MSG_DONTWAIT)
		return rerr != unix.EAGAIN
	})
	if err != nil {
		return 0, err
	}
	return n, rerr
}

// drain reads what is queued on the socket without waiting.
func (w *NeighWriter) drain() {
	for {
		if _, _, err := unix.Recvfrom(w.fd, w.rb, unix.MSG_DONTWAIT); err != nil && err != unix.EINTR {
			return
		}
	}
}

// appendNeighMsg appends the request for op: RTM_NEWNEIGH (create or
// replace) or RTM_DELNEIGH, with an ndmsg, NDA_DST and NDA_LLADDR.
func appendNeighMsg(b []byte, op NeighOp, seq uint32) ([]byte, error) {
	n := op.Neigh
	dst := n.IP.To4()
	fam := uint8(unix.AF_INET)
	if dst == nil {
		dst = n.IP.To16()
		fam = unix.AF_INET6
	}
	if dst == nil {
		return b, fmt.Errorf("neighbour without an address: %v", n.IP)
	}
	if n.Family != 0 {
		fam = uint8(n.Family)
	}
	var ll []byte
	switch {
	case n.LLIPAddr != nil:
		ll = n.LLIPAddr.To4()
	case n.HardwareAddr != nil:
		ll = n.HardwareAddr
	}
	typ, flags := uint16(unix.RTM_NEWNEIGH), uint16(unix.NLM_F_REQUEST|unix.NLM_F_ACK|unix.NLM_F_CREATE|unix.NLM_F_REPLACE)
	if op.Del {
		typ, flags, ll = unix.RTM_DELNEIGH, unix.NLM_F_REQUEST|unix.NLM_F_ACK, nil
	}
	start := len(b)
	b = binary.NativeEndian.AppendUint32(b, 0) // length, below
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = binary.NativeEndian.AppendUint16(b, flags)
	b = binary.NativeEndian.AppendUint32(b, seq)
	b = binary.NativeEndian.AppendUint32(b, 0) // port: the kernel
	// struct ndmsg: family, 3 pad, ifindex, state, flags, type.
	b = append(b, fam, 0, 0, 0)
	b = binary.NativeEndian.AppendUint32(b, uint32(n.LinkIndex))
	b = binary.NativeEndian.AppendUint16(b, uint16(n.State))
	b = append(b, uint8(n.Flags), uint8(n.Type))
	b = appendAttr(b, unix.NDA_DST, dst)
	if ll != nil {
		b = appendAttr(b, unix.NDA_LLADDR, ll)
	}
	binary.NativeEndian.PutUint32(b[start:], uint32(len(b)-start))
	return b, nil
}

// appendAttr appends a route attribute, padded to 4 bytes.
func appendAttr(b []byte, typ uint16, v []byte) []byte {
	b = binary.NativeEndian.AppendUint16(b, uint16(4+len(v)))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, v...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}
