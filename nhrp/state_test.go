package nhrp

import (
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"
)

// memStore is a StateStore in memory. Freeze stops it taking saves: what
// it holds then is what a process killed at that moment left.
type memStore struct {
	mu     sync.Mutex
	b      []byte
	saves  int
	frozen bool
	// appends counts the saves that were changes (Append).
	appends int
}

func (m *memStore) Load() (*State, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.b == nil {
		return nil, nil
	}
	var st State
	return &st, json.Unmarshal(m.b, &st)
}

func (m *memStore) Save(st *State) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.frozen {
		return nil
	}
	b, err := json.Marshal(st)
	m.b, m.saves = b, m.saves+1
	return err
}

// Append applies a change to the state held (a StateJournal): counted
// as a save.
func (m *memStore) Append(d StateDelta) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.frozen {
		return nil
	}
	if m.b == nil {
		return errors.New("memStore: no whole state saved")
	}
	var st State
	if err := json.Unmarshal(m.b, &st); err != nil {
		return err
	}
	st.Apply(d)
	b, err := json.Marshal(&st)
	m.b, m.saves, m.appends = b, m.saves+1, m.appends+1
	return err
}

func (m *memStore) count() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.saves
}

func (m *memStore) freeze() {
	m.mu.Lock()
	m.frozen = true
	m.mu.Unlock()
}

func (m *memStore) thaw() {
	m.mu.Lock()
	m.frozen = false
	m.mu.Unlock()
}

// crash stops a node's engine as a SIGKILL would leave things: its store
// keeps what it held, the new device starts empty (the userspace data
// plane's neighbours die with the process); then a new engine starts.
func (l *lab) crash(n *node, st *memStore) {
	l.t.Helper()
	st.freeze()
	cfg := n.cfg
	cfg.PurgeOnShutdown = false
	n.eng.Reconfigure(context.Background(), cfg)
	n.stop()
	n.mu.Lock()
	n.events = nil // the old engine's, up to its stop
	n.mu.Unlock()
	st.thaw()
	l.restart(n)
	settle(time.Millisecond) // the kernel worker applies what was restored
}

// bindings returns a node's kept entries as comparable strings.
func (n *node) bindings(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, e := range n.cache(t) {
		if e.Type == TypeDynamic || e.Type == TypeCached || e.Type == TypeShortcut {
			out = append(out, e.Type.String()+" "+e.Proto.String()+" "+e.NBMA.String()+" "+e.NextHop.String()+" "+e.Identity+" "+e.Expires.Format(time.RFC3339))
		}
	}
	return out
}

// TestHubCrashLosesNothing: a hub killed and started again has every
// registration back at once (identity, expiry), the kernel neighbours
// programmed again, each restored registration reported (CauseRestored);
// the clients are asked to register again and do within seconds.
// It runs with a StateJournal (the changes appended after a whole save)
// and with a plain StateStore (every save whole).
func TestHubCrashLosesNothing(t *testing.T) {
	for _, journal := range []bool{true, false} {
		t.Run(map[bool]string{true: "journal", false: "whole"}[journal], func(t *testing.T) { hubCrash(t, journal) })
	}
}

func hubCrash(t *testing.T, journal bool) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t)
		hub := l.addHub(1, hubConfig(), 1, 2, 3)
		store := &memStore{}
		hub.deps.State = store
		if !journal {
			hub.deps.State = struct{ StateStore }{store}
		}
		hub.deps.Authorizer = certAuthorizer
		l.start(hub)
		var spokes []*node
		for i := 1; i <= 3; i++ {
			s := l.addSpoke(i, 1, spokeConfig(1))
			l.start(s)
			spokes = append(spokes, s)
		}
		settle(time.Second)
		before := hub.bindings(t)
		if len(before) != 3 || store.count() == 0 {
			t.Fatalf("before the crash: %v, %d saves", before, store.count())
		}
		sent := spokes[0].nhsState(t, hubNBMA(1)).Sent
		l.crash(hub, store)
		if diff := cmp.Diff(before, hub.bindings(t)); diff != "" {
			t.Errorf("registrations after the restart (-before +after):\n%s", diff)
		}
		want := []string{"10.0.0.11→198.51.100.11", "10.0.0.12→198.51.100.12", "10.0.0.13→198.51.100.13"}
		if diff := cmp.Diff(want, hub.neighbors(t)); diff != "" {
			t.Errorf("hub neighbours after the restart (-want +got):\n%s", diff)
		}
		if nbma, err := hub.dev.Forward(spokeAddr(2)); err != nil || nbma != spokeNBMA(2) {
			t.Errorf("hub → spoke2 after the restart: %v %v", nbma, err)
		}
		restored := 0
		for _, ev := range hub.eventsOf(EventRegistered) {
			if ev.Cause == CauseRestored {
				restored++
			}
		}
		if restored != 3 {
			t.Errorf("%d registrations reported restored, want 3", restored)
		}
		settle(2 * time.Second)
		if got := spokes[0].nhsState(t, hubNBMA(1)); got.Sent <= sent || got.State != NHSUp {
			t.Errorf("spoke1 was not asked to register again: %+v (sent %d before)", got, sent)
		}
		if n := len(hub.eventsOf(EventExpired)); n != 0 {
			t.Errorf("%d registrations expired across the restart", n)
		}
	})
}

