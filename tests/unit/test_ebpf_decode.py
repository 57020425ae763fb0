"""Kernel map entries → observations, delta accumulation, and `capture --print-bpf`."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

from netwatch.capture.accumulate import Accumulator
from netwatch.capture.assemble import Assembler
from netwatch.capture.ebpf import EbpfOptions, render_program
from netwatch.capture.layout import F_FIRST_TO_POD, F_OPENER_FROM_POD, KEY, VALUE, batch_of
from netwatch.capture.observation import Observation
from netwatch.cli.main import cli
from netwatch.core.flow import Connection, Orientation
from netwatch.core.model import Protocol


def entry(
    family: int, pod: str, peer: str, proto: int, flags: int, first_ns: int
) -> tuple[bytes, bytes]:
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    key = KEY.pack(
        socket.inet_pton(af, pod).ljust(16, b"\0"),
        socket.inet_pton(af, peer).ljust(16, b"\0"),
        40000, 443, 7, proto, family,
    )  # fmt: skip
    value = VALUE.pack(3, 2, 300, 2000, first_ns, first_ns + 5_000_000, flags)
    return key, value


class Recording(Assembler):
    """The real assembler, keeping what the packed entries decoded to."""

    def __init__(self) -> None:
        super().__init__(node="n1")
        self.seen: list[Observation] = []

    def assemble(self, observations, *, prune=True):  # type: ignore[no-untyped-def,override]
        self.seen += observations
        return super().assemble(observations, prune=prune)


def test_entries_decode_to_observations_with_epoch_times() -> None:
    raw = [
        entry(4, "10.244.1.2", "203.0.113.10", 6, 0x12 | (0x12 << 8) | F_OPENER_FROM_POD, 2_000),
        entry(6, "fd00::2", "fd00::9", 17, F_FIRST_TO_POD, 500),
        entry(4, "10.0.0.1", "10.0.0.2", 47, 0, 0),  # GRE: not a connection protocol
    ]
    asm = Recording()
    conns = asm.assemble_entries(
        batch_of(raw),
        names={7: "veth7"}.get,
        epoch_offset_ns=1_700_000_000 * 10**9,
        start_ns=1_000,
    )
    tcp, udp = asm.seen
    assert len(conns) == 2
    assert (tcp.pod_ip, tcp.peer_ip, tcp.pod_port, tcp.peer_port) == (
        "10.244.1.2", "203.0.113.10", 40000, 443,
    )  # fmt: skip
    assert tcp.protocol is Protocol.TCP and tcp.interface == "veth7"
    assert (tcp.packets_from_pod, tcp.packets_to_pod, tcp.bytes_from_pod, tcp.bytes_to_pod) == (
        3, 2, 300, 2000,
    )  # fmt: skip
    assert tcp.opener_from_pod and not tcp.opener_to_pod and tcp.tcp_flags_to_pod == 0x12
    assert tcp.first_seen == pytest.approx(1_700_000_000.000002, abs=1e-6)
    assert tcp.began_in_capture
    assert udp.pod_ip == "fd00::2" and udp.first_to_pod and not udp.began_in_capture


def conn(**kw: object) -> Connection:
    base: dict[str, object] = {
        "client_ip": "10.0.0.1", "client_port": 40000, "server_ip": "10.0.0.2",
        "server_port": 80, "protocol": Protocol.TCP, "first_seen": 10.0, "last_seen": 11.0,
        "packets_out": 1, "bytes_out": 100, "packets_in": 2, "bytes_in": 200, "node": "n",
    }  # fmt: skip
    base.update(kw)
    return Connection(**base)  # type: ignore[arg-type]


def test_deltas_add_up_per_connection_and_the_best_orientation_wins() -> None:
    acc = Accumulator()
    acc.add([conn(orientation=Orientation.HEURISTIC)])
    flipped = conn(
        client_ip="10.0.0.2", client_port=80, server_ip="10.0.0.1", server_port=40000,
        packets_out=5, bytes_out=500, packets_in=1, bytes_in=10, first_seen=9.0, last_seen=20.0,
        orientation=Orientation.HEURISTIC,
    )  # fmt: skip
    acc.add([flipped, conn(orientation=Orientation.SYN, service_ip="10.96.0.1", service_port=80)])
    acc.add([conn(client_port=40001)])
    first, second = acc.connections()
    assert first.orientation is Orientation.SYN and first.client_port == 40000
    assert (first.packets_out, first.bytes_out, first.packets_in, first.bytes_in) == (
        1 + 1 + 1, 100 + 10 + 100, 2 + 5 + 2, 200 + 500 + 200,
    )  # fmt: skip
    assert (first.first_seen, first.last_seen, first.service_ip) == (9.0, 20.0, "10.96.0.1")
    assert second.client_port == 40001 and len(acc) == 2


def test_print_bpf_shows_the_program_with_its_flags(tmp_path: Path) -> None:
    options = EbpfOptions(map_size=4096, pin_dir=tmp_path / "pins")
    text = render_program(options)
    assert text.startswith(f'// bcc cflags: -DNW_MAP_SIZE=4096 -DNW_PIN_DIR="{tmp_path}/pins"')
    assert "BPF_TABLE_PINNED" in text and "int nw_ingress" in text
    result = CliRunner().invoke(
        cli, ["capture", "--print-bpf", "--map-size", "128", "--pin-dir", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert "-DNW_MAP_SIZE=128" in result.output and "nw_egress" in result.output


def test_capture_rejects_bad_pod_cidrs_with_exit_2() -> None:
    result = CliRunner().invoke(cli, ["capture", "--pod-cidr", "10.0.0.0/33", "--duration", "1"])
    assert result.exit_code == 2
    assert "--pod-cidr" in result.output
