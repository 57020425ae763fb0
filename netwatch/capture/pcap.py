"""The `pcap` backend: a `FlowSource` over a pcap or pcapng file (optionally gzipped).

scapy's `RawPcapReader` does the framing (it picks the pcapng reader by the magic) and
`packets.FlowAggregator` the counting, one record at a time, so a capture of any size
streams through in memory bounded by its number of flows.

scapy stops quietly at the first record it cannot read, as if the file ended there. A
user must not mistake a damaged capture for a quiet network, so this module checks the
framing itself: it watches the file position around every record, sanity-checks classic
record headers and bounds every read by what the file holds (a garbled length would
otherwise make Python allocate gigabytes). On damage, the connections read before the
break are still returned, with a warning and `PcapSource.error` naming the file and the
byte offset (of the decompressed stream, for `.gz`) where it broke; `strict` raises.
"""

from __future__ import annotations

import gzip
import logging
import os
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, cast

from scapy.error import Scapy_Exception
from scapy.utils import RawPcapNgReader, RawPcapReader

from netwatch.capture.packets import FlowAggregator, ListeningOracle
from netwatch.core.flow import Connection

log = logging.getLogger(__name__)

_MAX_READ = 64 << 20
"""No single pcap record or pcapng block is larger; bounds reads of gzipped files."""
_MAX_CAPLEN = 262_144
"""tcpdump's largest snapshot length; a classic record claiming more is corrupt."""


class PcapError(Exception):
    """A capture file that could not be read (`offset` None) or broke at `offset`."""

    def __init__(
        self, path: str, *, offset: int | None, reason: str, decompressed: bool = False
    ) -> None:
        self.path, self.offset, self.reason = path, offset, reason
        where = f"{path}: "
        if offset is not None:
            where += f"corrupt at byte {offset}{' of the decompressed data' * decompressed}: "
        super().__init__(where + reason)


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...
    def close(self) -> None: ...


class _BoundedStream:
    """A read-only file wrapper that knows its position and never over-reads.

    Reads are capped at what is left in the file (plain files) and at `_MAX_READ`, and a
    decompression error is remembered with its offset before scapy swallows it.
    """

    def __init__(
        self, inner: _Readable, *, size: int | None, name: str, raw: _Readable | None = None
    ) -> None:
        self._inner, self._size, self.name, self._raw = inner, size, name, raw
        self.decompressed = raw is not None
        self.pos = 0
        self.failure: tuple[int, str] | None = None

    def read(self, n: int = -1) -> bytes:
        limit = _MAX_READ if n is None or n < 0 else min(n, _MAX_READ)
        if self._size is not None:
            limit = max(0, min(limit, self._size - self.pos))
        try:
            data = self._inner.read(limit)
        except (EOFError, OSError, zlib.error) as exc:
            self.failure = (self.pos, str(exc) or type(exc).__name__)
            raise
        self.pos += len(data)
        return data

    def tell(self) -> int:
        return self.pos

    def close(self) -> None:
        self._inner.close()
        if self._raw is not None:  # GzipFile leaves the file it was given open
            self._raw.close()


