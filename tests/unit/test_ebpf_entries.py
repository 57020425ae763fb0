"""`Assembler.assemble_entries`: packed kernel entries, and the remembered-decision path.

The fast path must give exactly what decoding every entry and running `assemble` gives;
these tests drive both over the same drains and check where they could part: the
counted-once rule, Services seen on the server side first, a pod appearing at a
remembered address, closing flags.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Sequence
from pathlib import Path

from netwatch.capture.assemble import Assembler
from netwatch.capture.conntrack import ConntrackReader, Dnat, Query
from netwatch.capture.layout import (
    F_FIRST_TO_POD,
    F_OPENER_FROM_POD,
    F_OPENER_TO_POD,
    KEY,
    VALUE,
    Batch,
    batch_of,
    entries,
    totals,
)
from netwatch.capture.observation import Observation
from netwatch.core.flow import Connection, Orientation
from netwatch.core.model import Protocol

A, B, X = "10.244.1.2", "10.244.1.3", "10.244.9.9"  # two local pods; X: not known as a pod
WORLD, SVC = "203.0.113.10", "10.96.0.20"
V6_POD, V6_PEER = "fd00::2", "2001:db8::9"
IF_A, IF_B = 11, 12
NAMES = {IF_A: "vethA", IF_B: "vethB"}.get
T0 = 1_000_000_000  # kernel monotonic ns of the first packet
OFFSET = 1_700_000_000 * 10**9  # epoch ns - monotonic ns
PSH_ACK, FIN_ACK = 0x18, 0x11


def packed(ip: str) -> tuple[int, bytes]:
    if ":" in ip:
        return 6, socket.inet_pton(socket.AF_INET6, ip)
    return 4, socket.inet_pton(socket.AF_INET, ip).ljust(16, b"\0")


def entry(
    ifindex: int,
    pod: tuple[str, int],
    peer: tuple[str, int],
    *,
    at: int,
    flags: int = PSH_ACK | PSH_ACK << 8,
    sent: tuple[int, int] = (2, 140),
    received: tuple[int, int] = (1, 60),
    proto: int = 6,
) -> tuple[bytes, bytes]:
    family, pod_addr = packed(pod[0])
    _, peer_addr = packed(peer[0])
    key = KEY.pack(pod_addr, peer_addr, pod[1], peer[1], ifindex, proto, family)
    first = T0 + at * 10**9
    value = VALUE.pack(sent[0], received[0], sent[1], received[1], first, first + 1000, flags)
    return key, value


def observations(batch: Batch) -> list[Observation]:
    """What decoding every entry gives (the reference: no remembered shortcut)."""
    out = []
    for key, value in entries(batch):
        pod_a, peer_a, pod_p, peer_p, ifindex, proto, family = KEY.unpack(key)
        p_from, p_to, b_from, b_to, first_ns, last_ns, flags = VALUE.unpack(value)
        af, width = (socket.AF_INET6, 16) if family == 6 else (socket.AF_INET, 4)
        protocol = {6: Protocol.TCP, 17: Protocol.UDP}.get(proto)
        if protocol is None:
            continue
        out.append(
            Observation(
                ifindex=ifindex,
                interface=NAMES(ifindex),
                protocol=protocol,
                pod_ip=socket.inet_ntop(af, pod_a[:width]),
                pod_port=pod_p,
                peer_ip=socket.inet_ntop(af, peer_a[:width]),
                peer_port=peer_p,
                packets_from_pod=p_from,
                bytes_from_pod=b_from,
                packets_to_pod=p_to,
                bytes_to_pod=b_to,
                first_seen=(first_ns + OFFSET) / 1e9,
                last_seen=(last_ns + OFFSET) / 1e9,
                tcp_flags_from_pod=flags & 0xFF,
                tcp_flags_to_pod=(flags >> 8) & 0xFF,
                opener_from_pod=bool(flags & F_OPENER_FROM_POD),
                opener_to_pod=bool(flags & F_OPENER_TO_POD),
                first_to_pod=bool(flags & F_FIRST_TO_POD),
                began_in_capture=True,
            )
        )
    return out


class Counting(Assembler):
    """The real assembler, counting the entries that took the decoding path."""

    def __init__(self, **kw: object) -> None:
        super().__init__(node="n1", **kw)  # type: ignore[arg-type]
        self.decoded = 0

    def assemble(
        self, observations: Sequence[Observation], *, prune: bool = True
    ) -> list[Connection]:
        self.decoded += len(observations)
        return super().assemble(observations, prune=prune)


def fast(asm: Assembler, *drain: tuple[bytes, bytes]) -> list[Connection]:
    """One drain of one batch, as `EbpfSource.drain_parts` runs it (nothing deferred)."""
    out = asm.assemble_entries(
        batch_of(list(drain)), names=NAMES, epoch_offset_ns=OFFSET, start_ns=0
    )
    asm.end_drain()
    return out


def both(
    drains: list[list[tuple[bytes, bytes]]], **kw: object
) -> tuple[list[list[Connection]], list[list[Connection]], Counting]:
    """Every drain through a fast assembler and, decoded, through a reference one."""
    quick, reference = Counting(**kw), Assembler(node="n1", **kw)  # type: ignore[arg-type]
    got, expected = [], []
    for drain in drains:
        got.append(sorted(fast(quick, *drain), key=repr))
        expected.append(sorted(reference.assemble(observations(batch_of(drain))), key=repr))
    return got, expected, quick


def cluster_pods(ip: str) -> bool:
    return ip.startswith("10.244.1.")


def test_a_remembered_pod_to_pod_conversation_is_not_decoded_again_and_counts_the_same() -> None:
    syn = F_OPENER_FROM_POD | 0x02 | 0x12 << 8
    drains = [
        [  # the SYN drain: both veths, decided by the opener bits
            entry(IF_A, (A, 40000), (B, 8080), at=0, flags=syn),
            entry(IF_B, (B, 8080), (A, 40000), at=0, flags=F_OPENER_TO_POD | 0x12 | 0x02 << 8),
        ],
        *(
            [
                entry(IF_A, (A, 40000), (B, 8080), at=5 * n),
                entry(IF_B, (B, 8080), (A, 40000), at=5 * n, sent=(1, 60), received=(2, 140)),
            ]
            for n in range(1, 4)
        ),
    ]
    got, expected, asm = both(drains, is_cluster_pod=cluster_pods)
    assert got == expected
    assert asm.decoded == 2  # only the SYN drain was decoded
    for conns in got:
        [conn] = conns  # counted once: the server's veth reports it
        assert (conn.client_ip, conn.server_ip, conn.server_port) == (A, B, 8080)
        assert conn.interface == "vethB" and conn.orientation is Orientation.SYN
    assert (got[2][0].packets_out, got[2][0].bytes_out) == (2, 140)
    assert got[2][0].first_seen == (T0 + 10 * 10**9 + OFFSET) / 1e9
    assert asm.stats.suppressed == 4 and asm.stats.reported == 4


def test_pod_to_world_and_ipv6_are_reported_by_the_client_side_from_memory() -> None:
    drains = [
        [
            entry(IF_A, (A, 40001), (WORLD, 443), at=0, flags=F_OPENER_FROM_POD | 0x02),
            entry(IF_A, (V6_POD, 40002), (V6_PEER, 53), at=0, proto=17, flags=0),
        ],
        [
            entry(IF_A, (A, 40001), (WORLD, 443), at=5),
            entry(IF_A, (V6_POD, 40002), (V6_PEER, 53), at=5, proto=17, flags=0),
            entry(IF_A, (A, 40003), (WORLD, 0), at=5, proto=47, flags=0),  # GRE: skipped
        ],
    ]
    got, expected, asm = both(drains, is_cluster_pod=cluster_pods)
    assert got == expected
    assert asm.decoded == 2
    tcp, udp = sorted(got[1], key=lambda c: c.protocol.value)
    assert (tcp.client_ip, tcp.server_ip, tcp.server_port) == (A, WORLD, 443)
    assert (udp.client_ip, udp.server_ip, udp.server_port) == (V6_POD, V6_PEER, 53)


class Conntrack(ConntrackReader):
    def __init__(self, mapping: dict[Query, Dnat]) -> None:
        super().__init__(Path("/nonexistent"))
        self.mapping = mapping

    def resolve(self, queries):  # type: ignore[no-untyped-def,override]
        return {q: self.mapping.get(q) for q in queries}


def test_the_server_side_names_the_service_once_the_client_side_resolved_it() -> None:
    """Parts of one drain arrive in any order: here the backend's veth entry comes
    before the client's pre-DNAT entry that tells which Service was addressed."""
    dnat = Dnat(service_ip=SVC, service_port=80, backend_ip=B, backend_port=8080)
    conntrack = Conntrack({Query(Protocol.TCP, A, 40000, SVC, 80): dnat})
    asm = Counting(is_cluster_pod=cluster_pods, conntrack=conntrack)
    server_side = {"sent": (1, 60), "received": (2, 140)}
    [first] = fast(asm, entry(IF_B, (B, 8080), (A, 40000), at=0, **server_side))
    assert first.service_ip is None  # not known yet
    assert fast(asm, entry(IF_A, (A, 40000), (SVC, 80), at=0)) == []  # suppressed
    [later] = fast(asm, entry(IF_B, (B, 8080), (A, 40000), at=5, **server_side))
    assert (later.service_ip, later.service_port) == (SVC, 80)
    assert (later.client_ip, later.server_ip, later.server_port) == (A, B, 8080)
    assert asm.decoded == 2  # the third entry came from memory