// TestSpokeCrashLosesNothing: a spoke killed and started again has its
// shortcut back at once: the route and the binding of the far spoke.
func TestSpokeCrashLosesNothing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t)
		hub := l.addHub(1, hubConfig(), 1, 2)
		l.start(hub)
		store := &memStore{}
		s1 := l.addSpoke(1, 1, spokeConfig(1))
		s1.deps.State = store
		l.start(s1)
		l.start(l.addSpoke(2, 1, spokeConfig(1)))
		settle(time.Second)
		l.send(s1, lanHost(1), lanHost(2))
		settle(time.Second)
		before := s1.bindings(t)
		if nbma, err := s1.dev.Forward(lanHost(2)); err != nil || nbma != spokeNBMA(2) || len(before) != 2 {
			t.Fatalf("no shortcut before the crash: %v %v %v", nbma, err, before)
		}
		l.crash(s1, store)
		if diff := cmp.Diff(before, s1.bindings(t)); diff != "" {
			t.Errorf("bindings after the restart (-before +after):\n%s", diff)
		}
		if nbma, err := s1.dev.Forward(lanHost(2)); err != nil || nbma != spokeNBMA(2) {
			t.Errorf("spoke1 → spoke2's LAN right after the restart: %v %v, want spoke2 direct", nbma, err)
		}
		routes, _ := s1.dev.Routes(context.Background(), DefaultShortcutTable)
		if len(routes) != 1 || routes[0].Dst != spokeLAN(2) {
			t.Errorf("shortcut routes after the restart: %+v", routes)
		}
	})
}

// TestRestoredConfirmedByIdentity: with a Verifier every restored binding
// must be proven again by its peer's identity; one that is not (the
// certificate now names another address) is dropped, the others stay.
func TestRestoredConfirmedByIdentity(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t)
		c := labCerts()
		hub := l.addHub(1, hubConfig(), 1, 2)
		store := &memStore{}
		hub.deps.State, hub.deps.Authorizer, hub.deps.Verifier = store, c, c
		l.start(hub)
		s1, s2 := l.addSpoke(1, 1, spokeConfig(1)), l.addSpoke(2, 1, spokeConfig(1))
		l.start(s1)
		l.start(s2)
		settle(time.Second)
		// spoke2 goes away for good, and its NBMA address now belongs to
		// a certificate of another address.
		s2.stop()
		l.inet.SetDown(spokeNBMA(2), true)
		c.mu.Lock()
		c.m[spokeNBMA(2)] = cert{gre: netip.MustParseAddr("10.0.0.99")}
		c.mu.Unlock()
		l.crash(hub, store)
		if _, ok := hub.entry(t, hostPrefix(spokeAddr(2))); !ok {
			t.Fatal("spoke2's registration not restored")
		}
		settle(confirmWindow + time.Second)
		if _, ok := hub.entry(t, hostPrefix(spokeAddr(2))); ok {
			t.Error("a registration its peer's identity no longer proves was kept")
		}
		if _, ok := hub.entry(t, hostPrefix(spokeAddr(1))); !ok {
			t.Error("spoke1's registration, confirmed, was dropped")
		}
		var causes []Cause
		for _, ev := range hub.eventsOf(EventExpired) {
			causes = append(causes, ev.Cause)
		}
		if diff := cmp.Diff([]Cause{CauseRefused}, causes); diff != "" {
			t.Errorf("expiry causes (-want +got):\n%s", diff)
		}
	})
}

// TestStateRefused: a state of another tunnel address, and entries that
// expired or that a static binding holds, are not restored.
func TestStateRefused(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t)
		cfg := hubConfig()
		cfg.StaticMaps = []StaticMap{{Proto: hostPrefix(spokeAddr(3)), NBMA: spokeNBMA(3)}}
		hub := l.addHub(1, cfg, 1)
		now := time.Now()
		entry := func(a netip.Addr, nbma netip.Addr, exp time.Duration) StateEntry {
			return StateEntry{Type: TypeDynamic, Proto: hostPrefix(a), NBMA: nbma, Created: now, Expires: now.Add(exp), Holding: 600}
		}
		st := &State{Version: StateVersion, Tunnel: netip.PrefixFrom(hubAddr(1), 24), Entries: []StateEntry{
			entry(spokeAddr(1), spokeNBMA(1), time.Minute),
			entry(spokeAddr(2), spokeNBMA(2), -time.Minute),                      // expired
			entry(spokeAddr(3), netip.MustParseAddr("203.0.113.3"), time.Minute), // static in the config
			{Type: TypeLocal, Proto: netip.MustParsePrefix("10.9.0.0/24"), NBMA: spokeNBMA(1), Expires: now.Add(time.Hour)},
			entry(hubAddr(1), spokeNBMA(1), time.Minute), // our own address
		}}
		b, _ := json.Marshal(st)
		store := &memStore{b: b}
		hub.deps.State = store
		l.start(hub)
		var got []string
		for _, e := range hub.cache(t) {
			if e.Type == TypeDynamic {
				got = append(got, e.Proto.String())
			}
		}
		if diff := cmp.Diff([]string{"10.0.0.11/32"}, got); diff != "" {
			t.Errorf("restored (-want +got):\n%s", diff)
		}
		if e, _ := hub.entry(t, hostPrefix(spokeAddr(3))); e.Type != TypeStatic {
			t.Errorf("static binding %+v", e)
		}
		other := &State{Version: StateVersion, Tunnel: netip.MustParsePrefix("10.9.9.9/24"), Entries: st.Entries[:1]}
		b, _ = json.Marshal(other)
		store2 := &memStore{b: b}
		hub.deps.State = store2
		l.crash(hub, store2)
		for _, e := range hub.cache(t) {
			if e.Type == TypeDynamic {
				t.Errorf("restored from another tunnel's state: %+v", e)
			}
		}
	})
}
