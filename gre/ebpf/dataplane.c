//go:build ignore

// SPDX-License-Identifier: GPL-2.0
//
// The GRE fast path of the ebpf data plane: two TC (sched_cls) programs
// around the userspace backend's TUN device.
//
//   dmvpn_egress   the tunnel TUN's egress. An IPv4 packet whose route
//                  through the tunnel has a next hop in `neighbors` is
//                  encapsulated (outer IPv4 + GRE with the key; a GSO
//                  super-packet stays one skb) and redirected to the
//                  device the kernel's FIB picks for the peer: out of the
//                  NBMA interface with bpf_redirect_neigh, or into
//                  charon's ipsec TUN (an L3 device) with bpf_redirect.
//                  Everything else continues to the TUN, where the
//                  userspace slow path handles it as it does without BPF:
//                  unknown next hops (the neighbour-miss event), multicast
//                  and broadcast, IPv6, packets too big for the path
//                  (frag-needed), and GRE that must be IPsec-protected
//                  when no SA route leads to an ipsec TUN.
//   dmvpn_ingress  the ingress of every other interface (NBMA interfaces,
//                  the ipsec TUN). Keyed GRE to a local address carrying
//                  IPv4 is decapsulated into the tunnel TUN's ingress;
//                  NHRP, other keys, GRE options and IPv6 go on to the
//                  stack, where the slow path's raw socket takes them; GRE
//                  arriving on an interface the ingress gate refuses
//                  (plaintext GRE while IPsec is required) is dropped.
//
// Maps are the only interface to Go (gre/ebpf). Every packet the programs
// drop has a counter with a reason; per-peer counters are kept by the
// address on the wire.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#ifndef BPF_F_ADJ_ROOM_DECAP_L3_IPV4
#define BPF_F_ADJ_ROOM_DECAP_L3_IPV4 (1ULL << 7)
#endif
#ifndef BPF_F_ADJ_ROOM_DECAP_L4_GRE
#define BPF_F_ADJ_ROOM_DECAP_L4_GRE (1ULL << 9)
#endif
#ifndef EALREADY
#define EALREADY 114
#endif
#ifndef BPF_FIB_LOOKUP_SRC
#define BPF_FIB_LOOKUP_SRC (1U << 4)
#endif
#define AF_INET 2
#define LOOPBACK_IFINDEX 1

// TC_ACT_UNSPEC is TCX_NEXT: the next program on the device decides, or
// the stack when there is none.
#define NEXT TC_ACT_UNSPEC

#define GRE_FLAG_KEY 0x2000
#define OVERHEAD 28 // outer IPv4 + GRE with key
#define IP_DF 0x4000
#define IP_MF_OFFSET 0x3fff

// config.flags
#define CFG_REQUIRE_IPSEC 1 // GRE leaves only through IF_IPSEC devices
#define CFG_SLOW_EGRESS 2   // GRE checksums or sequence numbers: all egress is slow

// ifaces values
#define IF_L2 1     // an Ethernet header precedes the IP header
#define IF_REFUSE 2 // GRE arriving here is refused (the ingress gate)
#define IF_IPSEC 4  // charon's ipsec TUN: a target when IPsec is required

struct dp_config {
	__be32 local;     // NBMA source address; 0: the FIB's preferred source
	__u32 key;        // GRE key, host order
	__u32 tun_ifindex;
	__u32 tun_mtu;
	__u32 flags;
	__u32 ttl;
};

struct neighbor {
	__be32 wire;     // the peer's address on the wire (NBMA, or its alias)
	__u32 pad;
	__u64 last_used; // bpf_ktime_get_ns() of the last packet sent through it
};

struct peer_stats {
	__u64 tx_packets, tx_bytes, rx_packets, rx_bytes;
};

