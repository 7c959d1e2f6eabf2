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

// Save writes the state atomically.
func (s stateFile) Save(st *nhrp.State) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	if len(b) > maxStateFile {
		return fmt.Errorf("state file %s: %d bytes, more than %d", s.path, len(b), maxStateFile)
	}
	dir := filepath.Dir(s.path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(s.path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
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
