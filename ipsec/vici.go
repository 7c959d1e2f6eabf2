package ipsec

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/strongswan/govici/vici"
)

// callSlack is added to every command's own timeout for the context
// deadline: govici kills a session whose reply does not come before the
// context deadline plus five seconds, or five seconds without one, so
// every call carries a deadline longer than charon's work.
const callSlack = 3 * time.Second

// viciConn is the command session to charon. Calls are serialised (govici
// streams are not safe to interleave).
type viciConn struct {
	path string
	mu   sync.Mutex
	s    *vici.Session
}

func dialVICI(ctx context.Context, path string) (*viciConn, error) {
	s, err := vici.NewSession(vici.WithSocketPath(path))
	if err != nil {
		return nil, fmt.Errorf("ipsec: VICI %s: %w", path, err)
	}
	return &viciConn{path: path, s: s}, nil
}

func (c *viciConn) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.s != nil {
		c.s.Close()
		c.s = nil
	}
}

// errVICIClosed is returned by calls on a closed session.
var errVICIClosed = errors.New("ipsec: VICI session closed")

// call runs a command with a deadline of d plus slack.
func (c *viciConn) call(ctx context.Context, d time.Duration, cmd string, in *vici.Message) (*vici.Message, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.s == nil {
		return nil, errVICIClosed
	}
	ctx, cancel := context.WithTimeout(ctx, d+callSlack)
	defer cancel()
	out, err := c.s.Call(ctx, cmd, in)
	if err != nil {
		if out == nil {
			c.resync() // no answer: the session may be out of step
		}
		return out, fmt.Errorf("ipsec: %s: %w", cmd, err)
	}
	return out, nil
}

// resync replaces the session after a call that got no answer (its
// deadline passed, or the connection failed): govici leaves the late
// answer on the socket, and every later call would read the answer of
// the one before ("unexpected response type"). Called with mu held; when
// charon cannot be reached the session stays closed (errVICIClosed) until
// the manager connects again.
func (c *viciConn) resync() {
	c.s.Close()
	c.s = nil
	if s, err := vici.NewSession(vici.WithSocketPath(c.path)); err == nil {
		c.s = s
	}
}

// stream runs a streamed command and collects the events.
func (c *viciConn) stream(ctx context.Context, d time.Duration, cmd, event string, in *vici.Message) ([]*vici.Message, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.s == nil {
		return nil, errVICIClosed
	}
	ctx, cancel := context.WithTimeout(ctx, d+callSlack)
	defer cancel()
	var out []*vici.Message
	for m, err := range c.s.CallStreaming(ctx, cmd, event, in) {
		if err != nil {
			if m == nil {
				c.resync()
			}
			return out, fmt.Errorf("ipsec: %s: %w", cmd, err)
		}
		out = append(out, m)
	}
	return out, nil
}

// msg builds a message from key/value pairs.
func msg(kv ...any) *vici.Message {
	m := vici.NewMessage()
	for i := 0; i+1 < len(kv); i += 2 {
		if err := m.Set(kv[i].(string), kv[i+1]); err != nil {
			panic(fmt.Sprintf("ipsec: building a VICI message: %v", err))
		}
	}
	return m
}

// str returns a string field of a message, or "".
func str(m *vici.Message, k string) string {
	if m == nil {
		return ""
	}
	s, _ := m.Get(k).(string)
	return s
}

// sub returns a section of a message, or nil.
func sub(m *vici.Message, k string) *vici.Message {
	if m == nil {
		return nil
	}
	s, _ := m.Get(k).(*vici.Message)
	return s
}
