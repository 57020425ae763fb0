"""Fixtures for the live source: a real API server on loopback and a recording sink."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from netwatch.core.inventory import EventType, InventoryEvent, InventoryObject, ObjectKind
from netwatch.core.model import WorkloadObject
from netwatch.k8s.backoff import BackoffPolicy
from netwatch.k8s.live import LiveSource
from netwatch.k8s.watch import WatchOptions
from tests.integration.kube_api import KubeAPI, kubeconfig_text

# Fast enough for tests, slow enough not to spin: a failure retries within 20-50 ms.
FAST = WatchOptions(
    backoff=BackoffPolicy(initial=0.02, cap=0.05, reset_after=5.0),
    watch_timeout=30.0,
    connect_timeout=2.0,
    read_grace=5.0,
    request_timeout=5.0,
    page_size=2,
    rate=200.0,
    burst=100,
)


def identity(obj: InventoryObject) -> str:
    """How the sink tells objects of one kind apart."""
    namespace = getattr(obj, "namespace", "")
    prefix = f"{obj.kind.value}/" if isinstance(obj, WorkloadObject) else ""
    return f"{prefix}{namespace}/{obj.name}" if namespace else f"{prefix}{obj.name}"


@dataclass(frozen=True)
class Replace:
    kind: ObjectKind
    names: tuple[str, ...]
    at: float


class RecordingSink:
    """An InventorySink that keeps the current objects per kind and every call made."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.state: dict[ObjectKind, dict[str, InventoryObject]] = {k: {} for k in ObjectKind}
        self.calls: list[Replace | InventoryEvent] = []

    def replace(self, kind: ObjectKind, objects: Sequence[InventoryObject], *, at: float) -> None:
        with self._lock:
            self.state[kind] = {identity(o): o for o in objects}
            self.calls.append(Replace(kind, tuple(sorted(identity(o) for o in objects)), at))

    def apply(self, event: InventoryEvent) -> None:
        with self._lock:
            if event.type is EventType.DELETED:
                self.state[event.kind].pop(identity(event.obj), None)
            else:
                self.state[event.kind][identity(event.obj)] = event.obj
            self.calls.append(event)

    def names(self, kind: ObjectKind) -> set[str]:
        with self._lock:
            return set(self.state[kind])

    def get(self, kind: ObjectKind, name: str) -> Any:
        with self._lock:
            return self.state[kind].get(name)

    def events(self, kind: ObjectKind) -> list[tuple[str, str]]:
        """(type, identity) of each watch event of `kind`, in delivery order."""
        with self._lock:
            return [
                (c.type.value, identity(c.obj))
                for c in self.calls
                if isinstance(c, InventoryEvent) and c.kind is kind
            ]

    def replaces(self, kind: ObjectKind) -> list[Replace]:
        with self._lock:
            return [c for c in self.calls if isinstance(c, Replace) and c.kind is kind]


@pytest.fixture
def kube_api() -> Iterator[KubeAPI]:
    api = KubeAPI()
    api.start()
    yield api
    api.stop()


@pytest.fixture
def sink() -> RecordingSink:
    return RecordingSink()


SourceFactory = Callable[..., LiveSource]


@pytest.fixture
def live_source(kube_api: KubeAPI, sink: RecordingSink, tmp_path: Path) -> Iterator[SourceFactory]:
    """Builds a LiveSource from a kubeconfig file pointing at `kube_api`; stops it after."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(kubeconfig_text(kube_api.url))
    started: list[LiveSource] = []

    def make(*, options: WatchOptions = FAST, **kwargs: Any) -> LiveSource:
        source = LiveSource.from_config(sink, kubeconfig=str(kubeconfig), options=options, **kwargs)
        started.append(source)
        return source

    yield make
    for source in started:
        source.stop(timeout=5)
