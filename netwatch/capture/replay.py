"""The `replay` backend: a `FlowSource` over recorded connections (a flow log or a list).

It is a feature (`--flows F.jsonl`, re-running analysis on what `netwatch capture`
wrote) and the test double for everything that consumes a `FlowSource` (STYLE §5):
`ReplaySource.from_batches` scripts exactly what each `drain()` returns.

Records are returned as written: a capture log holds one record per flow per drain
interval (deltas), and the consumer adds them up — replay must not merge them, or a
replayed log would not look like the live source it recorded.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import IO

from netwatch.capture.flowlog import FlowLogIssue, FlowLogReader, open_binary, source_name
from netwatch.core.flow import Connection


class ReplaySource:
    """Delivers recorded connections through `drain()`, then reports `finished`.

    By default the first drain returns everything (what `FlowSource` promises for file
    sources); with `batch_size` each drain returns at most that many records, so a huge
    log streams through in bounded memory.
    """

    def __init__(
        self,
        records: Iterable[Connection] | None = None,
        *,
        batches: Iterable[Sequence[Connection]] | None = None,
        batch_size: int | None = None,
        reader: FlowLogReader | None = None,
        stream: IO[bytes] | None = None,
    ) -> None:
        """Prefer the `from_*` constructors; this one takes exactly one of the inputs."""
        if (records is None) == (batches is None):
            raise ValueError("give exactly one of records or batches")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        self._records: Iterator[Connection] | None = None if records is None else iter(records)
        self._batches: Iterator[Sequence[Connection]] | None = (
            None if batches is None else iter(batches)
        )
        self._batch_size = batch_size
        self._reader = reader
        self._stream = stream
        self._finished = False

    @classmethod
    def from_file(
        cls, path: str | Path, *, strict: bool = False, batch_size: int | None = None
    ) -> ReplaySource:
        """Stream a flow log (`-` is stdin). Bad lines end up in `issues` (fatal if strict).

        Raises `FlowLogError` at once when the file cannot be opened; with `strict`, from
        the `drain()` that reaches the first bad line.
        """
        stream = open_binary(path)
        reader = FlowLogReader(stream, source=source_name(path), strict=strict)
        return cls(reader, batch_size=batch_size, reader=reader, stream=stream)

    @classmethod
    def from_connections(
        cls, conns: Iterable[Connection], *, batch_size: int | None = None
    ) -> ReplaySource:
        """Replay in-memory connections (batched like a file when `batch_size` is set)."""
        return cls(conns, batch_size=batch_size)

    @classmethod
    def from_batches(cls, batches: Iterable[Sequence[Connection]]) -> ReplaySource:
        """Each `drain()` returns the next batch verbatim: a scripted live source for tests."""
        return cls(batches=batches)

    def drain(self) -> Sequence[Connection]:
        if self._finished:
            return []
        if self._batches is not None:
            batch = next(self._batches, None)
            if batch is None:
                self._finish()
                return []
            return list(batch)
        assert self._records is not None
        if self._batch_size is None:
            out = list(self._records)
            self._finish()
            return out
        out = list(islice(self._records, self._batch_size))
        if len(out) < self._batch_size:
            self._finish()
        return out

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def issues(self) -> Sequence[FlowLogIssue]:
        """Problems of the lines skipped so far (a file source; empty otherwise)."""
        return () if self._reader is None else tuple(self._reader.issues)

    @property
    def skipped_lines(self) -> int:
        return 0 if self._reader is None else self._reader.skipped_lines

    def _finish(self) -> None:
        self._finished = True
        self.close()

    def close(self) -> None:
        """Close the file; a closed source is finished (what was not drained is dropped)."""
        self._finished = True
        if self._stream is not None and self._stream is not sys.stdin.buffer:
            self._stream.close()
        self._stream = None