enum {
	ST_TX_PACKETS,
	ST_TX_BYTES,
	ST_RX_PACKETS,
	ST_RX_BYTES,
	ST_TX_GSO,      // super-packets encapsulated whole
	ST_RX_GSO,      // super-packets decapsulated whole
	ST_SLOW_NEIGH,  // no neighbour entry (tunnel or underlay): slow path
	ST_SLOW_FRAG,   // too big for the path: slow path (frag-needed)
	ST_SLOW_IPSEC,  // IPsec required, no SA route to an ipsec TUN: slow path
	ST_SLOW_OTHER,  // not IPv4 unicast, no route, unknown device: slow path
	ST_TX_ERROR,    // encapsulation failed: dropped
	ST_RX_REFUSED,  // GRE on a refused interface: dropped
	ST_RX_ERROR,    // decapsulation failed: dropped
	ST_RX_PASSED,   // GRE to us left to the stack (NHRP, other key, options)
	ST_MAX,
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dp_config);
} config SEC(".maps");

// tunnel next hop -> neighbour (the neighbour mirror's entries)
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __be32);
	__type(value, struct neighbor);
} neighbors SEC(".maps");

// ifindex -> IF_* flags of every device a program runs on or sends to
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u32);
} ifaces SEC(".maps");

// the namespace's own IPv4 addresses: GRE to them is ours
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __be32);
	__type(value, __u32);
} local_addrs SEC(".maps");

// peer address on the wire -> counters
struct {
	__uint(type, BPF_MAP_TYPE_LRU_PERCPU_HASH);
	__uint(max_entries, 4096);
	__type(key, __be32);
	__type(value, struct peer_stats);
} peers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, ST_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

struct outer {
	struct iphdr ip;
	__be16 gre_flags;
	__be16 gre_proto;
	__be32 gre_key;
};

static __always_inline void count(__u32 idx, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &idx);
	if (v)
		*v += n;
}

static __always_inline struct peer_stats *peer(__be32 wire)
{
	struct peer_stats *p = bpf_map_lookup_elem(&peers, &wire);
	if (p)
		return p;
	struct peer_stats zero = {};
	bpf_map_update_elem(&peers, &wire, &zero, BPF_NOEXIST);
	return bpf_map_lookup_elem(&peers, &wire);
}

static __always_inline __u32 segments(struct __sk_buff *skb)
{
	return skb->gso_segs > 1 ? skb->gso_segs : 1;
}

