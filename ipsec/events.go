package ipsec

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/strongswan/govici/vici"
	"go.uber.org/zap"
)

// eventSession is the second VICI session, for events only: charon's
// events would otherwise queue behind commands.
type eventSession struct {
	s  *vici.Session
	ch chan vici.Event
}

// events the manager follows.
var followed = []string{"ike-updown", "child-updown", "ike-rekey", "child-rekey"}

func openEvents(path string) (*eventSession, error) {
	s, err := vici.NewSession(vici.WithSocketPath(path))
	if err != nil {
		return nil, fmt.Errorf("ipsec: VICI events %s: %w", path, err)
	}
	if err := s.Subscribe(followed...); err != nil {
		s.Close()
		return nil, fmt.Errorf("ipsec: subscribing to events: %w", err)
	}
	// govici drops events when the channel is full: a big buffer.
	ch := make(chan vici.Event, 4096)
	s.NotifyEvents(ch)
	return &eventSession{s: s, ch: ch}, nil
}

func (e *eventSession) close() { e.s.Close() }

// handleEvent updates the SA table from an event. Events come in charon's
// order on one goroutine, so an SA that goes away is reported to the
// engine exactly once: by its down event, or, when a rekey had to be
// followed by reading every SA, by that read.
func (m *Manager) handleEvent(ctx context.Context, e vici.Event) {
	now := time.Now()
	up := str(e.Message, "up") == "yes"
	switch e.Name {
	case "ike-updown", "child-updown":
		for _, sa := range parseSAs(e.Message, now) {
			m.mu.Lock()
			prev, had := m.sas.get(sa.IKEID)
			// A CHILD_SA's down event may come after its IKE SA's (a dead
			// peer): it must not bring the IKE SA back into the table.
			if up || (e.Name == "child-updown" && sa.State == "ESTABLISHED" && had) {
				if e.Name == "child-updown" && !up {
					// One CHILD_SA went down: the others stay.
					sa.Children = dropChildren(prev.Children, sa.Children)
				}
				sa.upSeen = prev.upSeen
				if up && e.Name == "child-updown" {
					sa.upSeen = now
				}
				m.sas.put(sa)
			} else {
				m.sas.del(sa.IKEID)
				delete(m.verified, sa.IKEID)
			}
			m.mu.Unlock()
			if up && e.Name == "ike-updown" {
				m.stats.ikeUp.Add(1)
				select {
				case m.certQ <- certReq{id: sa.RemoteID, at: now}:
				default:
				}
			}
			if !up && had && prev.Up() && !m.peerUp(sa.RemoteHost) {
				m.saDown(sa.RemoteHost, sa.Conn, e.Name)
			}
			if up {
				m.dedup(ctx, sa.RemoteHost)
			}
		}
	case "ike-rekey", "child-rekey":
		// The IKE SA's unique id changes on an IKE rekey, a CHILD_SA's on
		// its rekey: the event carries the old and the new one. Only an
		// event this process cannot place (an SA it never saw) costs a
		// read of every SA.
		if !m.followRekey(e, now) {
			for _, p := range m.refresh(ctx) {
				m.saDown(p, "", e.Name)
			}
		}
	}
	if e.Name == "child-updown" || e.Name == "ike-updown" {
		m.syncAliases(ctx)
	}
	m.wakeWaiters()
}

// saDown tells the engine a peer has no SA up any more.
func (m *Manager) saDown(peer netip.Addr, conn, event string) {
	m.stats.saDown.Add(1)
	m.log.Info("SA down", zap.Stringer("peer", peer), zap.String("conn", conn), zap.String("event", event))
	if m.hooks.PeerLost != nil {
		m.hooks.PeerLost(peer, "SA down")
	}
}

// followRekey applies an ike-rekey event (conn → old, new: two IKE SAs)
// or a child-rekey event (conn → the IKE SA, its child-sas each → old,
// new) to the SA table, and reports whether it could: false when the
// event names an SA the table does not hold or is not in that shape.
func (m *Manager) followRekey(e vici.Event, now time.Time) bool {
	for _, conn := range e.Message.Keys() {
		ike := sub(e.Message, conn)
		if ike == nil {
			return false
		}
		if e.Name == "ike-rekey" {
			oldSA, newSA := oneSA(conn, sub(ike, "old"), now), oneSA(conn, sub(ike, "new"), now)
			if oldSA == nil || newSA == nil || newSA.IKEID == "" || newSA.State != "ESTABLISHED" {
				return false
			}
			m.mu.Lock()
			prev, had := m.sas.get(oldSA.IKEID)
			if had {
				// The event lists the IKE SAs without their CHILD_SAs,
				// which the new one adopts.
				if len(newSA.Children) == 0 {
					newSA.Children = prev.Children
				}
				m.sas.del(oldSA.IKEID)
				newSA.upSeen = prev.upSeen
				m.sas.put(*newSA)
				// The peer proved its identity to the old IKE SA, which
				// authenticated the rekey.
				if v, ok := m.verified[oldSA.IKEID]; ok {
					delete(m.verified, oldSA.IKEID)
					m.verified[newSA.IKEID] = v
				}
			}
			m.mu.Unlock()
			if !had {
				return false
			}
			continue
		}
		id := str(ike, "uniqueid")
		children := sub(ike, "child-sas")
		m.mu.Lock()
		sa, had := m.sas.get(id)
		if !had || children == nil {
			m.mu.Unlock()
			return false
		}
		kids := append([]ChildSA(nil), sa.Children...)
		for _, k := range children.Keys() {
			c := sub(children, k)
			if c == nil {
				continue
			}
			o, n := sub(c, "old"), sub(c, "new")
			if o == nil || n == nil {
				m.mu.Unlock()
				return false
			}
			kids = dropChildren(kids, []ChildSA{{ID: str(o, "uniqueid")}})
			kids = append(kids, parseChild(n, now))
		}
		sortChildren(kids)
		sa.Children = kids
		m.sas.put(sa)
		m.mu.Unlock()
	}
	return true
}

// oneSA parses one IKE SA of conn out of its VICI section.
func oneSA(conn string, ike *vici.Message, now time.Time) *SA {
	if ike == nil {
		return nil
	}
	in := vici.NewMessage()
	if err := in.Set(conn, ike); err != nil {
		return nil
	}
	sas := parseSAs(in, now)
	if len(sas) != 1 {
		return nil
	}
	return &sas[0]
}

// dropChildren removes the CHILD_SAs of down from have.
func dropChildren(have, down []ChildSA) []ChildSA {
	var out []ChildSA
	for _, c := range have {
		gone := false
		for _, d := range down {
			if d.ID == c.ID {
				gone = true
			}
		}
		if !gone {
			out = append(out, c)
		}
	}
	return out
}
