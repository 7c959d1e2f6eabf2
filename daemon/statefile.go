package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/opendmvpn/dmvpn/nhrp"
)

// maxStateFile bounds the state file read at start.
const maxStateFile = 64 << 20

// stateFile keeps the NHRP engine's state in a file (nhrp.StateStore):
// written whole to a temporary file in the same directory, synced, then
// renamed over the old one, so a crash leaves the old state or the new,
// never half of one.
type stateFile struct{ path string }

// Load reads the state; none when the file does not exist.
func (s stateFile) Load() (*nhrp.State, error) {
	f, err := os.Open(s.path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxStateFile+1))
	if err != nil {
		return nil, fmt.Errorf("state file %s: %w", s.path, err)
	}
	if len(b) > maxStateFile {
		return nil, fmt.Errorf("state file %s: larger than %d bytes", s.path, maxStateFile)
	}
	var st nhrp.State
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("state file %s: %w", s.path, err)
	}
	return &st, nil
}

// Save writes the state atomically. The JSON is encoded straight to the
// temporary file (encoding/json's buffer is pooled), not into a copy of
// its own per save: a hub of 10,000 spokes saves a 3 MB state as often
// as its writes allow while they register.
func (s stateFile) Save(st *nhrp.State) error {
	dir := filepath.Dir(s.path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(s.path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := json.NewEncoder(&limitWriter{w: tmp, left: maxStateFile}).Encode(st); err != nil {
		tmp.Close()
		if errors.Is(err, errStateTooLarge) {
			return fmt.Errorf("state file %s: %w", s.path, err)
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
	if err := os.Rename(tmp.Name(), s.path); err != nil {
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
