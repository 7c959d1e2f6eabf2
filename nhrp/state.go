package nhrp

import (
	"net/netip"
	"slices"
	"time"

	"go.uber.org/zap"
)

// StateVersion is the version of the State format.
const StateVersion = 1

// State is what an engine keeps across a restart: its clients'
// registrations (hub) with the identity that proved them and their
// expiry, and the bindings and shortcuts it resolved (both roles). A crash
// then loses nothing: the next run restores them at start, programs the
// kernel for them again and confirms them.
type State struct {
	Version int `json:"version"`
	// Tunnel is the tunnel address the state belongs to: a state of
	// another address is not restored.
	Tunnel netip.Prefix `json:"tunnel"`
	// Saved is when it was written.
	Saved   time.Time    `json:"saved"`
	Entries []StateEntry `json:"entries"`
}

// StateEntry is one binding kept across a restart.
type StateEntry struct {
	Type     EntryType           `json:"type"`
	Proto    netip.Prefix        `json:"proto"`
	NBMA     netip.Addr          `json:"nbma,omitzero"`
	Claimed  netip.Addr          `json:"claimed,omitzero"`
	NextHop  netip.Addr          `json:"next_hop,omitzero"`
	Source   netip.Addr          `json:"source,omitzero"`
	Flags    []string            `json:"flags,omitempty"`
	Created  time.Time           `json:"created"`
	Expires  time.Time           `json:"expires"`
	Holding  uint16              `json:"holding"`
	MTU      uint16              `json:"mtu,omitempty"`
	ReqID    uint32              `json:"request_id,omitempty"`
	Identity string              `json:"identity,omitempty"`
	Attrs    map[string][]string `json:"attrs,omitempty"`
	Networks []netip.Prefix      `json:"networks,omitempty"`
}

// StateStore keeps an engine's State. The engine loads it once at start
// and saves it, from a goroutine of its own, as its bindings change: at
// once when one comes or goes, within a few seconds when one is only
// refreshed.
type StateStore interface {
	// Load returns the state kept, nil when there is none.
	Load() (*State, error)
	// Save keeps st. The entries' Flags slices are shared between
	// entries: read only.
	Save(*State) error
}

// Bounds of the state kept.
const (
	// MaxStateEntries caps the entries saved and restored.
	MaxStateEntries = 200000
	// saveSoon and saveLater are how long a change waits before the
	// state is saved: a binding that came or went, a refresh.
	saveSoon  = 20 * time.Millisecond
	saveLater = 5 * time.Second
	// refreshGap is how many times its last write's length a save that
	// only refreshes waits at least, so that in the steady state the
	// state file takes at most a twentieth of a core: at 100,000 spokes a
	// write takes about half a second, and a save every 5 s was a tenth
	// of a core (bench-nhrp-scale's steady state).
	refreshGap = 20
	// saveRest is how many times as long as the last write took the
	// saver rests before the next (saveState): a tenth of a core at
	// most while registrations keep coming (a quarter was a tenth of
	// the hub's time during bench-nhrp-frr's 2,000 registrations).
	saveRest = 9
	// confirmWindow is how long a restored binding has to be confirmed
	// by its peer's identity (with a Verifier) before it is dropped.
	confirmWindow = 30 * time.Second
	// confirmRetry is how often a restored binding's identity is asked
	// for meanwhile.
	confirmRetry = 2 * time.Second
)

// kept reports whether an entry is part of the state: a client's
// registration, a resolved binding, a shortcut.
func kept(en *entry) bool {
	switch en.typ {
	case TypeDynamic, TypeCached, TypeShortcut:
		return true
	}
	return false
}

// stateChanged schedules a save for a change of en: soon when a binding
// came or went, later when one was only refreshed.
func (e *Engine) stateChanged(en *entry, soon bool) {
	if e.deps.State == nil || e.stopping || !e.restored {
		return
	}
	e.journal.changed(en.proto)
	d := max(saveLater, refreshGap*time.Duration(e.saveTook.Load()))
	if soon {
		d = saveSoon
	}
	e.scheduleSave(e.now.Add(d))
}

