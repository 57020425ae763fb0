"""The agent's `--state-dir`: counters that survive restarts, `kill -9` included.

Layout (a hostPath in the DaemonSet, `/var/lib/netwatch`):

    checkpoint.json   the TelemetryAccumulator's state + the journal position it includes
    journal/          the eBPF backend's write-ahead journal (`netwatch.capture.journal`)
    lock              flock: one agent per state directory

The protocol, per drain (`Agent.step`): drain → count → publish → `save()` the checkpoint
(temp file, fsync, rename: a crash leaves the old or the new one, never half) →
acknowledge the journal up to the checkpoint's position. At start: `load()`, restore the
counters, `recover()` the journal after that position. Every record the kernel handed
over is then counted exactly once across any number of crashes: before the checkpoint it
is replayed from the journal onto the older counters; after it, it is in the counters and
no longer replayed. The Prometheus counters therefore continue across restarts instead of
resetting (no `increase()` artefacts, nothing lost between the last scrape and the crash).

Not carried over: the suggester's observations (suggestions restart from new traffic),
the capture's orientation memory, and the live-inventory resourceVersions (re-listed).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from pathlib import Path

from netwatch.core.checkpoint import Checkpoint, CheckpointError, decode, encode

log = logging.getLogger("netwatch.agent")

CHECKPOINT = "checkpoint.json"
JOURNAL = "journal"
LOCK = "lock"


class StateDirError(RuntimeError):
    """The state directory cannot be used (permissions, another agent holds it)."""


class StateDir:
    """One agent's state directory; holds its lock until `close()`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StateDirError(f"state directory {path}: {exc}") from exc
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise StateDirError(
                f"state directory {path} is in use by another netwatch agent"
            ) from None

    @property
    def journal_dir(self) -> Path:
        return self.path / JOURNAL

    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT

    def load(self, *, node: str) -> Checkpoint | None:
        """The last checkpoint of `node`, or None (first start, unreadable, another node's).

        An unusable file is set aside as `checkpoint.json.unusable-<time>` (kept for
        inspection) and the agent starts from zero, saying why."""
        try:
            data = self.checkpoint_path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            checkpoint = decode(data)
        except CheckpointError as exc:
            self._set_aside(f"{self.checkpoint_path}: unreadable checkpoint ({exc})")
            return None
        if checkpoint.node != node:
            self._set_aside(
                f"{self.checkpoint_path}: checkpoint of node {checkpoint.node!r}, "
                f"this agent is {node!r}"
            )
            return None
        return checkpoint

    def _set_aside(self, why: str) -> None:
        target = self.path / f"{CHECKPOINT}.unusable-{int(time.time())}"
        with contextlib.suppress(OSError):
            self.checkpoint_path.rename(target)
        log.error("%s; moved to %s, counters start from zero", why, target.name)

    def save(self, checkpoint: Checkpoint) -> None:
        """Atomically replace the checkpoint (temp file, fsync, rename, fsync directory)."""
        temp = self.path / f".{CHECKPOINT}.tmp"
        data = encode(checkpoint)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, self.checkpoint_path)
        dir_fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