static __always_inline __u16 ip_checksum(struct iphdr *ip)
{
	__u32 sum = 0;
	__u16 *p = (__u16 *)ip;
#pragma unroll
	for (int i = 0; i < (int)sizeof(*ip) / 2; i++)
		sum += p[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum;
}

SEC("tc")
int dmvpn_egress(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct dp_config *cfg = bpf_map_lookup_elem(&config, &zero);
	if (!cfg || skb->protocol != bpf_htons(ETH_P_IP) || (cfg->flags & CFG_SLOW_EGRESS)) {
		count(ST_SLOW_OTHER, 1);
		return NEXT;
	}
	struct iphdr inner;
	if (bpf_skb_load_bytes(skb, 0, &inner, sizeof(inner)) < 0 || inner.version != 4 ||
	    (inner.daddr & bpf_htonl(0xf0000000)) == bpf_htonl(0xe0000000) ||
	    inner.daddr == 0xffffffff) {
		count(ST_SLOW_OTHER, 1);
		return NEXT;
	}

	// The tunnel next hop: the kernel's route through this device.
	struct bpf_fib_lookup fib = {};
	fib.family = AF_INET;
	fib.tos = inner.tos;
	fib.l4_protocol = inner.protocol;
	fib.ipv4_src = inner.saddr;
	fib.ipv4_dst = inner.daddr;
	fib.ifindex = skb->ifindex;
	int rc = bpf_fib_lookup(skb, &fib, sizeof(fib),
				BPF_FIB_LOOKUP_OUTPUT | BPF_FIB_LOOKUP_SKIP_NEIGH);
	if ((rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_FRAG_NEEDED) ||
	    fib.ifindex != skb->ifindex) {
		count(ST_SLOW_OTHER, 1);
		return NEXT;
	}
	__be32 nh = fib.ipv4_dst;
	struct neighbor *nb = bpf_map_lookup_elem(&neighbors, &nh);
	if (!nb) {
		count(ST_SLOW_NEIGH, 1);
		return NEXT;
	}
	__be32 wire = nb->wire;

	// The outer route, as the kernel would route GRE the node sends: input
	// lookup from the loopback device (rules see iif lo, ipproto gre), with
	// the path MTU checked against the largest segment.
	__u32 inner_len = skb->len;
	__u32 seg_len = inner_len;
	if (skb->gso_segs > 1 || seg_len > cfg->tun_mtu)
		seg_len = cfg->tun_mtu;
	__builtin_memset(&fib, 0, sizeof(fib));
	fib.family = AF_INET;
	fib.tos = inner.tos;
	fib.l4_protocol = IPPROTO_GRE;
	fib.ipv4_src = cfg->local;
	fib.ipv4_dst = wire;
	fib.tot_len = seg_len + OVERHEAD;
	fib.ifindex = LOOPBACK_IFINDEX;
	rc = bpf_fib_lookup(skb, &fib, sizeof(fib), cfg->local ? 0 : BPF_FIB_LOOKUP_SRC);
	if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED) {
		count(ST_SLOW_FRAG, 1);
		return NEXT;
	}
	__u32 *iff = 0;
	if (rc == BPF_FIB_LKUP_RET_SUCCESS || rc == BPF_FIB_LKUP_RET_NO_NEIGH)
		iff = bpf_map_lookup_elem(&ifaces, &fib.ifindex);
	// An Ethernet next hop not resolved yet: the slow path's send makes
	// the kernel resolve it (a redirected skb that waits in the neighbour
	// queue loses its MAC header on 6.x).
	if (iff && (*iff & IF_L2) && rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		count(ST_SLOW_NEIGH, 1);
		return NEXT;
	}
	if ((cfg->flags & CFG_REQUIRE_IPSEC) && (!iff || !(*iff & IF_IPSEC))) {
		// Never in clear: the slow path's send meets the kernel's
		// rules, which refuse GRE without an SA route.
		count(ST_SLOW_IPSEC, 1);
		return NEXT;
	}
	if (!iff || !fib.ipv4_src) {
		count(ST_SLOW_OTHER, 1);
		return NEXT;
	}
	__u32 out_flags = *iff;
	__u32 out_ifindex = fib.ifindex;
	__be32 gw = fib.ipv4_dst;

	__u64 now = bpf_ktime_get_ns();
	if (now - nb->last_used > 1000000000ULL)
		nb->last_used = now;

	__u32 segs = segments(skb);
	if (segs > 1)
		count(ST_TX_GSO, 1);

	long err = bpf_skb_adjust_room(skb, OVERHEAD, BPF_ADJ_ROOM_MAC,
				       BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 |
				       BPF_F_ADJ_ROOM_ENCAP_L4_GRE);
	if (err == -EALREADY) {
		// A packet that arrived encapsulated (decapsulated here, or GRO
		// of GRE) and is forwarded into the tunnel again (a hub relaying
		// spoke to spoke): the kernel keeps it marked as encapsulated
		// (before BPF_F_ADJ_ROOM_DECAP_L4_GRE). One packet is encapsulated
		// without GSO metadata; a super-packet takes the slow path, which
		// segments it.
		if (skb->gso_size) {
			count(ST_SLOW_OTHER, 1);
			return NEXT;
		}
		err = bpf_skb_adjust_room(skb, OVERHEAD, BPF_ADJ_ROOM_MAC, 0);
	}
	if (err) {
		count(ST_TX_ERROR, 1);
		return TC_ACT_SHOT;
	}
	struct outer h = {};
	__u32 len = skb->len;
	h.ip.version = 4;
	h.ip.ihl = 5;
	h.ip.tos = inner.tos;
	h.ip.tot_len = len > 0xffff ? 0 : bpf_htons(len); // GSO writes each segment's
	h.ip.frag_off = bpf_htons(IP_DF);
	h.ip.ttl = cfg->ttl;
	h.ip.protocol = IPPROTO_GRE;
	h.ip.saddr = fib.ipv4_src;
	h.ip.daddr = wire;
	h.ip.check = ip_checksum(&h.ip);
	h.gre_flags = bpf_htons(GRE_FLAG_KEY);
	h.gre_proto = bpf_htons(ETH_P_IP);
	h.gre_key = bpf_htonl(cfg->key);
	if (bpf_skb_store_bytes(skb, 0, &h, sizeof(h), 0) < 0) {
		count(ST_TX_ERROR, 1);
		return TC_ACT_SHOT;
	}

	count(ST_TX_PACKETS, segs);
	count(ST_TX_BYTES, inner_len);
	struct peer_stats *ps = peer(wire);
	if (ps) {
		ps->tx_packets += segs;
		ps->tx_bytes += inner_len;
	}

	if (!(out_flags & IF_L2))
		return bpf_redirect(out_ifindex, 0);
	// The TUN is an L3 device: bpf_redirect_neigh needs a MAC header to
	// fill in.
	if (bpf_skb_change_head(skb, ETH_HLEN, 0) < 0) {
		count(ST_TX_ERROR, 1);
		return TC_ACT_SHOT;
	}
	__be16 proto = bpf_htons(ETH_P_IP);
	if (bpf_skb_store_bytes(skb, 12, &proto, sizeof(proto), 0) < 0) {
		count(ST_TX_ERROR, 1);
		return TC_ACT_SHOT;
	}
	struct bpf_redir_neigh via = {.nh_family = AF_INET, .ipv4_nh = gw};
	return bpf_redirect_neigh(out_ifindex, &via, sizeof(via), 0);
}

