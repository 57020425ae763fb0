"""The snapshot source: cluster files delivered to an InventorySink, reloaded on change.

`SnapshotSource` loads its paths with `snapshot.load_cluster` and delivers a `replace`
of every inventory kind. It then polls the files (path, size, mtime and inode of every
snapshot file, directories walked as the loader walks them) every `interval` seconds
and reloads when that fingerprint changes — no inotify, so it works on any filesystem,
including a ConfigMap volume whose files are swapped by symlink.

A broken update never reaches the sink. A reload is rejected when it has a problem the
delivered inventory did not already have: a YAML/JSON syntax error, an unreadable or
vanished file, an invalid object (DESIGN §3.9). Half-edited files and bad pushes thus
keep the previous good inventory, instead of silently dropping the policies in a broken
document and turning every verdict around. The rejection is reported in `last_error`,
and a later fix is picked up by the next poll. Problems already present in the
delivered inventory do not block later updates (one permanently invalid object must not
freeze the inventory); the very first load is delivered whatever its problems, as the
CLI would use it, since there is nothing better to serve.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from netwatch.core.inventory import InventoryObject, InventorySink, ObjectKind
from netwatch.core.model import LoadProblem
from netwatch.k8s.snapshot import LoadResult, load_cluster, snapshot_files

log = logging.getLogger(__name__)

Fingerprint = tuple[tuple[str, int, int, int], ...]
"""(path, size, mtime_ns, inode) of every file, or (path, -1, -1, -1) if missing."""


@dataclass(frozen=True, slots=True)
class ReloadStatus:
    loaded_at: float | None
    """When the delivered inventory was loaded (None: nothing delivered yet)."""
    objects: int
    problems: tuple[LoadProblem, ...]
    """Problems of the delivered load (tolerated ones, or all of the first load)."""
    last_error: str | None
    """Why the files on disk now are not what is delivered; None when they are."""


class SnapshotSource:
    """Files and directories into `sink`, reloaded when they change."""

    def __init__(
        self,
        paths: Sequence[str | os.PathLike[str]],
        sink: InventorySink,
        *,
        interval: float = 5.0,
        clock: Callable[[], float] = time.time,
        load: Callable[[Sequence[str]], LoadResult] = load_cluster,
    ) -> None:
        self._paths = [os.fspath(p) for p in paths]
        self._sink = sink
        self._interval = interval
        self._clock = clock
        self._load = load
        self._fingerprint: Fingerprint | None = None
        self._status = ReloadStatus(None, 0, (), None)
        self._accepted: frozenset[tuple[str, str, str]] | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.reloads_total = 0
        """Loads delivered to the sink."""
        self.rejected_total = 0
        """Loads rejected because they were broken."""

    @property
    def status(self) -> ReloadStatus:
        return self._status

    @property
    def last_error(self) -> str | None:
        return self._status.last_error

    # -------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Load once now (so the inventory is there on return), then poll in a thread."""
        if self._thread is not None:
            raise RuntimeError("SnapshotSource already started")
        self.poll()
        self._thread = threading.Thread(target=self._run, name="snapshot-reload", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stopping.wait(self._interval):
            try:
                self.poll()
            except Exception:  # a bug must not end reloading for good
                log.exception("snapshot reload failed")

    # ------------------------------------------------------------------ polling

    def poll(self) -> bool:
        """Reload if the files changed since the last load; return whether it delivered."""
        before = self._fingerprint_now()
        if before == self._fingerprint:
            return False
        result = self._load(self._paths)
        # Files still being written change under the loader: keep the old fingerprint so
        # the next poll loads again once they have settled.
        settled = self._fingerprint_now() == before
        delivered = self._consider(result)
        if settled:
            self._fingerprint = before
        return delivered

    def _consider(self, result: LoadResult) -> bool:
        keys = frozenset(_problem_key(p) for p in result.problems)
        if self._accepted is not None:
            new = [p for p in result.problems if _problem_key(p) not in self._accepted]
            if new:
                self.rejected_total += 1
                message = _render(new, total=len(new))
                if message != self._status.last_error:
                    log.error(
                        "snapshot reload rejected, keeping the previous inventory: %s", message
                    )
                self._status = ReloadStatus(
                    self._status.loaded_at, self._status.objects, self._status.problems, message
                )
                return False
        now = self._clock()
        self._deliver(result, at=now)
        self._accepted = keys
        self.reloads_total += 1
        error = _render(result.problems, total=len(result.problems)) if result.problems else None
        if error:
            log.warning("snapshot loaded with problems: %s", error)
        self._status = ReloadStatus(now, result.objects, result.problems, error)
        return True

    def _deliver(self, result: LoadResult, *, at: float) -> None:
        cluster = result.cluster
        kinds: dict[ObjectKind, Sequence[InventoryObject]] = {
            ObjectKind.NAMESPACE: tuple(cluster.namespaces.values()),
            ObjectKind.NODE: cluster.nodes,
            ObjectKind.POD: cluster.pods,
            ObjectKind.SERVICE: cluster.services,
            ObjectKind.ENDPOINT_SLICE: cluster.endpoint_slices,
            ObjectKind.NETWORK_POLICY: cluster.policies,
            ObjectKind.WORKLOAD: cluster.workload_objects,
        }
        for kind, objects in kinds.items():
            self._sink.replace(kind, objects, at=at)

    def _fingerprint_now(self) -> Fingerprint:
        entries: list[tuple[str, int, int, int]] = []
        for path in self._paths:
            files = snapshot_files(path) if os.path.isdir(path) else [path]
            # An empty directory is a state too (the loader reports it).
            entries.extend(_stat(f) for f in files or [path])
        return tuple(entries)


def _stat(path: str) -> tuple[str, int, int, int]:
    try:
        st = os.stat(path)  # follows symlinks: a ConfigMap swap changes the target
    except OSError:
        return (path, -1, -1, -1)
    return (path, st.st_size, st.st_mtime_ns, st.st_ino)


def _problem_key(problem: LoadProblem) -> tuple[str, str, str]:
    # Without the source: document numbers shift when an unrelated document is edited.
    return (problem.obj, problem.field, problem.message)


def _render(problems: Sequence[LoadProblem], *, total: int, limit: int = 5) -> str:
    shown = "; ".join(str(p) for p in problems[:limit])
    more = f" (and {total - limit} more)" if total > limit else ""
    return f"{total} problem{'s' if total != 1 else ''}: {shown}{more}"
