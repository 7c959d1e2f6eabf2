package host

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
)

// originals are what dmvpnd changed and will put back: the values
// sysctls set with Restore had before it first changed them, and the
// routes of other programs that a client's route replaced (same key),
// kept in a file (when one is named) so that a run after a crash restores
// what was there before the crashed run, not the crashed run's.
type originals struct {
	file string
	mu   sync.Mutex
	m    map[string]string
	rts  map[string]Route // by owner and route key
}

type originalsFile struct {
	Sysctls map[string]string `json:"sysctls,omitempty"`
	Routes  map[string]Route  `json:"routes,omitempty"`
}

func loadOriginals(file string) (*originals, error) {
	o := &originals{file: file, m: map[string]string{}, rts: map[string]Route{}}
	if file == "" {
		return o, nil
	}
	b, err := os.ReadFile(file)
	if errors.Is(err, fs.ErrNotExist) {
		return o, nil
	}
	if err != nil {
		return nil, fmt.Errorf("host: state file: %w", err)
	}
	var f originalsFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("host: state file %s: %w", file, err)
	}
	if f.Sysctls != nil {
		o.m = f.Sysctls
	}
	if f.Routes != nil {
		o.rts = f.Routes
	}
	return o, nil
}

func displacedKey(owner string, k routeKey) string {
	return fmt.Sprintf("%s %d %v %d", owner, k.table, k.dst, k.metric)
}

// displace keeps r, another program's route that owner's route replaces,
// unless one is kept for that key already.
func (o *originals) displace(owner string, r Route) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	k := displacedKey(owner, r.key())
	if _, ok := o.rts[k]; ok {
		return nil
	}
	o.rts[k] = r
	return o.save()
}

// displaced returns the route owner's route at key replaced, if any.
func (o *originals) displaced(owner string, k routeKey) (Route, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	r, ok := o.rts[displacedKey(owner, k)]
	return r, ok
}

func (o *originals) restored(owner string, k routeKey) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	delete(o.rts, displacedKey(owner, k))
	return o.save()
}

// record keeps v as key's original unless one is known already.
func (o *originals) record(key, v string) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if _, ok := o.m[key]; ok {
		return nil
	}
	o.m[key] = v
	return o.save()
}

func (o *originals) get(key string) (string, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	v, ok := o.m[key]
	return v, ok
}

func (o *originals) forget(key string) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	delete(o.m, key)
	return o.save()
}

// save writes the file whole (a new file renamed over the old one).
func (o *originals) save() error {
	if o.file == "" {
		return nil
	}
	if len(o.m) == 0 && len(o.rts) == 0 {
		if err := os.Remove(o.file); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("host: state file: %w", err)
		}
		return nil
	}
	b, err := json.MarshalIndent(originalsFile{Sysctls: o.m, Routes: o.rts}, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(o.file), 0o700); err != nil {
		return fmt.Errorf("host: state file: %w", err)
	}
	tmp := o.file + ".new"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("host: state file: %w", err)
	}
	if err := os.Rename(tmp, o.file); err != nil {
		return fmt.Errorf("host: state file: %w", err)
	}
	return nil
}
