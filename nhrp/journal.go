package nhrp

import (
	"errors"
	"net/netip"
	"slices"
	"time"
)

// StateJournal is a StateStore that can also add changes to the state it
// holds, so that a save costs what changed, not the whole state: at
// 100,000 registrations refreshed 42 times a second, a whole save every
// few seconds was half of a hub's steady-state processor time. The
// engine saves the whole state first, then appends the changes, and
// saves the whole state again (compacting) once it has appended twice as
// many entries as it keeps, or after a failure.
type StateJournal interface {
	StateStore
	// Append changes the state last saved or appended to: the entries
	// put replace (or join) those of the same Proto, the prefixes gone
	// leave it. Saved is when the change was taken. An error leaves the
	// state as it was or with the change applied; the engine's next save
	// is then whole.
	Append(d StateDelta) error
}

// StateDelta is a change of the state kept (StateJournal.Append).
type StateDelta struct {
	Saved time.Time      `json:"saved"`
	Put   []StateEntry   `json:"put,omitempty"`
	Gone  []netip.Prefix `json:"gone,omitempty"`
}

// Apply changes st by d: the entries put replace those of the same Proto
// or are added (in address order), those gone are removed; at most
// MaxStateEntries are kept.
func (st *State) Apply(d StateDelta) {
	if len(d.Put) == 0 && len(d.Gone) == 0 {
		return
	}
	at := make(map[netip.Prefix]int, len(st.Entries))
	for i, en := range st.Entries {
		at[en.Proto] = i
	}
	drop := make(map[int]bool, len(d.Gone))
	for _, p := range d.Gone {
		if i, ok := at[p]; ok {
			drop[i] = true
			delete(at, p)
		}
	}
	for _, en := range d.Put {
		if i, ok := at[en.Proto]; ok {
			st.Entries[i] = en
			delete(drop, i)
			continue
		}
		at[en.Proto] = len(st.Entries)
		st.Entries = append(st.Entries, en)
	}
	if len(drop) > 0 {
		kept := st.Entries[:0]
		for i, en := range st.Entries {
			if !drop[i] {
				kept = append(kept, en)
			}
		}
		st.Entries = kept
	}
	sortStateEntries(st.Entries)
	if len(st.Entries) > MaxStateEntries {
		st.Entries = st.Entries[:MaxStateEntries]
	}
	if d.Saved.After(st.Saved) {
		st.Saved = d.Saved
	}
}

// errJournalBroken refuses a delta after one that failed.
var errJournalBroken = errors.New("an earlier change of the state was not written: waiting for a whole save")

// journalMin is the fewest entries appended before a whole save compacts
// the journal, journalRatio how many times as many as the cache holds:
// while 100,000 spokes register at once every entry is appended once
// (the journal stays under three times the state), and no whole copy of
// the state is made meanwhile.
const (
	journalMin   = 1024
	journalRatio = 2
)

// journalState is the engine's account of its StateJournal: the keys of
// the kept entries changed since the last snapshot it handed, and how
// many it appended since the last whole save.
type journalState struct {
	dirty    map[netip.Prefix]struct{}
	appended int
	// began says a whole snapshot was handed in this run; whole that the
	// next must be whole again.
	began, whole bool
}

// changed notes a change of the entry at key p.
func (j *journalState) changed(p netip.Prefix) {
	if j.dirty == nil {
		j.dirty = make(map[netip.Prefix]struct{})
	}
	j.dirty[p] = struct{}{}
}

// reset forgets the changes noted (a snapshot took them); a large set's
// memory goes with them.
func (j *journalState) reset() {
	if len(j.dirty) > journalMin {
		j.dirty = nil
	} else {
		clear(j.dirty)
	}
}

// unsent takes back the changes of a snapshot the saver never took: they
// go into the next one.
func (j *journalState) unsent(sn *stateSnap) {
	if !sn.delta {
		j.whole = true
		return
	}
	for _, r := range sn.entries {
		j.changed(r.proto)
	}
	for _, p := range sn.gone {
		j.changed(p)
	}
	j.appended -= len(sn.entries) + len(sn.gone)
}

// nextSnapshot returns what the saver writes next: the changes since the
// last snapshot when the store keeps a journal and it is not due for
// compaction, else the whole state.
func (e *Engine) nextSnapshot() *stateSnap {
	j := &e.journal
	_, journal := e.deps.State.(StateJournal)
	failed := e.saveFailed.Swap(false)
	if !journal || !j.began || j.whole || failed || j.appended+len(j.dirty) > max(journalRatio*len(e.cache.m), journalMin) {
		j.began, j.whole, j.appended = true, false, 0
		j.reset()
		return e.snapshotState()
	}
	sn := &stateSnap{saved: e.now, delta: true}
	for p := range j.dirty {
		if en := e.cache.get(p); en != nil && kept(en) && !en.expires.IsZero() {
			sn.entries = append(sn.entries, recOf(en))
		} else {
			sn.gone = append(sn.gone, p)
		}
	}
	j.appended += len(j.dirty)
	j.reset()
	return sn
}

// sortStateEntries orders kept entries by address (the order of the
// state file).
func sortStateEntries(s []StateEntry) {
	slices.SortFunc(s, func(a, b StateEntry) int { return protoCompare(a.Proto, b.Proto) })
}

// delta returns a delta snapshot as the change the store appends.
func (b *stateBuilder) delta(sn *stateSnap) StateDelta {
	return StateDelta{Saved: sn.saved, Put: b.entries(sn), Gone: sn.gone}
}
