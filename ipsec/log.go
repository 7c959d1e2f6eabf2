package ipsec

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/strongswan/govici/vici"
)

// LogLine is one line of charon's log as VICI streams it (the log event;
// charon sends levels 0 and 1, as swanctl --log shows them).
type LogLine struct {
	Time   time.Time `json:"time"`
	Group  string    `json:"group"` // IKE, NET, ENC, CFG, …
	Level  int       `json:"level"`
	Thread int       `json:"thread"`
	// Conn and IKEID name the IKE SA the line is about, when it is about
	// one.
	Conn  string `json:"conn,omitempty"`
	IKEID string `json:"ike_id,omitempty"`
	Msg   string `json:"msg"`
}

// String formats a line as charon's own log does:
// "12[IKE] <dmvpn-hub|3> IKE_SA dmvpn-hub[3] established …".
func (l LogLine) String() string {
	sa := ""
	if l.Conn != "" || l.IKEID != "" {
		sa = fmt.Sprintf("<%s|%s> ", l.Conn, l.IKEID)
	}
	return fmt.Sprintf("%02d[%s] %s%s", l.Thread, l.Group, sa, l.Msg)
}

// logLine reads a log event.
func logLine(m *vici.Message, now time.Time) LogLine {
	lvl, _ := strconv.Atoi(str(m, "level"))
	th, _ := strconv.Atoi(str(m, "thread"))
	return LogLine{Time: now, Group: str(m, "group"), Level: lvl, Thread: th,
		Conn: str(m, "ikesa-name"), IKEID: str(m, "ikesa-uniqueid"), Msg: str(m, "msg")}
}

// peerFilter decides which lines are about one peer: those of its IKE
// SAs (by unique id, or by the connection to it) and those that name its
// address ("received packet: from 192.0.2.1[500]", "192.0.2.1 is
// initiating an IKE_SA").
type peerFilter struct {
	peer  string
	conns [2]string
	ids   func() map[string]bool
	cache map[string]bool
	at    time.Time
}

func newPeerFilter(m *Manager, peer netip.Addr) *peerFilter {
	return &peerFilter{
		peer:  peer.String(),
		conns: [2]string{connNHS(peer), connPeer(peer)},
		ids: func() map[string]bool {
			out := map[string]bool{}
			for _, sa := range m.sasTo(peer) {
				out[sa.IKEID] = true
			}
			return out
		},
	}
}

// match reports whether a line is about the peer. The peer's IKE SA ids
// are read again at most every 200 ms (an SA comes up and gets an id).
func (f *peerFilter) match(l LogLine, now time.Time) bool {
	if l.Conn == f.conns[0] || l.Conn == f.conns[1] {
		return true
	}
	if l.IKEID != "" {
		if f.cache == nil || now.Sub(f.at) > 200*time.Millisecond {
			f.cache, f.at = f.ids(), now
		}
		if f.cache[l.IKEID] {
			return true
		}
	}
	return mentions(l.Msg, f.peer)
}

// mentions reports whether msg names addr as a whole address (not as
// the start of a longer one: 192.0.2.1 is not in 192.0.2.17).
func mentions(msg, addr string) bool {
	for i := 0; ; {
		j := strings.Index(msg[i:], addr)
		if j < 0 {
			return false
		}
		j += i
		end := j + len(addr)
		before := j == 0 || !addrByte(msg[j-1])
		after := end == len(msg) || !addrByte(msg[end])
		if before && after {
			return true
		}
		i = j + 1
	}
}

func addrByte(c byte) bool { return c >= '0' && c <= '9' || c == '.' }

// Log streams charon's log to fn until ctx ends, charon goes away or fn
// fails: every line, or, when peer is valid, the lines about that peer.
// It has a VICI session of its own for the stream.
func (m *Manager) Log(ctx context.Context, peer netip.Addr, fn func(LogLine) error) error {
	s, err := vici.NewSession(vici.WithSocketPath(m.cfg.Socket))
	if err != nil {
		return fmt.Errorf("ipsec: VICI %s: %w", m.cfg.Socket, err)
	}
	defer s.Close()
	if err := s.Subscribe("log"); err != nil {
		return fmt.Errorf("ipsec: subscribing to charon's log: %w", err)
	}
	ch := make(chan vici.Event, 1024)
	s.NotifyEvents(ch)
	var f *peerFilter
	if peer.IsValid() {
		f = newPeerFilter(m, peer.Unmap())
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-ch:
			if !ok {
				return errNotConnected
			}
			if e.Name != "log" {
				continue
			}
			now := time.Now()
			l := logLine(e.Message, now)
			if f != nil && !f.match(l, now) {
				continue
			}
			if err := fn(l); err != nil {
				return err
			}
		}
	}
}
