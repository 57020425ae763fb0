"""`netwatch capture` without a kernel: backend choice, output modes, pcap input errors."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import netwatch.capture.sniff as sniff_module
import netwatch.cli.capture as capture_cli
from netwatch.capture.attach import LinkInfo
from netwatch.capture.bpf_maps import CaptureSetupError
from netwatch.cli.main import cli
from netwatch.core.flow import Connection, Orientation
from netwatch.core.model import Protocol


def conn(port: int, packets: int) -> Connection:
    return Connection(
        client_ip="10.0.0.1", client_port=port, server_ip="10.0.0.2", server_port=80,
        protocol=Protocol.TCP, first_seen=1.0, last_seen=2.0, packets_out=packets,
        bytes_out=100 * packets, orientation=Orientation.SYN, node="n",
    )  # fmt: skip


class FakeSource:
    """Two drains with data, then nothing: a live source in miniature."""

    def __init__(self, *_: Any, **__: Any) -> None:
        self.batches = [[conn(40000, 1)], [conn(40000, 2), conn(40001, 1)]]
        self.closed = False
        self.interfaces = ("veth1",)

    def drain(self) -> Sequence[Connection]:
        return self.batches.pop(0) if self.batches else []

    @property
    def finished(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True


class FakeIPRoute:
    def __enter__(self) -> FakeIPRoute:
        return self

    def __exit__(self, *_: object) -> None:
        return None


@pytest.fixture
def no_ebpf(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(_options: object) -> None:
        raise CaptureSetupError("no BPF here")

    monkeypatch.setattr(capture_cli, "EbpfSource", fail)
    monkeypatch.setattr(capture_cli, "IPRoute", FakeIPRoute)
    monkeypatch.setattr(capture_cli, "list_links", lambda _ipr: [LinkInfo(5, "veth1", "veth", 0)])
    monkeypatch.setattr(sniff_module, "SniffSource", FakeSource)


def test_auto_falls_back_to_sniff_and_says_so(no_ebpf: None, tmp_path: Path) -> None:
    out = tmp_path / "flows.jsonl"
    result = CliRunner().invoke(
        cli,
        ["capture", "--duration", "0.3", "--drain-interval", "0.1", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert "ebpf backend unavailable (no BPF here); falling back to sniff" in result.output
    assert "capturing with sniff on veth1" in result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    # deltas summed: one record per connection at the end
    assert [(r["client_port"], r["packets_out"]) for r in records] == [(40000, 3), (40001, 1)]


def test_explicit_ebpf_backend_fails_instead_of_falling_back(no_ebpf: None) -> None:
    result = CliRunner().invoke(cli, ["capture", "--backend", "ebpf", "--duration", "0.2"])
    assert result.exit_code == 1
    assert "ebpf backend unavailable: no BPF here" in result.output


def test_every_writes_windows_of_deltas(no_ebpf: None) -> None:
    result = CliRunner().invoke(
        cli,
        ["capture", "--duration", "0.45", "--drain-interval", "0.1", "--every", "0.1"],
    )
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [(r["client_port"], r["packets_out"]) for r in records] == [
        (40000, 1), (40000, 2), (40001, 1),
    ]  # fmt: skip


def test_a_broken_pcap_is_bad_input_with_its_offset(tmp_path: Path) -> None:
    bad = tmp_path / "broken.pcap"
    bad.write_bytes(b"\xd4\xc3\xb2\xa1" + b"\x02\x00\x04\x00" + b"\0" * 8 + b"\xff\xff\0\0")
    bad.write_bytes(bad.read_bytes() + b"\x01\x00\x00\x00" + b"\0" * 4 + b"\x40\0\0\0")
    result = CliRunner().invoke(cli, ["capture", "--pcap", str(bad)])
    assert result.exit_code == 2
    assert "broken.pcap" in result.output and "byte 24" in result.output