SEC("tc")
int dmvpn_ingress(struct __sk_buff *skb)
{
	if (skb->protocol != bpf_htons(ETH_P_IP))
		return NEXT;
	__u32 ifindex = skb->ifindex;
	__u32 *iff = bpf_map_lookup_elem(&ifaces, &ifindex);
	__u32 zero = 0;
	struct dp_config *cfg = bpf_map_lookup_elem(&config, &zero);
	if (!iff || !cfg)
		return NEXT;
	__u32 off = (*iff & IF_L2) ? ETH_HLEN : 0;

	struct outer h;
	if (bpf_skb_load_bytes(skb, off, &h, sizeof(h)) < 0 || h.ip.protocol != IPPROTO_GRE ||
	    h.ip.version != 4 || !bpf_map_lookup_elem(&local_addrs, &h.ip.daddr))
		return NEXT; // not GRE to us
	if (*iff & IF_REFUSE) {
		count(ST_RX_REFUSED, 1);
		return TC_ACT_SHOT;
	}
	if (h.ip.ihl != 5 || (h.ip.frag_off & bpf_htons(IP_MF_OFFSET)) ||
	    h.gre_flags != bpf_htons(GRE_FLAG_KEY) || h.gre_proto != bpf_htons(ETH_P_IP) ||
	    h.gre_key != bpf_htonl(cfg->key)) {
		// NHRP, IPv6, another key, checksums, sequence numbers,
		// fragments: the slow path's socket takes (or counts) them.
		count(ST_RX_PASSED, 1);
		return NEXT;
	}
	__u8 v;
	if (bpf_skb_load_bytes(skb, off + OVERHEAD, &v, 1) < 0 || (v >> 4) != 4) {
		count(ST_RX_PASSED, 1);
		return NEXT;
	}
	__u32 segs = segments(skb);
	__u32 inner_len = skb->len - off - OVERHEAD;
	if (segs > 1)
		count(ST_RX_GSO, 1);
	// DECAP_L4_GRE (newer kernels) also clears the skb's encapsulation
	// marks, so a relayed packet can be encapsulated again as it is.
	if (bpf_skb_adjust_room(skb, -OVERHEAD, BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_DECAP_L3_IPV4 |
				BPF_F_ADJ_ROOM_DECAP_L4_GRE) &&
	    bpf_skb_adjust_room(skb, -OVERHEAD, BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_DECAP_L3_IPV4)) {
		count(ST_RX_ERROR, 1);
		return TC_ACT_SHOT;
	}
	count(ST_RX_PACKETS, segs);
	count(ST_RX_BYTES, inner_len);
	struct peer_stats *ps = peer(h.ip.saddr);
	if (ps) {
		ps->rx_packets += segs;
		ps->rx_bytes += inner_len;
	}
	return bpf_redirect(cfg->tun_ifindex, BPF_F_INGRESS);
}

char _license[] SEC("license") = "GPL";