class _ScapyWarnings(logging.Filter):
    """Collects (and silences) scapy's own complaints while a file is read."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.messages.append(record.getMessage())
        return False


def _open(path: str) -> _BoundedStream:
    try:
        raw = open(path, "rb")  # noqa: SIM115 - owned by the returned stream
    except OSError as exc:
        raise PcapError(path, offset=None, reason=exc.strerror or str(exc)) from exc
    if raw.peek(2)[:2] == b"\x1f\x8b":
        return _BoundedStream(gzip.GzipFile(fileobj=raw), size=None, name=path, raw=raw)
    return _BoundedStream(raw, size=os.fstat(raw.fileno()).st_size, name=path)


class PcapSource:
    """Connections in a capture file; the first `drain()` reads it all (see module doc).

    `interface` labels records whose file does not name the interface (classic pcap);
    pcapng interface names win. `listening` is the orientation oracle of `packets`.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        node: str | None = None,
        interface: str | None = None,
        listening: ListeningOracle | None = None,
        strict: bool = False,
    ) -> None:
        self.path = str(path)
        self._interface = interface
        self._strict = strict
        self.aggregator = FlowAggregator(listening=listening, node=node)
        self.error: PcapError | None = None
        self.records = 0
        """Packet records read from the file."""
        self._stream = _open(self.path)
        try:
            self._reader: Any = RawPcapReader(cast(Any, self._stream))  # scapy types it as a path
        except Scapy_Exception as exc:
            self._stream.close()
            reason = "empty file" if self._stream.pos == 0 else str(exc).rstrip("!. ")
            raise PcapError(
                self.path, offset=None, reason=f"not a pcap or pcapng capture ({reason})"
            ) from None
        self._finished = False

    @property
    def finished(self) -> bool:
        return self._finished

    def drain(self) -> Sequence[Connection]:
        if self._finished:
            return []
        warnings = _ScapyWarnings()
        scapy_log = logging.getLogger("scapy.runtime")
        scapy_log.addFilter(warnings)
        try:
            self._read_all(warnings)
        finally:
            scapy_log.removeFilter(warnings)
            self.close()
        conns = self.aggregator.drain()
        if self.error is not None:
            if self._strict:
                raise self.error
            log.warning("%s; returning the %d connections read before it", self.error, len(conns))
        return conns

    def _read_all(self, warnings: _ScapyWarnings) -> None:
        ng = isinstance(self._reader, RawPcapNgReader)
        stream, add = self._stream, self.aggregator.add_frame
        while True:
            start = stream.pos
            try:
                data, meta = next(self._reader)
            except StopIteration:
                self._check_end(start, warnings)
                return
            except Scapy_Exception as exc:  # e.g. a later, damaged section header
                self.error = self._broken(start, str(exc))
                return
            if ng:
                timestamp = ((meta.tshigh << 32) | meta.tslow) / meta.tsresol
                linktype = meta.linktype
                interface = meta.ifname.decode(errors="replace") if meta.ifname else None
            else:
                reason = self._classic_record_problem(meta, consumed=stream.pos - start)
                if reason is not None:
                    self.error = self._broken(start, reason)
                    return
                timestamp = meta.sec + meta.usec / (1e9 if self._reader.nano else 1e6)
                linktype, interface = self._reader.linktype, None
            self.records += 1
            add(
                data, linktype=linktype, timestamp=timestamp, interface=interface or self._interface
            )

    def _classic_record_problem(self, meta: Any, *, consumed: int) -> str | None:
        """Why a classic pcap record read by scapy cannot be trusted, if it cannot."""
        limit = max(self._reader.snaplen, _MAX_CAPLEN)
        if meta.caplen > limit:
            return f"record header claims {meta.caplen} captured bytes (limit {limit})"
        if meta.wirelen < meta.caplen:
            return (
                f"record header claims {meta.caplen} captured of {meta.wirelen} bytes on the wire"
            )
        if meta.usec >= (1_000_000_000 if self._reader.nano else 1_000_000):
            return f"record header has an impossible sub-second timestamp {meta.usec}"
        if consumed < 16 + meta.caplen:
            return (
                f"record truncated: header announces {meta.caplen} bytes, "
                f"the file ends after {consumed - 16}"
            )
        return None

    def _check_end(self, start: int, warnings: _ScapyWarnings) -> None:
        """Tell a clean end of file from scapy giving up on a damaged record."""
        stream = self._stream
        failure = stream.failure
        if failure is None and stream.pos == start:
            try:
                if stream.read(1) == b"":
                    return  # clean end: nothing was consumed and nothing is left
            except (EOFError, OSError, zlib.error):
                failure = stream.failure
        if failure is not None:
            offset, reason = failure[0], f"stream unreadable ({failure[1]})"
        elif stream.pos > start:
            kind = "block" if isinstance(self._reader, RawPcapNgReader) else "record"
            offset, reason = start, f"{kind} truncated or malformed"
        else:
            offset, reason = start, "data after the last readable record is not a record"
        detail = "; ".join(dict.fromkeys(m for m in warnings.messages if m))
        if detail:
            reason = f"{reason} (scapy: {detail})"
        self.error = self._broken(offset, reason)

    def _broken(self, offset: int, reason: str) -> PcapError:
        return PcapError(
            self.path, offset=offset, reason=reason, decompressed=self._stream.decompressed
        )

    def close(self) -> None:
        """Idempotent; a closed source is finished."""
        self._finished = True
        self._stream.close()
