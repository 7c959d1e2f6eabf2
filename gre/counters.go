package gre

import (
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
)

// DropReason says why the data plane dropped a packet.
type DropReason uint8

// Drop reasons. Malformed input is counted under one of these and never
// logged per packet.
const (
	DropMalformed   DropReason = iota // truncated or inconsistent headers
	DropBadKey                        // GRE key missing or not ours
	DropBadChecksum                   // GRE checksum wrong
	DropUnsupported                   // GRE version/routing bits, unknown payload type
	DropIngress                       // refused by Config.AcceptIngress
	DropNoRoute                       // no route through the tunnel for the destination
	DropNoNeighbor                    // no neighbour entry and the hold queue was full
	DropHoldExpired                   // held for a neighbour that never appeared
	DropTooBig                        // larger than the path MTU (frag-needed sent when DF)
	DropSendError                     // the underlay refused the packet
	DropTunError                      // writing to the tunnel interface failed
	DropQueueFull                     // an NHRP or miss queue toward the control plane was full
	DropTruncated                     // larger than the receive buffer
	DropRcvbufFull                    // the kernel dropped it: the receive socket's buffer was full
	numDropReasons
)

var dropNames = [numDropReasons]string{
	"malformed", "bad_key", "bad_checksum", "unsupported", "ingress",
	"no_route", "no_neighbor", "hold_expired", "too_big", "send_error",
	"tun_error", "queue_full", "truncated", "rcvbuf_full",
}

// String returns the reason as a metric label value.
func (r DropReason) String() string {
	if r < numDropReasons {
		return dropNames[r]
	}
	return "unknown"
}

// DropReasons lists every reason, in order.
func DropReasons() []DropReason {
	out := make([]DropReason, numDropReasons)
	for i := range out {
		out[i] = DropReason(i)
	}
	return out
}

// PeerCounters are the data packets exchanged with one NBMA peer.
type PeerCounters struct {
	NBMA               netip.Addr
	TxPackets, TxBytes uint64
	RxPackets, RxBytes uint64
}

// Counters is a snapshot of a device's data-plane counters. Packet and byte
// counts are of inner (tunnelled) packets.
type Counters struct {
	TxPackets, TxBytes uint64 // tunnel → NBMA
	RxPackets, RxBytes uint64 // NBMA → tunnel
	NHRPTx, NHRPRx     uint64
	// Misses counts neighbour-miss events delivered; MissesSuppressed those
	// the rate limiter held back.
	Misses, MissesSuppressed uint64
	// FragNeeded counts ICMP "fragmentation needed"/"packet too big" sent.
	FragNeeded uint64
	// RxSuper counts coalesced (GRO) datagrams handed to the tunnel whole.
	RxSuper uint64
	// FastTxPackets and FastRxPackets count the packets the ebpf
	// backend's BPF programs forwarded (included in TxPackets/RxPackets).
	FastTxPackets, FastRxPackets uint64 `json:",omitempty"`
	// FastPath holds the ebpf backend's own counters by name: the
	// packets it left to the slow path by reason ("slow_no_neighbor",
	// "slow_too_big", "slow_ipsec", "slow_other"), the super-packets it
	// carried whole, the GRE it passed to the stack (nil on other
	// backends).
	FastPath map[string]uint64 `json:",omitempty"`
	// Drops by reason; absent reasons are zero.
	Drops map[string]uint64
	// NeighborFailures counts the neighbour entries the kernel refused,
	// by reason (NeighborTableFull: its table is at gc_thresh3; absent
	// where the backend keeps its own table).
	NeighborFailures map[string]uint64 `json:",omitempty"`
	// Peers holds per-NBMA counts where the backend keeps them (nil
	// otherwise).
	Peers []PeerCounters
}

