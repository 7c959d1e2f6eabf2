package daemon

import (
	"context"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/opendmvpn/dmvpn/failover"
	"github.com/opendmvpn/dmvpn/failover/failovertest"
)

// ipsecRecorder records the addresses IPsec is moved to.
type ipsecRecorder struct {
	mu    sync.Mutex
	local netip.Addr
	moves []netip.Addr
}

func (f *ipsecRecorder) Local() netip.Addr {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.local
}

func (f *ipsecRecorder) LocalMoved(_ context.Context, nbma netip.Addr) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.local = nbma
	f.moves = append(f.moves, nbma)
	return 0, nil
}

func (f *ipsecRecorder) Moves() []netip.Addr {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.moves)
}

// moveRecorder records the NBMA moves NHRP is told of.
type moveRecorder struct {
	mu    sync.Mutex
	moves [][2]netip.Addr
}

func (f *moveRecorder) NBMAChanged(_ context.Context, old, nbma netip.Addr, _ string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.moves = append(f.moves, [2]netip.Addr{old, nbma})
	return nil
}

func (f *moveRecorder) Moves() [][2]netip.Addr {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.moves)
}

// followerRig runs a follower of fake IPsec and NHRP until the test ends.
func followerRig(t *testing.T) (*follower, *ipsecRecorder, *moveRecorder) {
	ip, en := &ipsecRecorder{}, &moveRecorder{}
	f := newFollower(func() localMover { return ip }, func() nbmaMover { return en }, zaptest.NewLogger(t))
	ctx, cancel := context.WithCancel(context.Background())
	go f.run(ctx)
	t.Cleanup(func() { cancel(); <-f.done })
	return f, ip, en
}

var (
	isp1Addr = netip.MustParseAddr("198.51.100.1")
	isp1New  = netip.MustParseAddr("198.51.100.9")
	isp2Addr = netip.MustParseAddr("203.0.113.65")
)

// The first apply pins IPsec to the active uplink's address (no %any, no
// kernel multipath pick) without telling NHRP of a move; a move after it
// is followed by both; an apply without any usable uplink changes nothing,
// and the address after it is a move from the last one followed.
func TestFollower(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f, ip, en := followerRig(t)
		apply := func(old, nbma netip.Addr) {
			f.Applied(failover.Applied{Time: time.Now(), Old: old, NBMA: nbma, Reason: "test"})
			synctest.Wait()
		}
		apply(isp1Addr, isp1Addr) // the monitor's first: Old = NBMA
		if got := ip.Moves(); !slices.Equal(got, []netip.Addr{isp1Addr}) {
			t.Fatalf("IPsec moved to %v at the first apply, want pinned to %v", got, isp1Addr)
		}
		if got := en.Moves(); len(got) != 0 {
			t.Fatalf("NHRP told of moves %v at the first apply", got)
		}
		apply(isp1Addr, isp2Addr)
		apply(isp2Addr, netip.Addr{}) // no usable uplink
		apply(netip.Addr{}, isp1New)  // back with another address
		if got, want := ip.Moves(), []netip.Addr{isp1Addr, isp2Addr, isp1New}; !slices.Equal(got, want) {
			t.Errorf("IPsec moved to %v, want %v", got, want)
		}
		if got, want := en.Moves(), [][2]netip.Addr{{isp1Addr, isp2Addr}, {isp2Addr, isp1New}}; !slices.Equal(got, want) {
			t.Errorf("NHRP told of %v, want %v", got, want)
		}
		// pin: IPsec that does not initiate from the address followed is
		// moved to it (it started while the address moved); one that does
		// is left alone.
		f.pin()
		synctest.Wait()
		ip.mu.Lock()
		ip.local = isp2Addr
		ip.mu.Unlock()
		f.pin()
		synctest.Wait()
		if got, want := ip.Moves(), []netip.Addr{isp1Addr, isp2Addr, isp1New, isp1New}; !slices.Equal(got, want) {
			t.Errorf("IPsec moved to %v after the pins, want %v", got, want)
		}
		if n := len(en.Moves()); n != 2 {
			t.Errorf("a pin told NHRP of a move (%d moves)", n)
		}
	})
}

// The monitor and the follower together, over the in-memory kernel: a
// single uplink loses its address (a PPPoE session ending) and comes back
// with another. DMVPN follows the move from the address it had, through
// the time without any.
func TestFollowerAddressChange(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f, ip, en := followerRig(t)
		k, net := failovertest.NewKernel(), failovertest.NewNet(1)
		probe := netip.MustParseAddr("192.0.2.253")
		gw := netip.MustParseAddr("198.51.100.14")
		net.SetPath("isp1", probe, failovertest.Path{Reachable: true, RTT: 10 * time.Millisecond})
		k.SetLink("ppp0", failover.Link{Index: 10, Up: true, Addr: netip.PrefixFrom(isp1Addr, 32), Gateway: gw})
		mon, err := failover.New(failover.Config{Uplinks: []failover.Uplink{{Name: "isp1", Interface: "ppp0", Probes: []netip.Addr{probe}}}},
			failover.Deps{Kernel: k, Probers: net, Host: &failovertest.Host{}, Observers: []failover.Observer{f}, Logger: zaptest.NewLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		defer func() { cancel(); <-mon.Done() }()
		go mon.Run(ctx)
		waitNBMA := func(want []netip.Addr) {
			t.Helper()
			for deadline := time.Now().Add(time.Minute); !slices.Equal(mon.NBMA(), want); time.Sleep(time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("NBMA %v, want %v", mon.NBMA(), want)
				}
			}
			synctest.Wait()
		}
		waitNBMA([]netip.Addr{isp1Addr})
		time.Sleep(time.Second)
		k.SetLink("ppp0", failover.Link{Index: 10, Up: true, Gateway: gw})
		waitNBMA(nil)
		k.SetLink("ppp0", failover.Link{Index: 10, Up: true, Addr: netip.PrefixFrom(isp1New, 32), Gateway: gw})
		waitNBMA([]netip.Addr{isp1New})
		if got, want := ip.Moves(), []netip.Addr{isp1Addr, isp1New}; !slices.Equal(got, want) {
			t.Errorf("IPsec moved to %v, want %v", got, want)
		}
		if got, want := en.Moves(), [][2]netip.Addr{{isp1Addr, isp1New}}; !slices.Equal(got, want) {
			t.Errorf("NHRP told of %v, want %v", got, want)
		}
	})
}
