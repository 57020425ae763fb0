"""A write-ahead journal of what the eBPF backend took out of the kernel map.

Lookup-and-delete takes entries out of the kernel's flow map (each drain, and the
emptier thread whenever the map is half full); until the agent has counted those
entries *and* checkpointed the counters, they exist only in the process's memory, and a
`kill -9` would lose them. So every batch is appended here right after the
syscall returns it, before anything else happens to it (`MapDrainer.drain(record=...)`).

Segments: `seg-<n>.bin`, numbered upwards. The emptier appends to the current segment;
each `drain()` of the source seals it (`rotate()`, under the same lock that hands the
pending entries to the drain) — so segment *n* holds exactly what drain *n* returned.
The agent checkpoints its counters with the position *n* they include, then
`acknowledge(n)`: segments before *n* are deleted and *n* is truncated to zero bytes,
left as the high-water mark that keeps numbering monotonic across restarts. After a
crash, `recover(position)` returns the entries of every segment after the checkpoint's
position — drained from the kernel but not yet counted — for the next drain.

Record layout (little-endian): `b"NWJ1"`, u32 entry count n, u16 key size, u16 value size,
then n keys and n values (the kernel's own bytes). A full disk never leaves a torn
record: a batch it refuses is cut off again (the caller still counts it, it is only not
crash-safe), and a rotation that cannot create the next segment empties the current one
in place (`rotate`). A torn or foreign tail found on reading is reported and skipped;
everything before it is kept.

Not covered: a crash in the microseconds between the lookup-and-delete syscall returning
and the append (the only window in which drained entries live nowhere else), and a node
crash (the page cache is not fsynced per append; the kernel maps die with the node too).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import struct
import threading
from pathlib import Path

_log = logging.getLogger("netwatch.capture")

_MAGIC = b"NWJ1"
_HEADER = struct.Struct("<4sIHH")
_NAME = re.compile(r"^seg-(\d{12})\.bin$")


class JournalError(RuntimeError):
    """The journal directory cannot be used."""


def _name(n: int) -> str:
    return f"seg-{n:012d}.bin"


class Journal:
    """Append-only segments of raw (key, value) entries; thread-safe."""

    def __init__(self, directory: Path, *, key_size: int, value_size: int) -> None:
        self.directory = directory
        self._key_size, self._value_size = key_size, value_size
        self._lock = threading.Lock()
        try:
            directory.mkdir(parents=True, exist_ok=True)
            existing = self.segments()
        except OSError as exc:
            raise JournalError(f"journal {directory}: {exc}") from exc
        self._current = (existing[-1] if existing else 0) + 1
        self._fd = self._open(self._current)
        self.appended = 0
        """Entries appended by this process."""
        self.rotate_failures = 0

    def segments(self) -> list[int]:
        """Segment numbers on disk, ascending."""
        found = (_NAME.match(p.name) for p in self.directory.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    @property
    def current(self) -> int:
        """The segment being appended to."""
        return self._current

    def _open(self, n: int) -> int:
        path = self.directory / _name(n)
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise JournalError(f"journal segment {path}: {exc}") from exc

    def append(self, keys: bytes, values: bytes, count: int) -> None:
        """One batch as the kernel returned it: `count` keys, then `count` values."""
        if count <= 0:
            return
        header = _HEADER.pack(_MAGIC, count, self._key_size, self._value_size)
        record = b"".join(
            (header, keys[: count * self._key_size], values[: count * self._value_size])
        )
        with self._lock:
            start = os.lseek(self._fd, 0, os.SEEK_END)
            try:
                written = os.write(self._fd, record)
            except OSError:
                os.ftruncate(self._fd, start)  # never leave a torn record mid-segment
                raise
            if written != len(record):  # a regular file: only on a full disk
                os.ftruncate(self._fd, start)
                raise OSError(
                    errno.ENOSPC, f"journal {self.directory}: short write ({written}/{len(record)})"
                )
            self.appended += count

    def rotate(self) -> int:
        """Seal the current segment and start the next; returns the sealed number.

        When the next segment cannot be created (no inode left), the current one is
        emptied in place instead and the previous number returned: the caller has the
        entries in memory and counts them, a crash replays only what came after — the
        exactly-once protocol holds either way."""
        with self._lock:
            sealed = self._current
            try:
                fd = self._open(sealed + 1)
            except JournalError as exc:
                os.ftruncate(self._fd, 0)
                self.rotate_failures += 1
                _log.error("%s; emptying segment %d in place", exc, sealed)
                return sealed - 1
            os.close(self._fd)
            self._fd, self._current = fd, sealed + 1
        return sealed

    def acknowledge(self, position: int) -> None:
        """Segments up to `position` are counted and checkpointed: drop them (see module doc)."""
        with self._lock:
            for n in self.segments():
                if n >= self._current or n > position:
                    continue
                path = self.directory / _name(n)
                try:
                    if n == position:
                        os.truncate(path, 0)
                    else:
                        path.unlink()
                except FileNotFoundError:
                    pass

    def recover(self, position: int) -> list[tuple[bytes, bytes]]:
        """Entries of the sealed segments after `position` (drained, never counted)."""
        with self._lock:
            if position >= self._current:
                # The checkpoint is newer than this journal (a journal directory was
                # wiped): continue numbering after it, so acknowledgements stay ordered.
                _log.warning(
                    "journal %s ends at segment %d before the checkpoint's %d; renumbering",
                    self.directory,
                    self._current,
                    position,
                )
                os.close(self._fd)
                old = self.directory / _name(self._current)
                self._current = position + 1
                old.rename(self.directory / _name(self._current))
                self._fd = self._open(self._current)
            pending = [n for n in self.segments() if position < n < self._current]
        self.acknowledge(position)
        out: list[tuple[bytes, bytes]] = []
        for n in pending:
            out.extend(self.read(n))
        return out

    def read(self, n: int) -> list[tuple[bytes, bytes]]:
        """The entries of segment `n`; a torn or corrupt tail is logged and skipped."""
        path = self.directory / _name(n)
        data = path.read_bytes()
        out: list[tuple[bytes, bytes]] = []
        offset = 0
        while offset < len(data):
            problem = self._record(data, offset, out)
            if isinstance(problem, str):
                _log.error(
                    "journal %s: %s at byte %d; the last %d bytes are skipped",
                    path,
                    problem,
                    offset,
                    len(data) - offset,
                )
                break
            offset = problem
        return out

    def _record(self, data: bytes, offset: int, out: list[tuple[bytes, bytes]]) -> int | str:
        if len(data) - offset < _HEADER.size:
            return "torn record header"
        magic, *sizes = _HEADER.unpack_from(data, offset)
        count, ksize, vsize = (int(v) for v in sizes)
        if magic != _MAGIC:
            return "bad record magic"
        if (ksize, vsize) != (self._key_size, self._value_size):
            return (
                f"entry layout {ksize}/{vsize} bytes, expected {self._key_size}/{self._value_size}"
            )
        start = offset + _HEADER.size
        values_at = start + count * ksize
        end = values_at + count * vsize
        if end > len(data):
            return "torn record"
        for i in range(count):
            out.append(
                (
                    data[start + i * ksize : start + (i + 1) * ksize],
                    data[values_at + i * vsize : values_at + (i + 1) * vsize],
                )
            )
        return end

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