def test_a_pod_appearing_at_a_remembered_address_takes_over_the_report() -> None:
    pods = {A}
    version = [0]
    asm = Counting(is_cluster_pod=pods.__contains__, pods_version=lambda: version[0])
    syn = F_OPENER_FROM_POD | 0x02
    [conn] = fast(asm, entry(IF_A, (A, 40000), (X, 9000), at=0, flags=syn))
    assert conn.server_ip == X  # X is no pod: the client side reports
    [conn] = fast(asm, entry(IF_A, (A, 40000), (X, 9000), at=5))
    pods.add(X)  # the inventory learns that X is a pod (on another node)
    version[0] += 1
    assert fast(asm, entry(IF_A, (A, 40000), (X, 9000), at=10)) == []  # X's node reports
    assert asm.decoded == 1


def test_closing_flags_take_the_decoding_path_and_a_reused_tuple_starts_over() -> None:
    asm = Counting(is_cluster_pod=cluster_pods, idle_s=60, closed_grace_s=5)
    fast(asm, entry(IF_A, (A, 40000), (WORLD, 443), at=0, flags=F_OPENER_FROM_POD | 0x02))
    [fin] = fast(asm, entry(IF_A, (A, 40000), (WORLD, 443), at=5, flags=FIN_ACK | FIN_ACK << 8))
    assert asm.decoded == 2 and fin.orientation is Orientation.SYN
    fast(asm, entry(IF_A, (A, 40010), (WORLD, 443), at=20, flags=F_OPENER_FROM_POD | 0x02))
    # 40000 closed 15 s ago: forgotten; seen again without a SYN it is decided afresh
    [again] = fast(asm, entry(IF_A, (A, 40000), (WORLD, 443), at=21))
    assert asm.decoded == 4 and again.orientation is Orientation.HEURISTIC


