// netwatch per-connection counters: TC (clsact) programs on the host side of pod veths.
//
// Strategy
//   * Two entry points share one body: `nw_ingress` (TC ingress of the host-side veth =
//     packets the pod SENDS) and `nw_egress` (TC egress = packets delivered TO the pod).
//     The hook tells which end is the pod, so the key is (pod end, peer end) and both
//     directions of a conversation land in ONE entry: no address comparison, no
//     canonical ordering, and userspace never has to join two entries.
//   * Key: ifindex, family, protocol, pod address/port, peer address/port. Value:
//     packets and bytes per direction, first/last seen (bpf_ktime_get_ns, CLOCK_MONOTONIC;
//     userspace converts to epoch), OR-ed TCP flags per direction, and "opener" bits: a
//     TCP SYN without ACK, an SCTP INIT chunk or an ICMP query (echo, timestamp, ...)
//     marks its sender as the client. ICMP "ports": the requester's is the query
//     identifier, the responder's the request type (8, 128), as capture/packets.py keys
//     them; other ICMP messages are keyed (0, type).
//   * Bytes are whole IP packets: skb->len minus the link-layer header (Ethernet plus any
//     802.1Q/802.1ad tags), i.e. exactly the IP length tcpdump reports on the same veth,
//     GSO/GRO super-packets included (they are one packet to TC and to AF_PACKET alike).
//   * Aggregation happens in two LRU hashes (`flows`, `flows_b`, NW_MAP_SIZE entries
//     each), one of them active: `drained[DR_ACTIVE]` says which. Userspace empties
//     one by switching the other active, waiting until no program can still hold a
//     pointer into it (membarrier(MEMBARRIER_CMD_GLOBAL) = synchronize_rcu(); TC
//     programs run under rcu_read_lock), then draining it with
//     BPF_MAP_LOOKUP_AND_DELETE_BATCH — nobody writes to it any more, so no increment
//     can land in an entry being copied or deleted (or in a freed LRU element another
//     flow reuses). The fallbacks (per-key lookup-and-delete, then lookup + delete)
//     live in userspace (bpf_maps.py); a userspace thread checks the fill every 250 ms
//     and empties the active map from half full.
//   * All maps are pinned under NW_PIN_DIR (BPF_TABLE_PINNED): a restarted capture process
//     reuses them, and programs left attached keep counting into them meanwhile, so what
//     was not drained yet is drained by the next process — nothing lost, nothing twice.
//
// Loss accounting (`stats`, per-CPU, pinned)
//   ST_PACKETS/ST_BYTES count what was added to `flows`; ST_INSERTS counts entries this
//   program created. Userspace adds what it drained to `drained` (a plain pinned array).
//   The LRU evicts silently, so evictions are derived: entries inserted but never drained
//   (ST_INSERTS - drained entries - live entries), and the same for packets/bytes. A failed
//   map update (e.g. -ENOMEM) is counted in ST_UPDATE_FAILED and never reaches `flows`.
//
// Limits
//   * Only uapi headers and __sk_buff fields are used (no kernel structs: the installed
//     headers do not match the running kernel, DESIGN §9), Ethernet-framed links only.
//   * Non-first IP fragments carry no ports: they are counted in ST_FRAG_* and not
//     attributed to a connection. Protocols other than TCP/UDP/SCTP/ICMP(v6) are counted
//     in ST_OTHER_PROTO; non-IP frames (ARP, LLDP) in ST_NON_IP; ICMPv6 neighbour
//     discovery / MLD (link-local control, not conversations) in ST_ICMP6_CONTROL.
//   * Where membarrier is unavailable (nohz_full, no CONFIG_MEMBARRIER), userspace waits
//     a fixed grace period instead: a program still running past it could lose its
//     increment, which would show in the lost counters.
//
// Options (-D flags, see `netwatch capture --print-bpf`)
//   NW_MAP_SIZE   max entries of the LRU flow map
//   NW_PIN_DIR    bpffs directory holding the pinned maps (string literal)

#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>

#ifndef NW_MAP_SIZE
#define NW_MAP_SIZE 65536
#endif
#ifndef NW_PIN_DIR
#define NW_PIN_DIR "/sys/fs/bpf/netwatch"
#endif

