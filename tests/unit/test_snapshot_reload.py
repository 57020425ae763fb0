"""Snapshot reloading: changes are picked up, broken updates keep the last good inventory."""

from __future__ import annotations

import os
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from netwatch.core.inventory import InventoryEvent, InventoryObject, ObjectKind
from netwatch.k8s.reload import SnapshotSource
from netwatch.k8s.snapshot import LoadResult, load_cluster


class Sink:
    def __init__(self) -> None:
        self.replaced: list[tuple[ObjectKind, tuple[InventoryObject, ...], float]] = []

    def replace(self, kind: ObjectKind, objects: Sequence[InventoryObject], *, at: float) -> None:
        self.replaced.append((kind, tuple(objects), at))

    def apply(self, event: InventoryEvent) -> None:
        raise AssertionError("a snapshot source only replaces")

    def names(self, kind: ObjectKind) -> list[str]:
        """Names in the latest replace of `kind`."""
        last = [objs for k, objs, _ in self.replaced if k is kind][-1]
        return [o.name for o in last]


def pod(name: str, ip: str) -> str:
    return f"""\
        apiVersion: v1
        kind: Pod
        metadata: {{name: {name}, namespace: shop, labels: {{app: {name}}}}}
        status: {{podIP: {ip}}}
        """


def policy(name: str, cidr: str = "10.0.0.0/8") -> str:
    return f"""\
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {{name: {name}, namespace: shop}}
        spec:
          podSelector: {{}}
          ingress: [{{from: [{{ipBlock: {{cidr: "{cidr}"}}}}]}}]
        """


def write(path: Path, *docs: str) -> None:
    """Write documents and move mtime forward, so the change is seen at any resolution."""
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text("---\n".join(textwrap.dedent(d) for d in docs))
    new = max(time.time_ns(), old + 1_000_000_000)
    os.utime(path, ns=(new, new))


@pytest.fixture
def sink() -> Sink:
    return Sink()


def test_first_poll_replaces_every_kind_and_unchanged_files_are_not_reloaded(
    tmp_path: Path, sink: Sink
) -> None:
    write(tmp_path / "a.yaml", pod("web", "10.0.0.1"), policy("allow"))
    source = SnapshotSource([tmp_path], sink, clock=lambda: 1000.0)

    assert source.poll() is True
    assert {k for k, _, _ in sink.replaced} == set(ObjectKind)
    assert len(sink.replaced) == len(ObjectKind)
    assert all(at == 1000.0 for _, _, at in sink.replaced)
    assert sink.names(ObjectKind.POD) == ["web"]
    assert sink.names(ObjectKind.NETWORK_POLICY) == ["allow"]
    assert sink.names(ObjectKind.NAMESPACE) == ["shop"]  # implied by the pod
    assert source.last_error is None
    assert source.status.objects == 2

    assert source.poll() is False
    assert len(sink.replaced) == len(ObjectKind)


def test_edited_added_and_removed_files_are_reloaded(tmp_path: Path, sink: Sink) -> None:
    write(tmp_path / "a.yaml", pod("web", "10.0.0.1"))
    source = SnapshotSource([tmp_path], sink)
    source.poll()

    write(tmp_path / "a.yaml", pod("web", "10.0.0.1"), pod("db", "10.0.0.2"))
    assert source.poll() is True
    assert sink.names(ObjectKind.POD) == ["db", "web"]

    write(tmp_path / "sub" / "b.yaml", pod("cache", "10.0.0.3"))
    assert source.poll() is True
    assert sink.names(ObjectKind.POD) == ["cache", "db", "web"]

    (tmp_path / "sub" / "b.yaml").unlink()
    assert source.poll() is True
    assert sink.names(ObjectKind.POD) == ["db", "web"]
    assert source.reloads_total == 4


