package ipsec

import (
	"fmt"

	"github.com/strongswan/govici/vici"
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
