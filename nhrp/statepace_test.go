package nhrp

import (
	"context"
	"encoding/json"
	"net/netip"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"
)

// slowStore is a StateStore whose writes take a while (virtual time).
type slowStore struct {
	took  time.Duration
	mu    sync.Mutex
	saves int
	last  int // entries in the last state written
}

func (s *slowStore) Load() (*State, error) { return nil, nil }

func (s *slowStore) Save(st *State) error {
	if _, err := json.Marshal(st); err != nil {
		return err
	}
	time.Sleep(s.took)
	s.mu.Lock()
	s.saves, s.last = s.saves+1, len(st.Entries)
	s.mu.Unlock()
	return nil
}

func (s *slowStore) get() (saves, last int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.saves, s.last
}

// TestStateSavePaced: while new registrations keep coming, the state is
// written at most once per write and its rest (saveRest times as long as
// the write took), not back to back; once they stop, the last write holds
// every registration.
func TestStateSavePaced(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		hub := netip.MustParseAddr("10.0.0.1")
		const n = 200
		store := &slowStore{took: 100 * time.Millisecond}
		_, tun, stop := startBenchHub(t, n+1, store)
		// One new spoke every 10 ms for 2 s.
		for i := range n {
			_, nbma := benchSpoke(i)
			tun.deliver(benchRegistration(i, hub, uint32(i+1), 7200), nbma)
			time.Sleep(10 * time.Millisecond)
		}
		saves, _ := store.get()
		// The saver takes at most a tenth of a processor: a write and
		// its rest take 1 s, so 2 s hold at most 2, and the first and
		// the one under way.
		if limit := int(2*time.Second/((saveRest+1)*store.took)) + 2; saves > limit || saves == 0 {
			t.Errorf("%d saves while registrations came for 2 s, want 1-%d", saves, limit)
		}
		time.Sleep(2 * time.Second)
		if _, last := store.get(); last != n {
			t.Errorf("the last state written holds %d registrations, want %d", last, n)
		}
		stop()
	})
}

// TestStateJournalled: with a StateJournal, the first save of a run is
// whole and the changes after it are appended (the registrations as they
// come, then the refreshes of some): what the store holds is what the
// cache keeps, expiries included.
func TestStateJournalled(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		hub := netip.MustParseAddr("10.0.0.1")
		const n = 200
		store := &memStore{}
		eng, tun, stop := startBenchHub(t, 2*n+1, store)
		for i := range n {
			_, nbma := benchSpoke(i)
			tun.deliver(benchRegistration(i, hub, uint32(i+1), 7200), nbma)
			time.Sleep(10 * time.Millisecond)
		}
		time.Sleep(time.Minute)
		for i := range n / 4 {
			_, nbma := benchSpoke(i)
			tun.deliver(benchRegistration(i, hub, uint32(n+i+1), 7200), nbma)
		}
		time.Sleep(2 * saveLater)
		kept := func() []string {
			st, err := store.Load()
			if err != nil || st == nil {
				t.Fatalf("store: %v %v", st, err)
			}
			var out []string
			for _, en := range st.Entries {
				out = append(out, en.Proto.String()+" "+en.Expires.Format(time.RFC3339Nano))
			}
			return out
		}
		var want []string
		all, err := eng.Cache(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, en := range all {
			if en.Type == TypeDynamic {
				want = append(want, en.Proto.String()+" "+en.Expires.Format(time.RFC3339Nano))
			}
		}
		if len(want) != n {
			t.Fatalf("%d registrations in the cache, want %d", len(want), n)
		}
		if diff := cmp.Diff(want, kept()); diff != "" {
			t.Errorf("state kept (-cache +store):\n%s", diff)
		}
		store.mu.Lock()
		saves, appends := store.saves, store.appends
		store.mu.Unlock()
		if appends == 0 || saves-appends != 1 {
			t.Errorf("%d saves, %d of them changes appended: want one whole save, then changes", saves, appends)
		}
		stop()
	})
}