def test_yaml_syntax_error_keeps_the_previous_inventory_until_fixed(
    tmp_path: Path, sink: Sink
) -> None:
    path = tmp_path / "a.yaml"
    write(path, pod("web", "10.0.0.1"), policy("allow"))
    source = SnapshotSource([path], sink)
    source.poll()
    delivered = len(sink.replaced)

    write(path, pod("web", "10.0.0.1"), "kind: NetworkPolicy\nmetadata: {name: [oops\n")
    assert source.poll() is False
    assert len(sink.replaced) == delivered  # nothing reached the sink
    assert source.last_error is not None
    assert str(path) in source.last_error and "syntax error" in source.last_error
    assert source.rejected_total == 1
    assert source.poll() is False  # the same broken file is not re-read every poll

    write(path, pod("web", "10.0.0.1"), policy("allow"), policy("deny"))
    assert source.poll() is True
    assert source.last_error is None
    assert sink.names(ObjectKind.NETWORK_POLICY) == ["allow", "deny"]


def test_invalid_object_keeps_the_previous_inventory(tmp_path: Path, sink: Sink) -> None:
    path = tmp_path / "a.yaml"
    write(path, policy("allow", "10.0.0.0/8"))
    source = SnapshotSource([path], sink)
    source.poll()

    write(path, policy("allow", "10.0.0.0/33"))
    assert source.poll() is False
    assert source.last_error is not None
    assert "NetworkPolicy shop/allow" in source.last_error
    assert "ipBlock.cidr" in source.last_error
    assert sink.names(ObjectKind.NETWORK_POLICY) == ["allow"]


def test_vanished_file_is_a_broken_update(tmp_path: Path, sink: Sink) -> None:
    path = tmp_path / "a.yaml"
    write(path, pod("web", "10.0.0.1"))
    source = SnapshotSource([path], sink)
    source.poll()

    path.unlink()
    assert source.poll() is False
    assert source.last_error is not None and "no such file" in source.last_error
    assert sink.names(ObjectKind.POD) == ["web"]


def test_problems_already_delivered_do_not_block_later_updates(tmp_path: Path, sink: Sink) -> None:
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    write(good, pod("web", "10.0.0.1"))
    write(bad, policy("broken", "not-a-cidr"))
    source = SnapshotSource([tmp_path], sink)

    assert source.poll() is True  # the first load is served, problems and all
    assert source.last_error is not None and "broken" in source.last_error
    assert len(source.status.problems) == 1

    write(good, pod("web", "10.0.0.1"), pod("db", "10.0.0.2"))
    assert source.poll() is True
    assert sink.names(ObjectKind.POD) == ["db", "web"]


def test_files_changing_during_a_load_are_loaded_again(tmp_path: Path, sink: Sink) -> None:
    path = tmp_path / "a.yaml"
    write(path, pod("web", "10.0.0.1"))
    edits = [lambda: write(path, pod("web", "10.0.0.1"), pod("db", "10.0.0.2"))]

    def load_while_editing(paths: Sequence[str]) -> LoadResult:
        result = load_cluster(paths)
        if edits:
            edits.pop()()  # the writer finishes after the loader read the file
        return result

    source = SnapshotSource([path], sink, load=load_while_editing)
    assert source.poll() is True
    assert sink.names(ObjectKind.POD) == ["web"]
    assert source.poll() is True  # not settled before: read again
    assert sink.names(ObjectKind.POD) == ["db", "web"]
    assert source.poll() is False


def test_started_source_picks_up_changes_and_stops(tmp_path: Path, sink: Sink) -> None:
    path = tmp_path / "a.yaml"
    write(path, pod("web", "10.0.0.1"))
    source = SnapshotSource([path], sink, interval=0.02)
    source.start()
    try:
        assert sink.names(ObjectKind.POD) == ["web"]  # loaded before start returns
        write(path, pod("db", "10.0.0.2"))
        deadline = time.monotonic() + 5
        while sink.names(ObjectKind.POD) != ["db"]:
            assert time.monotonic() < deadline, "change not picked up"
            time.sleep(0.01)
    finally:
        source.stop()
    assert source._thread is not None and not source._thread.is_alive()
