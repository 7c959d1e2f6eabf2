package daemon

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"github.com/opendmvpn/dmvpn/nhrp"
)

// maxStateFile bounds the state file read at start.
const maxStateFile = 64 << 20

// stateFile keeps the NHRP engine's state in a file (nhrp.StateJournal):
// the whole state written to a temporary file in the same directory,
// synced, then renamed over the old one, so a crash leaves the old state
// or the new, never half of one; and the changes since, appended to a
// journal beside it (path + ".journal"), one JSON line per change, synced
// before Append returns. The journal's first line names the generation of
// the whole state it applies to (a random number each Save): a crash
// between a Save and the journal's reset leaves a journal Load ignores. A
// line cut short by a crash ends the journal.
type stateFile struct {
	path string

	mu  sync.Mutex
	gen uint64   // generation of the last whole state written
	j   *os.File // the journal being appended to; nil until Save (or after a failure)
}

// stateHeader is the first line of a journal, and the generation field
// of a whole state.
type stateHeader struct {
	Generation uint64 `json:"generation"`
}

func newStateFile(path string) *stateFile { return &stateFile{path: path} }

func (s *stateFile) journalPath() string { return s.path + ".journal" }

// Load reads the state and applies the journal written since; none when
// the file does not exist.
func (s *stateFile) Load() (*nhrp.State, error) {
	b, err := readBounded(s.path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("state file %s: %w", s.path, err)
	}
	var st nhrp.State
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("state file %s: %w", s.path, err)
	}
	var h stateHeader
	if err := json.Unmarshal(b, &h); err != nil {
		return nil, fmt.Errorf("state file %s: %w", s.path, err)
	}
	jb, err := readBounded(s.journalPath())
	if errors.Is(err, fs.ErrNotExist) {
		return &st, nil
	}
	if err != nil {
		return nil, fmt.Errorf("state journal %s: %w", s.journalPath(), err)
	}
	lines := bytes.Split(jb, []byte("\n"))
	var jh stateHeader
	if len(lines) < 2 || json.Unmarshal(lines[0], &jh) != nil || jh.Generation != h.Generation || h.Generation == 0 {
		return &st, nil // of another whole state
	}
	for _, l := range lines[1 : len(lines)-1] { // the last: after the final newline, or cut short
		var d nhrp.StateDelta
		if err := json.Unmarshal(l, &d); err != nil {
			break
		}
		st.Apply(d)
	}
	return &st, nil
}

// readBounded reads a file of at most maxStateFile bytes.
func readBounded(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxStateFile+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxStateFile {
		return nil, fmt.Errorf("larger than %d bytes", maxStateFile)
	}
	return b, nil
}

// Save writes the state atomically. The JSON is encoded straight to the
// temporary file (encoding/json's buffer is pooled), not into a copy of
// its own per save: a hub of 10,000 spokes saves a 3 MB state as often
// as its writes allow while they register.
//
// Then the journal starts again, empty, for the new generation.
func (s *stateFile) Save(st *nhrp.State) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.j != nil {
		s.j.Close()
		s.j = nil
	}
	var g [8]byte
	if _, err := rand.Read(g[:]); err != nil {
		return err
	}
	gen := binary.LittleEndian.Uint64(g[:]) | 1
	whole := struct {
		stateHeader
		*nhrp.State
	}{stateHeader{gen}, st}
	if err := s.replace(s.path, func(w io.Writer) error {
		return json.NewEncoder(&limitWriter{w: w, left: maxStateFile}).Encode(whole)
	}); err != nil {
		return err
	}
	s.gen = gen
	if err := s.replace(s.journalPath(), func(w io.Writer) error {
		return json.NewEncoder(w).Encode(stateHeader{gen})
	}); err != nil {
		return fmt.Errorf("state journal %s: %w", s.journalPath(), err)
	}
	j, err := os.OpenFile(s.journalPath(), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("state journal %s: %w", s.journalPath(), err)
	}
	s.j = j
	return nil
}

// Append adds a change to the journal of the last whole state, synced;
// it fails when there is none (no Save yet, or a failed Append since) or
// the journal would pass maxStateFile.
func (s *stateFile) Append(d nhrp.StateDelta) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.j == nil {
		return fmt.Errorf("state journal %s: no whole state written", s.journalPath())
	}
	b, err := json.Marshal(d)
	if err != nil {
		return err
	}
	b = append(b, '\n')
	fail := func(err error) error {
		s.j.Close()
		s.j = nil
		return fmt.Errorf("state journal %s: %w", s.journalPath(), err)
	}
	if fi, err := s.j.Stat(); err != nil {
		return fail(err)
	} else if fi.Size()+int64(len(b)) > maxStateFile {
		return fail(errStateTooLarge)
	}
	if _, err := s.j.Write(b); err != nil {
		return fail(err)
	}
	if err := s.j.Sync(); err != nil {
		return fail(err)
	}
	return nil
}

// close closes the journal.
func (s *stateFile) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.j != nil {
		s.j.Close()
		s.j = nil
	}
}

// replace writes a file atomically: through a temporary file in the same
// directory, synced, renamed over path, the directory synced.
func (s *stateFile) replace(path string, write func(io.Writer) error) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := write(tmp); err != nil {
		tmp.Close()
		if errors.Is(err, errStateTooLarge) {
			return fmt.Errorf("state file %s: %w", path, err)
		}
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// errStateTooLarge refuses a state larger than maxStateFile.
var errStateTooLarge = fmt.Errorf("larger than %d bytes", maxStateFile)

// limitWriter writes to w until left bytes are spent, then refuses.
type limitWriter struct {
	w    io.Writer
	left int
}

func (l *limitWriter) Write(b []byte) (int, error) {
	if len(b) > l.left {
		return 0, errStateTooLarge
	}
	l.left -= len(b)
	return l.w.Write(b)
}