#define DIR_FROM_POD 0
#define DIR_TO_POD 1

// flags word layout (shared with bpf_maps.py)
#define F_TCP_FROM_POD_SHIFT 0 // TCP flags byte of packets sent by the pod
#define F_TCP_TO_POD_SHIFT 8   // TCP flags byte of packets sent to the pod
#define F_OPENER_FROM_POD (1ULL << 16)
#define F_OPENER_TO_POD (1ULL << 17)
#define F_FIRST_TO_POD (1ULL << 18) // the packet that created the entry went to the pod

#define ST_PACKETS 0
#define ST_BYTES 1
#define ST_INSERTS 2
#define ST_UPDATE_FAILED 3
#define ST_NON_IP 4
#define ST_OTHER_PROTO 5
#define ST_FRAG_PACKETS 6
#define ST_FRAG_BYTES 7
#define ST_TRUNCATED 8
#define ST_ICMP6_CONTROL 9
#define ST_MAX 10

#define DR_PACKETS 0
#define DR_BYTES 1
#define DR_ENTRIES 2
#define DR_ACTIVE 3 // which flow map the programs write to: 0 `flows`, 1 `flows_b`
#define DR_MAX 4

struct flow_key {
    __u32 pod_addr[4]; // IPv4 in [0], network byte order
    __u32 peer_addr[4];
    __u16 pod_port;    // host byte order; ICMP: see the ICMP branch of account()
    __u16 peer_port;
    __u32 ifindex;
    __u8 proto;        // IPPROTO_*
    __u8 family;       // 4 or 6
    __u8 pad[2];
};

struct flow_val {
    __u64 packets[2]; // [DIR_FROM_POD], [DIR_TO_POD]
    __u64 bytes[2];
    __u64 first_ns;
    __u64 last_ns;
    __u64 flags;
};

BPF_TABLE_PINNED("lru_hash", struct flow_key, struct flow_val, flows, NW_MAP_SIZE,
                 NW_PIN_DIR "/flows");
BPF_TABLE_PINNED("lru_hash", struct flow_key, struct flow_val, flows_b, NW_MAP_SIZE,
                 NW_PIN_DIR "/flows_b");
BPF_TABLE_PINNED("percpu_array", __u32, __u64, stats, ST_MAX, NW_PIN_DIR "/stats");
BPF_TABLE_PINNED("array", __u32, __u64, drained, DR_MAX, NW_PIN_DIR "/drained");

// The active flow map (see "Aggregation" above); bcc allows no map call in a macro.
static __always_inline struct flow_val *flow_lookup(int second, struct flow_key *key) {
    if (second)
        return flows_b.lookup(key);
    return flows.lookup(key);
}

static __always_inline int flow_insert(int second, struct flow_key *key, struct flow_val *val) {
    if (second)
        return flows_b.insert(key, val);
    return flows.insert(key, val);
}

static __always_inline void stat_add(__u32 idx, __u64 n) {
    __u64 *c = stats.lookup(&idx);
    if (c)
        *c += n; // per-CPU slot; TC programs run with migration disabled
}

#define IPV6_EXT_MAX 6