def test_batches_round_trip_and_sum_their_counters() -> None:
    pairs = [entry(IF_A, (A, 40000 + i), (B, 80), at=i, sent=(i, 100 * i)) for i in range(5)]
    batch = batch_of(pairs)
    assert batch[2] == 5 and list(entries(batch)) == pairs
    assert totals(batch) == (sum(range(5)) + 5, sum(100 * i for i in range(5)) + 5 * 60)
    assert totals((b"", b"", 0)) == (0, 0)
    assert struct.calcsize("<16s16sHHIBB2x") == KEY.size == 44 and VALUE.size == 56


def test_entries_without_an_opener_wait_for_the_rest_of_the_drain() -> None:
    """A drain's batches come in hash order: a short connection's last ACK may come
    before its SYN. Deferred to the end of the drain, it is decided by that SYN — not by
    the pods' socket tables (costly to read) or a port guess."""
    asked: list[int] = []

    def sockets(ifindex: int) -> None:
        asked.append(ifindex)

    def drain(*, defer: bool) -> list[Connection]:
        asm = Assembler(node="n1", is_cluster_pod=cluster_pods, sockets=sockets)
        late_ack = entry(IF_B, (B, 8080), (A, 40000), at=1, flags=0x10 << 8)
        syn_and_fin = entry(
            IF_B, (B, 8080), (A, 40000), at=0, flags=F_OPENER_TO_POD | 0x13 | 0x13 << 8
        )
        deferred: list[tuple[bytes, bytes]] | None = [] if defer else None
        out = []
        for part in ([late_ack], [syn_and_fin]):
            out += asm.assemble_entries(
                batch_of(part), names=NAMES, epoch_offset_ns=OFFSET, start_ns=0, defer=deferred
            )
        if deferred:
            out += asm.assemble_entries(
                batch_of(deferred), names=NAMES, epoch_offset_ns=OFFSET, start_ns=0
            )
        asm.end_drain()
        return out

    deferred = drain(defer=True)
    assert [c.orientation for c in deferred] == [Orientation.SYN, Orientation.SYN]
    assert asked == []
    drain(defer=False)
    assert asked  # without deferring, the ACK alone sends the assembler to the sockets