// scheduleSave arms the save timer for when, unless it fires earlier.
func (e *Engine) scheduleSave(when time.Time) {
	if e.saveTimer != nil && e.saveTimer.index >= 0 {
		if !e.saveTimer.when.After(when) {
			return
		}
		e.saveTimer.Stop()
	}
	e.saveTimer = e.sched.at(when, e.saveState)
}

// saveState hands a snapshot to the saver goroutine when it can take one:
// while it is still writing the last one, and until saveRest times as
// long as that write took has passed since it ended, the save waits. A
// snapshot made meanwhile would be replaced unwritten, and a large state
// written back to back takes a processor from the engine for as long as
// registrations keep coming: this way the saver has at most a tenth of
// one (bench-nhrp-frr's profile at 10,000 spokes: the saver was 15 % of
// the hub's time at 1×, most of it the JSON encoding and the page faults
// of its fresh buffers). A binding that came or went is written within
// saveSoon of it, or once the pause after the last write is over: at
// 10,000 bindings under QEMU TCG, about a second.
func (e *Engine) saveState() {
	if e.saving.Load() {
		e.scheduleSave(e.now.Add(saveSoon))
		return
	}
	if next := time.Unix(0, e.savedAt.Load()).Add(saveRest * time.Duration(e.saveTook.Load())); next.After(e.now) {
		e.scheduleSave(next)
		return
	}
	e.handSnapshot()
}

// handSnapshot gives the saver a snapshot now; one it has not started
// writing is replaced (the latest wins).
func (e *Engine) handSnapshot() {
	select {
	case old := <-e.saveCh:
		e.journal.unsent(old)
	default:
	}
	st := e.nextSnapshot()
	e.saving.Store(true)
	e.saveCh <- st
}

// stateSnap is a snapshot of the entries to keep, made on the loop: their
// fields copied as they are, the rest (flag names, order) left to the
// saver goroutine.
type stateSnap struct {
	saved   time.Time
	entries []stateRec
	// delta: entries are the kept entries that changed since the last
	// snapshot and gone the keys of those that went (StateJournal.Append),
	// not the whole state.
	delta bool
	gone  []netip.Prefix
}

// stateRec is one entry of a snapshot.
type stateRec struct {
	typ                         EntryType
	flags                       Flags
	holding, mtu                uint16
	reqID                       uint32
	proto                       netip.Prefix
	nbma, claimed, nextHop, src netip.Addr
	created, expires            time.Time
	identity                    string
	attrs                       map[string][]string
	nets                        []netip.Prefix
}

// snapshotState returns the entries to keep, in the cache's order.
func (e *Engine) snapshotState() *stateSnap {
	sn := &stateSnap{saved: e.now, entries: make([]stateRec, 0, min(len(e.cache.m), MaxStateEntries))}
	for _, en := range e.cache.m {
		if !kept(en) || en.expires.IsZero() || len(sn.entries) >= MaxStateEntries {
			continue
		}
		sn.entries = append(sn.entries, recOf(en))
	}
	return sn
}

// recOf copies the fields of an entry a snapshot keeps.
func recOf(en *entry) stateRec {
	return stateRec{
		typ: en.typ, flags: en.flags &^ (FlagUsed | FlagRIB), holding: en.holding, mtu: en.mtu, reqID: en.reqID,
		proto: en.proto, nbma: en.nbma, claimed: en.claimed, nextHop: en.nextHop, src: en.src,
		created: en.created, expires: en.expires, identity: en.identity, attrs: en.attrs, nets: en.nets,
	}
}

// stateBuilder turns snapshots into the State kept. The saver's own, it
// names each set of flags once (the entries share the names).
type stateBuilder struct {
	names map[Flags][]string
}

// state returns the snapshot as the State kept, ordered by address.
func (b *stateBuilder) state(pfx netip.Prefix, sn *stateSnap) *State {
	slices.SortFunc(sn.entries, func(a, b stateRec) int { return protoCompare(a.proto, b.proto) })
	return &State{Version: StateVersion, Tunnel: pfx, Saved: sn.saved, Entries: b.entries(sn)}
}

