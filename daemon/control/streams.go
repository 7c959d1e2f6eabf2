package control

import (
	"errors"
	"fmt"
	"net/http"
)

// MaxStreams bounds the streams the API holds open at once: event
// subscriptions (debug nhrp) and charon log tails (debug crypto), each an
// engine subscription or a VICI session with a buffer. One beyond it is
// refused with 429 and ErrTooManyStreams.
const MaxStreams = 64

// ErrTooManyStreams refuses a stream beyond MaxStreams.
var ErrTooManyStreams = errors.New("too many streams open")

// openStream counts a stream in; done counts it out. Beyond the limit it
// writes the refusal and returns false.
func (s *Server) openStream(w http.ResponseWriter) (done func(), ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.streams >= s.maxStreams {
		writeError(w, http.StatusTooManyRequests, fmt.Errorf("%w: %d debug streams (debug nhrp, debug crypto) are open, the most dmvpnd serves at once; end one (Ctrl-C) and try again",
			ErrTooManyStreams, s.streams))
		return nil, false
	}
	s.streams++
	return func() {
		s.mu.Lock()
		s.streams--
		s.mu.Unlock()
	}, true
}

// setMaxStreams changes the limit (tests).
func (s *Server) setMaxStreams(n int) {
	s.mu.Lock()
	s.maxStreams = n
	s.mu.Unlock()
}