static __always_inline int account(struct __sk_buff *skb, int dir) {
    __u32 off = ETH_HLEN;
    __u16 proto;
    if (bpf_skb_load_bytes(skb, 12, &proto, sizeof(proto)) < 0) {
        stat_add(ST_TRUNCATED, 1);
        return TC_ACT_UNSPEC;
    }
#pragma unroll
    for (int i = 0; i < 2; i++) { // 802.1Q / 802.1ad tags (not expected on veths)
        if (proto != bpf_htons(ETH_P_8021Q) && proto != bpf_htons(ETH_P_8021AD))
            break;
        if (bpf_skb_load_bytes(skb, off + 2, &proto, sizeof(proto)) < 0)
            return TC_ACT_UNSPEC;
        off += 4;
    }
    if (skb->len <= off) {
        stat_add(ST_TRUNCATED, 1);
        return TC_ACT_UNSPEC;
    }
    __u64 ip_len = skb->len - off; // whole IP packet, link layer excluded

    struct flow_key key = {};
    __u8 l4 = 0;
    __u32 l4off = 0;
    int fragment = 0;
    key.ifindex = skb->ifindex;

    if (proto == bpf_htons(ETH_P_IP)) {
        struct iphdr ip;
        if (bpf_skb_load_bytes(skb, off, &ip, sizeof(ip)) < 0) {
            stat_add(ST_TRUNCATED, 1);
            return TC_ACT_UNSPEC;
        }
        key.family = 4;
        l4 = ip.protocol;
        l4off = off + ip.ihl * 4;
        fragment = (bpf_ntohs(ip.frag_off) & 0x1FFF) != 0;
        if (dir == DIR_FROM_POD) {
            key.pod_addr[0] = ip.saddr;
            key.peer_addr[0] = ip.daddr;
        } else {
            key.pod_addr[0] = ip.daddr;
            key.peer_addr[0] = ip.saddr;
        }
    } else if (proto == bpf_htons(ETH_P_IPV6)) {
        struct ipv6hdr ip6;
        if (bpf_skb_load_bytes(skb, off, &ip6, sizeof(ip6)) < 0) {
            stat_add(ST_TRUNCATED, 1);
            return TC_ACT_UNSPEC;
        }
        key.family = 6;
        if (dir == DIR_FROM_POD) {
            __builtin_memcpy(key.pod_addr, &ip6.saddr, 16);
            __builtin_memcpy(key.peer_addr, &ip6.daddr, 16);
        } else {
            __builtin_memcpy(key.pod_addr, &ip6.daddr, 16);
            __builtin_memcpy(key.peer_addr, &ip6.saddr, 16);
        }
        l4 = ip6.nexthdr;
        l4off = off + sizeof(ip6);
#pragma unroll
        for (int i = 0; i < IPV6_EXT_MAX; i++) {
            __u8 ext[2];
            if (l4 != IPPROTO_HOPOPTS && l4 != IPPROTO_ROUTING && l4 != IPPROTO_DSTOPTS &&
                l4 != IPPROTO_FRAGMENT && l4 != IPPROTO_AH)
                break;
            if (bpf_skb_load_bytes(skb, l4off, ext, sizeof(ext)) < 0) {
                stat_add(ST_TRUNCATED, 1);
                return TC_ACT_UNSPEC;
            }
            if (l4 == IPPROTO_FRAGMENT) {
                __u16 frag;
                if (bpf_skb_load_bytes(skb, l4off + 2, &frag, sizeof(frag)) < 0)
                    return TC_ACT_UNSPEC;
                fragment = (bpf_ntohs(frag) & 0xFFF8) != 0;
                l4off += 8;
            } else if (l4 == IPPROTO_AH) {
                l4off += (ext[1] + 2) * 4;
            } else {
                l4off += (ext[1] + 1) * 8;
            }
            l4 = ext[0];
        }
    } else {
        stat_add(ST_NON_IP, 1);
        return TC_ACT_UNSPEC;
    }

    if (fragment) {
        stat_add(ST_FRAG_PACKETS, 1);
        stat_add(ST_FRAG_BYTES, ip_len);
        return TC_ACT_UNSPEC;
    }

    __u64 flags = 0;
    __u16 sport = 0, dport = 0;
    if (l4 == IPPROTO_TCP) {
        __u8 th[14]; // ports, seq, ack, data offset, flags
        if (bpf_skb_load_bytes(skb, l4off, th, sizeof(th)) < 0) {
            stat_add(ST_TRUNCATED, 1);
            return TC_ACT_UNSPEC;
        }
        sport = ((__u16)th[0] << 8) | th[1];
        dport = ((__u16)th[2] << 8) | th[3];
        __u8 tcpflags = th[13];
        flags = (__u64)tcpflags << (dir == DIR_FROM_POD ? F_TCP_FROM_POD_SHIFT : F_TCP_TO_POD_SHIFT);
        if ((tcpflags & 0x12) == 0x02) // SYN without ACK: the sender is the client
            flags |= dir == DIR_FROM_POD ? F_OPENER_FROM_POD : F_OPENER_TO_POD;
    } else if (l4 == IPPROTO_UDP || l4 == IPPROTO_SCTP) {
        __u8 h[4];
        if (bpf_skb_load_bytes(skb, l4off, h, sizeof(h)) < 0) {
            stat_add(ST_TRUNCATED, 1);
            return TC_ACT_UNSPEC;
        }
        sport = ((__u16)h[0] << 8) | h[1];
        dport = ((__u16)h[2] << 8) | h[3];
        __u8 chunk = 0; // SCTP: type of the first chunk after the 12-byte common header
        if (l4 == IPPROTO_SCTP && bpf_skb_load_bytes(skb, l4off + 12, &chunk, 1) == 0 &&
            chunk == 1) // INIT: the sender is the client
            flags |= dir == DIR_FROM_POD ? F_OPENER_FROM_POD : F_OPENER_TO_POD;
    } else if (l4 == IPPROTO_ICMP || l4 == IPPROTO_ICMPV6) {
        __u8 ih[6]; // type, code, checksum, identifier
        if (bpf_skb_load_bytes(skb, l4off, ih, sizeof(ih)) < 0) {
            stat_add(ST_TRUNCATED, 1);
            return TC_ACT_UNSPEC;
        }
        __u8 type = ih[0];
        if (l4 == IPPROTO_ICMPV6 && ((type >= 130 && type <= 137) || type == 143)) {
            stat_add(ST_ICMP6_CONTROL, 1);
            return TC_ACT_UNSPEC;
        }
        __u16 ident = ((__u16)ih[4] << 8) | ih[5];
        // Queries and their replies share a key (same convention as capture/packets.py):
        // the requester's "port" is the identifier, the responder's the request type.
        __u8 request = 0;
        if (l4 == IPPROTO_ICMP) {
            if (type == 8 || type == 13 || type == 15 || type == 17)
                request = type;
            else if (type == 0)
                request = 8;
            else if (type == 14 || type == 16 || type == 18)
                request = type - 1;
        } else if (type == 128 || type == 129) {
            request = 128;
        }
        if (request && request == type) { // a query: its sender is the client
            sport = ident;
            dport = request;
            flags |= dir == DIR_FROM_POD ? F_OPENER_FROM_POD : F_OPENER_TO_POD;
        } else if (request) { // a reply travels back to the requester
            sport = request;
            dport = ident;
        } else { // errors and other messages: one record per (peers, type)
            sport = 0;
            dport = type;
        }
    } else {
        stat_add(ST_OTHER_PROTO, 1);
        return TC_ACT_UNSPEC;
    }
    key.proto = l4;
    if (dir == DIR_FROM_POD) {
        key.pod_port = sport;
        key.peer_port = dport;
    } else {
        key.pod_port = dport;
        key.peer_port = sport;
    }

    __u32 sel = DR_ACTIVE;
    __u64 *active = drained.lookup(&sel);
    int second = active && *active == 1;
    __u64 now = bpf_ktime_get_ns();
    struct flow_val *v = flow_lookup(second, &key);
    if (!v) {
        struct flow_val nv = {};
        nv.packets[dir] = 1;
        nv.bytes[dir] = ip_len;
        nv.first_ns = now;
        nv.last_ns = now;
        nv.flags = flags | (dir == DIR_TO_POD ? F_FIRST_TO_POD : 0);
        if (flow_insert(second, &key, &nv) == 0) { // BPF_NOEXIST: we created it
            stat_add(ST_INSERTS, 1);
            stat_add(ST_PACKETS, 1);
            stat_add(ST_BYTES, ip_len);
            return TC_ACT_UNSPEC;
        }
        v = flow_lookup(second, &key); // another CPU created it meanwhile
        if (!v) {
            stat_add(ST_UPDATE_FAILED, 1);
            return TC_ACT_UNSPEC;
        }
    }
    __sync_fetch_and_add(&v->packets[dir], 1);
    __sync_fetch_and_add(&v->bytes[dir], ip_len);
    if (now > v->last_ns)
        v->last_ns = now;
    if ((v->flags & flags) != flags)
        __sync_fetch_and_or(&v->flags, flags);
    stat_add(ST_PACKETS, 1);
    stat_add(ST_BYTES, ip_len);
    // UNSPEC: let any other classifier on this hook decide; we only observe.
    return TC_ACT_UNSPEC;
}

int nw_ingress(struct __sk_buff *skb) { return account(skb, DIR_FROM_POD); }

int nw_egress(struct __sk_buff *skb) { return account(skb, DIR_TO_POD); }