// entries returns the snapshot's entries as kept.
func (b *stateBuilder) entries(sn *stateSnap) []StateEntry {
	if b.names == nil {
		b.names = make(map[Flags][]string)
	}
	out := make([]StateEntry, len(sn.entries))
	for i, r := range sn.entries {
		names, ok := b.names[r.flags]
		if !ok {
			names = r.flags.Names()
			b.names[r.flags] = names
		}
		out[i] = StateEntry{
			Type: r.typ, Proto: r.proto, NBMA: r.nbma, Claimed: r.claimed, NextHop: r.nextHop, Source: r.src,
			Flags: names, Created: r.created, Expires: r.expires,
			Holding: r.holding, MTU: r.mtu, ReqID: r.reqID, Identity: r.identity, Attrs: r.attrs, Networks: r.nets,
		}
	}
	return out
}

// saver writes the snapshots it is handed until stop is closed, then the
// last one pending. It says when it is writing (saving) and how long its
// last write took (saveTook, ending at savedAt), which paces saveState.
func (e *Engine) saver(stop <-chan struct{}) {
	var lastErr string
	var b stateBuilder
	// broken: a delta failed; the ones after it are not written (they
	// would not apply to what the store holds) until a whole save.
	broken := false
	save := func(sn *stateSnap) {
		start := time.Now()
		var err error
		switch {
		case !sn.delta:
			err = e.deps.State.Save(b.state(e.ownPfx, sn))
			broken = err != nil
		case broken:
			err = errJournalBroken
		default:
			j, _ := e.deps.State.(StateJournal)
			err = j.Append(b.delta(sn))
			broken = err != nil
		}
		if err != nil {
			e.saveFailed.Store(true)
		}
		end := time.Now()
		e.saveTook.Store(int64(end.Sub(start)))
		e.savedAt.Store(end.UnixNano())
		e.saving.Store(false)
		if err != nil {
			if err.Error() != lastErr {
				e.log.Warn("saving the NHRP state", zap.Error(err))
			}
			lastErr = err.Error()
			return
		}
		lastErr = ""
	}
	for {
		select {
		case sn := <-e.saveCh:
			save(sn)
		case <-stop:
			select {
			case sn := <-e.saveCh:
				save(sn)
			default:
			}
			return
		}
	}
}

// flagsOf reads the flag names StateEntry keeps.
func flagsOf(names []string) Flags {
	var f Flags
	for i, n := range flagNames {
		for _, m := range names {
			if m == n {
				f |= 1 << i
			}
		}
	}
	return f
}

// restore puts back the bindings a previous run kept: each is checked
// (its type, addresses and family, not expired, nothing of higher rank in
// its place), installed with the kernel state it needs, and then
// confirmed: a client is sent a purge of its own address, which makes our
// clients (and Cisco's) register again at once; with a Verifier every
// restored binding must be proven again by its peer's identity (the SA
// that comes back) within confirmWindow, or it is dropped.
func (e *Engine) restore() {
	defer func() { e.restored = true }()
	if e.deps.State == nil {
		return
	}
	st, err := e.deps.State.Load()
	if err != nil {
		e.log.Warn("reading the NHRP state kept by the previous run", zap.Error(err))
		return
	}
	if st == nil {
		return
	}
	if st.Version != StateVersion || st.Tunnel != e.ownPfx {
		e.log.Info("NHRP state of another tunnel or version not restored", zap.Stringer("tunnel", st.Tunnel), zap.Int("version", st.Version))
		return
	}
	n := 0
	for i, se := range st.Entries {
		if i >= MaxStateEntries {
			break
		}
		en, ok := e.restoredEntry(se)
		if !ok {
			continue
		}
		e.addEntry(en)
		e.expireAt(en, en.expires)
		n++
		switch en.typ {
		case TypeDynamic:
			e.emit(Event{Kind: EventRegistered, Proto: en.proto, NBMA: en.nbma, ClaimedNBMA: en.claimed, Cause: CauseRestored,
				HoldingTime: time.Duration(en.holding) * time.Second, Identity: en.identity, Attrs: en.attrs})
			e.confirmClient(en)
		case TypeShortcut:
			e.emit(Event{Kind: EventShortcutUp, Proto: en.proto, NextHop: en.nextHop, NBMA: en.nbma, Cause: CauseRestored,
				HoldingTime: time.Duration(en.holding) * time.Second})
			e.scheduleRenew(en)
		case TypeCached:
			if en.flags&FlagImplicit != 0 {
				e.scheduleRenewQuiet(en)
			} else {
				e.scheduleRenew(en)
			}
		}
		if e.deps.Verifier != nil {
			en.unconfirmed = true
			e.confirm(en, e.now.Add(confirmWindow))
		}
	}
	if n > 0 {
		e.log.Info("NHRP state of the previous run restored", zap.Int("entries", n), zap.Time("saved", st.Saved))
	}
}

