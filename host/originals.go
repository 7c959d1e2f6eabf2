package host

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"
)

// originals are what dmvpnd changed and will put back: the values
// sysctls set with Restore had before it first changed them, and the
// routes of other programs that a client's route replaced (same key),
// kept in a file (when one is named) so that a run after a crash restores
// what was there before the crashed run, not the crashed run's. The file
// also records, per client, the identifiers under which it may have left
// entries in the kernel and the sysctls whose originals it keeps, so that
// a later run removes what sits at identifiers the client no longer owns
// (a changed rule priority) or that no client claims any more (a section
// removed from the configuration).
type originals struct {
	file   string
	mu     sync.Mutex
	m      map[string]string
	rts    map[string]Route // by owner and route key
	owners map[string]record
}

// record is what a client may have left in the kernel.
type record struct {
	RulePriorities []int     `json:"rule_priorities,omitempty"`
	RouteProtocol  int       `json:"route_protocol,omitempty"`
	XfrmPriorities []uint32  `json:"xfrm_priorities,omitempty"`
	Tables         []TableID `json:"tables,omitempty"`
	// Sysctls are the keys set with Restore whose originals this client
	// keeps.
	Sysctls []string `json:"sysctls,omitempty"`
}

func (r record) empty() bool {
	return len(r.RulePriorities) == 0 && r.RouteProtocol == 0 && len(r.XfrmPriorities) == 0 && len(r.Tables) == 0 && len(r.Sysctls) == 0
}

type originalsFile struct {
	Sysctls map[string]string `json:"sysctls,omitempty"`
	Routes  map[string]Route  `json:"routes,omitempty"`
	Owners  map[string]record `json:"owners,omitempty"`
}

func loadOriginals(file string) (*originals, error) {
	o := &originals{file: file, m: map[string]string{}, rts: map[string]Route{}, owners: map[string]record{}}
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
	if f.Owners != nil {
		o.owners = f.Owners
	}
	return o, nil
}

// owner returns what an earlier run recorded for a client.
func (o *originals) owner(name string) record {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.owners[name]
}

// names returns the clients with a record.
func (o *originals) names() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Sorted(maps.Keys(o.owners))
}

// setIdentifiers records the identifiers a client may have entries at,
// keeping its sysctls; with none and no sysctls its record goes.
func (o *originals) setIdentifiers(name string, ids record) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	ids.Sysctls = o.owners[name].Sysctls
	if ids.empty() {
		delete(o.owners, name)
	} else {
		o.owners[name] = ids
	}
	return o.save()
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

// record keeps v as key's original unless one is known already, and
// notes that owner keeps it.
func (o *originals) record(owner, key, v string) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	r := o.owners[owner]
	_, known := o.m[key]
	if known && slices.Contains(r.Sysctls, key) {
		return nil
	}
	if !known {
		o.m[key] = v
	}
	if !slices.Contains(r.Sysctls, key) {
		r.Sysctls = append(r.Sysctls, key)
		o.owners[owner] = r
	}
	return o.save()
}

func (o *originals) get(key string) (string, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	v, ok := o.m[key]
	return v, ok
}

// forget drops key's original once it is restored, and owner's note.
func (o *originals) forget(owner, key string) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	delete(o.m, key)
	return o.disownLocked(owner, key)
}

// disown drops owner's note of key: another client keeps its original.
func (o *originals) disown(owner, key string) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.disownLocked(owner, key)
}

func (o *originals) disownLocked(owner, key string) error {
	if r, ok := o.owners[owner]; ok {
		r.Sysctls = slices.DeleteFunc(r.Sysctls, func(k string) bool { return k == key })
		if r.empty() {
			delete(o.owners, owner)
		} else {
			o.owners[owner] = r
		}
	}
	return o.save()
}

// save writes the file whole (a new file renamed over the old one).
func (o *originals) save() error {
	if o.file == "" {
		return nil
	}
	if len(o.m) == 0 && len(o.rts) == 0 && len(o.owners) == 0 {
		if err := os.Remove(o.file); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("host: state file: %w", err)
		}
		return nil
	}
	b, err := json.MarshalIndent(originalsFile{Sysctls: o.m, Routes: o.rts, Owners: o.owners}, "", "  ")
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
