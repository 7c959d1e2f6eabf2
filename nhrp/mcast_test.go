package nhrp

import (
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"go.uber.org/zap"

	"github.com/opendmvpn/dmvpn/gre"
)

// mcastTunnel records the multicast list it is given, whole or as changes.
type mcastTunnel struct {
	Tunnel
	list    map[netip.Addr]bool
	sets    int
	updates int
	changed int // addresses in updates
}

func (m *mcastTunnel) SetMulticast(l []netip.Addr) error {
	m.sets++
	m.list = map[netip.Addr]bool{}
	for _, a := range l {
		m.list[a] = true
	}
	return nil
}

type updatingTunnel struct{ *mcastTunnel }

func (m updatingTunnel) UpdateMulticast(add, rm []netip.Addr) error {
	m.updates++
	m.changed += len(add) + len(rm)
	for _, a := range rm {
		delete(m.list, a)
	}
	for _, a := range add {
		m.list[a] = true
	}
	return nil
}

var _ gre.MulticastUpdater = updatingTunnel{}

// TestDynamicMulticastChanges: entries coming and going (several per
// address, some gone before the tunnel heard of them) leave the tunnel's
// list equal to the addresses with entries; a tunnel that takes changes
// gets the whole list once, then only what changed.
func TestDynamicMulticastChanges(t *testing.T) {
	for _, incremental := range []bool{false, true} {
		mt := &mcastTunnel{}
		var tun Tunnel = mt
		if incremental {
			tun = updatingTunnel{mt}
		}
		e := &Engine{tun: tun, log: zap.NewNop()}
		e.cfg.Multicast = MulticastDynamic
		rng := rand.New(rand.NewPCG(3, 4))
		model := map[netip.Addr]int{}
		for round := range 300 {
			for range 1 + rng.IntN(6) {
				a := netip.AddrFrom4([4]byte{198, 51, 100, byte(rng.IntN(40))})
				if model[a] > 0 && rng.IntN(2) == 0 {
					model[a]--
					e.mcast.ref(a, -1, true)
				} else {
					model[a]++
					e.mcast.ref(a, 1, true)
				}
			}
			e.applyMulticast()
			var want, got []netip.Addr
			for a, n := range model {
				if n > 0 {
					want = append(want, a)
				}
			}
			for a := range mt.list {
				got = append(got, a)
			}
			slices.SortFunc(want, netip.Addr.Compare)
			slices.SortFunc(got, netip.Addr.Compare)
			if !slices.Equal(want, got) {
				t.Fatalf("incremental %v, round %d: tunnel has %v, want %v", incremental, round, got, want)
			}
		}
		if incremental && (mt.sets != 1 || mt.changed > 6*300) {
			t.Errorf("incremental: %d whole lists, %d addresses in changes", mt.sets, mt.changed)
		}
		if len(e.mcast.refs) > 40 {
			t.Errorf("%d addresses counted, at most 40 exist", len(e.mcast.refs))
		}
	}
}