// restoredEntry checks a kept entry and returns it as a cache entry.
func (e *Engine) restoredEntry(se StateEntry) (*entry, bool) {
	bits := e.own.BitLen()
	switch {
	case se.Type != TypeDynamic && se.Type != TypeCached && se.Type != TypeShortcut,
		!se.Proto.IsValid() || se.Proto.Addr().BitLen() != bits || se.Proto != se.Proto.Masked(),
		!se.NBMA.IsValid(),
		se.Type == TypeShortcut && (!se.NextHop.IsValid() || se.NextHop.BitLen() != bits || e.isOwn(se.NextHop)),
		se.Type != TypeShortcut && !se.Proto.IsSingleIP(),
		se.Proto.Contains(e.own),
		!se.Expires.After(e.now.Add(time.Second)):
		return nil, false
	}
	if cur := e.cache.get(se.Proto); cur != nil {
		return nil, false
	}
	// A holding time never longer than the packet field allows, and an
	// expiry no later than it from now.
	hold := time.Duration(se.Holding) * time.Second
	if se.Type == TypeDynamic {
		// A registration no longer than this node grants (the state file
		// is not trusted further than a registration is).
		hold = e.regHold(se.Holding)
		se.Holding = uint16(hold / time.Second)
	}
	if max := e.now.Add(hold); hold > 0 && se.Expires.After(max) {
		se.Expires = max
	}
	if se.Expires.After(e.now.Add(65535 * time.Second)) {
		se.Expires = e.now.Add(65535 * time.Second)
	}
	return &entry{
		typ: se.Type, proto: se.Proto, nbma: se.NBMA, claimed: se.Claimed, nextHop: se.NextHop, src: se.Source,
		flags: flagsOf(se.Flags) &^ (FlagUsed | FlagRIB), created: se.Created, expires: se.Expires, holding: se.Holding,
		mtu: se.MTU, reqID: se.ReqID, identity: se.Identity, attrs: se.Attrs, nets: se.Networks,
	}, true
}

// confirmClient asks a restored client to register again at once: a
// Purge Request (no reply wanted) for its own address, sent once its peer
// is up again.
func (e *Engine) confirmClient(en *entry) {
	e.whenUp(en.nbma, "client", en.proto.Addr(), func() {
		if e.cache.get(en.proto) != en || e.stopping {
			return
		}
		e.sendPurge(en.nbma, en.proto.Addr(), []netip.Prefix{en.proto}, true)
	})
}

// confirm asks the Verifier whether the identity of the peer of a
// restored binding still proves it, every confirmRetry until deadline;
// a binding not confirmed by then is dropped. A registration refreshed by
// its client confirms it too.
func (e *Engine) confirm(en *entry, deadline time.Time) {
	if e.cache.get(en.proto) != en || !en.unconfirmed || e.stopping {
		return
	}
	if !e.now.Before(deadline) {
		e.log.Info("restored binding not confirmed, dropped", zap.Stringer("proto", en.proto), zap.Stringer("nbma", en.nbma))
		e.removeEntry(en, CauseRefused)
		return
	}
	c := Claim{NBMA: en.nbma, Proto: en.proto.Addr(), Packet: "restored binding", From: en.nbma}
	bringUp := en.typ != TypeDynamic // a hub waits for its clients' SAs
	switch en.typ {
	case TypeShortcut:
		c.Proto, c.Prefix = en.nextHop, en.proto
	}
	retry := func() {
		e.sched.after(e.now, confirmRetry, func() { e.confirm(en, deadline) })
	}
	e.verifyClaim(c, bringUp, func() {
		if e.cache.get(en.proto) == en {
			en.unconfirmed = false
		}
	}, func(reason string, identity bool) {
		if identity && bringUp && e.cache.get(en.proto) == en {
			// The peer is up and its identity says otherwise.
			e.refuse(RefusedReplyIdentity, en.nbma, en.proto, "restored binding: "+reason)
			e.removeEntry(en, CauseRefused)
			return
		}
		retry()
	})
}