// Stats is a set of atomic counters backends embed and snapshot.
// The transmit and receive totals sit on separate cache lines: the two
// directions are updated by different goroutines on different cores.
type Stats struct {
	TxPackets, TxBytes       atomic.Uint64
	_                        [48]byte
	RxPackets, RxBytes       atomic.Uint64
	_                        [48]byte
	NHRPTx, NHRPRx           atomic.Uint64
	Misses, MissesSuppressed atomic.Uint64
	FragNeeded, RxSuper      atomic.Uint64
	drops                    [numDropReasons]atomic.Uint64
	neighFail                [len(neighborFailureNames)]atomic.Uint64

	// peers maps an NBMA address to its *PeerStats: loads never lock and
	// an addition costs O(log n) (a copy-on-write map copied the whole
	// table per new peer); peersMu serialises additions and peersN.
	peersMu sync.Mutex
	peers   sync.Map
	peersN  int
}

// MaxPeerStats bounds the per-peer table; traffic of further peers is only
// counted in the totals.
const MaxPeerStats = 4096

// PeerStats are the atomic per-peer counters.
type PeerStats struct {
	TxPackets, TxBytes, RxPackets, RxBytes atomic.Uint64
}

// NeighborTableFull is the NeighborFailures reason of an entry refused
// because the kernel's neighbour table is full (ENOBUFS at gc_thresh3).
const NeighborTableFull = "table_full"

// neighborFailureNames are the reasons NeighborFailure counts.
var neighborFailureNames = [...]string{NeighborTableFull, "no_answer", "error"}

// NeighborFailure counts a neighbour entry refused for reason (one of
// NeighborTableFull, "no_answer", "error"; anything else counts as
// "error").
func (s *Stats) NeighborFailure(reason string) {
	for i, n := range neighborFailureNames {
		if n == reason {
			s.neighFail[i].Add(1)
			return
		}
	}
	s.neighFail[len(neighborFailureNames)-1].Add(1)
}

// Drop counts n packets dropped for reason r.
func (s *Stats) Drop(r DropReason, n uint64) {
	if r < numDropReasons {
		s.drops[r].Add(n)
	}
}

// Dropped returns the count for one reason.
func (s *Stats) Dropped(r DropReason) uint64 {
	if r < numDropReasons {
		return s.drops[r].Load()
	}
	return 0
}

// Peer returns the counters of one NBMA peer, creating them; nil when the
// table is full.
func (s *Stats) Peer(nbma netip.Addr) *PeerStats {
	if p, ok := s.peers.Load(nbma); ok {
		return p.(*PeerStats)
	}
	s.peersMu.Lock()
	defer s.peersMu.Unlock()
	if p, ok := s.peers.Load(nbma); ok {
		return p.(*PeerStats)
	}
	if s.peersN >= MaxPeerStats {
		return nil
	}
	p := new(PeerStats)
	s.peers.Store(nbma, p)
	s.peersN++
	return p
}

// Snapshot copies the counters.
func (s *Stats) Snapshot() Counters {
	c := Counters{
		TxPackets: s.TxPackets.Load(), TxBytes: s.TxBytes.Load(),
		RxPackets: s.RxPackets.Load(), RxBytes: s.RxBytes.Load(),
		NHRPTx: s.NHRPTx.Load(), NHRPRx: s.NHRPRx.Load(),
		Misses: s.Misses.Load(), MissesSuppressed: s.MissesSuppressed.Load(),
		FragNeeded: s.FragNeeded.Load(), RxSuper: s.RxSuper.Load(),
		Drops: map[string]uint64{},
	}
	for i := range s.drops {
		if v := s.drops[i].Load(); v != 0 {
			c.Drops[DropReason(i).String()] = v
		}
	}
	for i := range s.neighFail {
		if v := s.neighFail[i].Load(); v != 0 {
			if c.NeighborFailures == nil {
				c.NeighborFailures = map[string]uint64{}
			}
			c.NeighborFailures[neighborFailureNames[i]] = v
		}
	}
	s.peers.Range(func(k, v any) bool {
		p := v.(*PeerStats)
		c.Peers = append(c.Peers, PeerCounters{NBMA: k.(netip.Addr),
			TxPackets: p.TxPackets.Load(), TxBytes: p.TxBytes.Load(),
			RxPackets: p.RxPackets.Load(), RxBytes: p.RxBytes.Load()})
		return true
	})
	sortPeers(c.Peers)
	return c
}

func sortPeers(p []PeerCounters) {
	slices.SortFunc(p, func(a, b PeerCounters) int { return a.NBMA.Compare(b.NBMA) })
}
