"""`--flows FILE` for the offline commands: a flow log (JSON Lines) or a capture file.

`FlowFile` tells the two apart by content (pcap/pcapng magic, also inside gzip; a
`.pcap`/`.pcapng`/`.cap` name is trusted), reads flow logs with `flowlog`'s exact rules
and pcaps with `PcapSource`, and applies an optional time window.

Flow logs are read on a fast path because analysis of a million records must not spend
a minute in JSON Schema validation: each line is decoded with the C JSON decoder and
checked field by field against what the schema accepts, with every valid address
remembered. Only a line the fast check cannot vouch for — any error, an enriched
record, a number written as `80.0`, a key repeated — goes through
`flowlog.parse_line`, which decides and words the problem (`FILE:LINE: FIELD: ...`).
So the fast path changes the speed, never the answer: it accepts a subset of what the
schema accepts, and the rest gets the full check.

`rows()` yields plain tuples (`FlowRow`) rather than `Connection` objects, so the hot
loop of analysis allocates one tuple per record; `connections()` is the same stream as
`Connection`s for code that wants them.
"""

from __future__ import annotations

import gzip
import ipaddress
import json
import math
import os
import sys
from collections.abc import Callable, Iterator
from operator import itemgetter
from pathlib import Path
from typing import IO, Any

from netwatch.capture.flowlog import (
    FIELD_ORDER,
    FlowLogError,
    FlowLogIssue,
    open_binary,
    parse_line,
    source_name,
)
from netwatch.core.flow import Connection, FlowRow, Orientation
from netwatch.core.model import Protocol

_PCAP_MAGICS = (
    b"\xd4\xc3\xb2\xa1",
    b"\xa1\xb2\xc3\xd4",
    b"\x4d\x3c\xb2\xa1",
    b"\xa1\xb2\x3c\x4d",
    b"\x0a\x0d\x0d\x0a",
)
_PCAP_SUFFIXES = (".pcap", ".pcapng", ".cap", ".pcap.gz", ".pcapng.gz")
_PROTOCOLS = {p.value: p for p in Protocol}
_ORIENTATIONS = frozenset(o.value for o in Orientation)
# The required keys are the written record's keys before `node`/`interface`.
_REQUIRED = frozenset(FIELD_ORDER[: FIELD_ORDER.index("node")])
_FAST_KEYS = _REQUIRED | {"node", "interface", "service_ip", "service_port"}
_N_REQUIRED = len(_REQUIRED)
_REQUIRED_GETTER = itemgetter(
    "client_ip",
    "server_ip",
    "client_port",
    "server_port",
    "protocol",
    "first_seen",
    "last_seen",
    "packets_out",
    "bytes_out",
    "packets_in",
    "bytes_in",
    "orientation",
)
_NUMBER = (int, float)
"""Keys the fast path handles; enriched records (client/server/verdict) take the slow one."""
_KNOWN_IPS_MAX = 1 << 20
PROGRESS_EVERY = 1 << 16
"""Lines between progress callbacks."""


class FlowInputError(Exception):
    """A flows file that cannot be used (unreadable, not a flow log or capture, or a bad
    line under `strict`): the CLI's exit 2."""


def _reject_constant(name: str) -> None:
    raise ValueError(name)


def is_capture_file(path: str) -> bool:
    """Whether `path` is a pcap/pcapng capture (possibly gzipped), by name or magic."""
    if path == "-":
        return False
    if path.lower().endswith(_PCAP_SUFFIXES):
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(4)
            if head[:2] == b"\x1f\x8b":
                f.seek(0)
                with gzip.GzipFile(fileobj=f) as gz:
                    head = gz.read(4)
    except (OSError, EOFError):
        return False  # the flow log reader reports it with the right words
    return head in _PCAP_MAGICS


class FlowFile:
    """The records of one `--flows` file within `[since, until]` (see the module doc).

    A record is in the window when it overlaps it: `last_seen >= since` and
    `first_seen <= until`. Counters: `records` read, `outside_window` of those dropped
    by the window, `skipped_lines` rejected (their problems in `issues`, the first
    `max_issues`). `warnings` carries non-fatal file-level problems (a damaged capture's
    offset). Iterate once.
    """

    def __init__(
        self,
        path: str,
        *,
        strict: bool = False,
        since: float | None = None,
        until: float | None = None,
        progress: Callable[[int], None] | None = None,
        max_issues: int = 1000,
    ) -> None:
        self.path = path
        self.strict = strict
        self.since = since
        self.until = until
        self.progress = progress
        self.max_issues = max_issues
        self.is_capture = is_capture_file(path)
        self.issues: list[FlowLogIssue] = []
        self.warnings: list[str] = []
        self.records = 0
        self.outside_window = 0
        self.skipped_lines = 0
        self._known_ips: dict[str, int] = {}
        """Address → IP version (0: invalid), so each distinct address is parsed once."""
        self.size: int | None = None
        """Bytes in the file when known (for a progress bar); None for stdin/gzip."""
        if path != "-":
            try:
                self.size = os.stat(path).st_size
            except OSError:
                self.size = None

    # ------------------------------------------------------------------ reading

    def rows(self) -> Iterator[FlowRow]:
        source = self._capture_rows() if self.is_capture else self._log_records()
        since, until = self.since, self.until
        lo = -math.inf if since is None else since
        hi = math.inf if until is None else until
        windowed = since is not None or until is not None
        for record in source:
            row = _conn_row(record) if isinstance(record, Connection) else record
            if windowed and not (row[5] >= lo and row[4] <= hi):
                self.outside_window += 1
                continue
            yield row

    def connections(self) -> Iterator[Connection]:
        """Like `rows()`, as `Connection`s (flow logs keep every field; see `_to_conn`)."""
        if self.is_capture:
            for conn in self._capture_connections():
                if self._in_window(conn.first_seen, conn.last_seen):
                    yield conn
            return
        for record in self._log_records(as_connections=True):
            assert isinstance(record, Connection)
            if self._in_window(record.first_seen, record.last_seen):
                yield record

    def _in_window(self, first: float, last: float) -> bool:
        ok = (self.since is None or last >= self.since) and (
            self.until is None or first <= self.until
        )
        if not ok:
            self.outside_window += 1
        return ok

    # ------------------------------------------------------------------ captures

    def _capture_connections(self) -> list[Connection]:
        from netwatch.capture.pcap import PcapError, PcapSource  # noqa: PLC0415 - scapy is slow

        try:
            source = PcapSource(self.path, strict=self.strict)
            conns = list(source.drain())
            source.close()
        except PcapError as exc:
            raise FlowInputError(str(exc)) from exc
        except OSError as exc:
            raise FlowInputError(f"{self.path}: {exc.strerror or exc}") from exc
        if source.error is not None:
            self.warnings.append(
                f"{source.error}; analysing the {len(conns)} connections read before it"
            )
        self.records = len(conns)
        return conns

    def _capture_rows(self) -> Iterator[FlowRow]:
        for c in self._capture_connections():
            yield _conn_row(c)

    # ------------------------------------------------------------------ flow logs

    def _open(self) -> IO[bytes]:
        try:
            stream = open_binary(self.path)
        except FlowLogError as exc:
            raise FlowInputError(str(exc)) from exc
        if stream is sys.stdin.buffer:
            return stream
        head = stream.read(2)
        stream.seek(0)
        if head == b"\x1f\x8b":
            stream.close()
            self.size = None
            return gzip.GzipFile(self.path, "rb")  # type: ignore[return-value]
        return stream

    def _log_records(self, *, as_connections: bool = False) -> Iterator[FlowRow | Connection]:
        """Fast rows where the fast check vouches for a line (Connections when asked),
        Connections from the exact reader otherwise. One loop, everything inlined: this
        is where a million records spend most of their time."""
        source = source_name(self.path)
        stream = self._open()
        # The C scanner itself: `decode` only wraps it with whitespace handling in Python.
        scan = json.JSONDecoder(parse_constant=_reject_constant).scan_once  # type: ignore[attr-defined]
        get, known = _REQUIRED_GETTER, self._known_ips
        protocols, orientations, fast_keys = _PROTOCOLS, _ORIENTATIONS, _FAST_KEYS
        progress, done, number = self.progress, 0, 0
        try:
            for line in stream:
                number += 1
                if progress is not None:
                    done += len(line)
                    if not number & (PROGRESS_EVERY - 1):
                        progress(done)
                row: FlowRow | None = None
                try:
                    text = line.decode()
                    d, end = scan(text, 0)
                    cip, sip, cport, sport, proto, first, last, po, bo, pi, bi, orient = get(d)
                    protocol = protocols.get(proto)
                    if (
                        type(cport) is int
                        and type(sport) is int
                        and type(po) is int
                        and type(bo) is int
                        and type(pi) is int
                        and type(bi) is int
                        and 0 <= cport <= 65535
                        and 0 <= sport <= 65535
                        and min(po, bo, pi, bi) >= 0
                        and type(first) in _NUMBER
                        and type(last) in _NUMBER
                        and 0 <= first <= last
                        and protocol is not None
                        and orient in orientations
                        and (end == len(text) or text[end:].isspace())
                        # Repeated keys (json keeps the last silently) change the count.
                        and line.count(b'":') == len(d)
                        and (len(d) == _N_REQUIRED or d.keys() <= fast_keys)
                        and (known.get(cip) or _ip_version(cip, known))
                        == (known.get(sip) or _ip_version(sip, known))
                        > 0
                    ):
                        service_ip = None if len(d) == _N_REQUIRED else _fast_optional(d, known)
                        if service_ip is not _REJECT:
                            row = (
                                cip,
                                sip,
                                sport,
                                protocol,
                                float(first),
                                float(last),
                                bo + bi,
                                po + pi,
                                service_ip,
                                cport,
                                orient == "heuristic",
                            )
                except (ValueError, TypeError, KeyError, StopIteration, UnicodeDecodeError):
                    row = None
                if row is not None:
                    self.records += 1
                    yield _dict_connection(d, row[3]) if as_connections else row
                    continue
                stripped = line.removeprefix(b"\xef\xbb\xbf") if number == 1 else line
                if not stripped.strip():
                    continue
                parsed = parse_line(stripped, source=source, number=number)
                if isinstance(parsed, Connection):
                    self.records += 1
                    yield parsed
                    continue
                if self.strict:
                    raise FlowInputError(f"{parsed[0]} (--strict)")
                self.skipped_lines += 1
                self.issues.extend(parsed[: max(0, self.max_issues - len(self.issues))])
        except OSError as exc:
            raise FlowInputError(f"{source}: {exc.strerror or exc}") from exc
        finally:
            if progress is not None:
                progress(done)
            if stream is not sys.stdin.buffer:
                stream.close()


_REJECT: Any = object()


def _fast_optional(d: dict[str, Any], known: dict[str, int]) -> Any:
    """The optional keys of a fast record: its `service_ip` (or None), else `_REJECT`."""
    for key in ("node", "interface"):
        value = d.get(key)
        if value is not None and (type(value) is not str or not value):
            return _REJECT
    service_ip = d.get("service_ip")
    service_port = d.get("service_port")
    if "service_port" in d and "service_ip" not in d:  # the schema's dependentRequired
        return _REJECT
    if service_ip is not None and (known.get(service_ip) or _ip_version(service_ip, known)) == 0:
        return _REJECT
    if service_port is not None and (
        service_ip is None or type(service_port) is not int or not 0 <= service_port <= 65535
    ):
        return _REJECT
    return service_ip


def _ip_version(text: object, known: dict[str, int]) -> int:
    """4 or 6 for a valid address (as the schema's formats decide), else 0."""
    if type(text) is not str or "%" in text:  # the schema's ipv6 format refuses scope ids
        return 0
    version = known.get(text)
    if version is None:
        try:
            version = ipaddress.ip_address(text).version
        except ValueError:
            version = 0
        if len(known) >= _KNOWN_IPS_MAX:
            known.clear()
        known[text] = version
    return version


def _conn_row(c: Connection) -> FlowRow:
    return (
        c.client_ip,
        c.server_ip,
        c.server_port,
        c.protocol,
        c.first_seen,
        c.last_seen,
        c.bytes_out + c.bytes_in,
        c.packets_out + c.packets_in,
        c.service_ip,
        c.client_port,
        c.orientation is Orientation.HEURISTIC,
    )


def _dict_connection(d: dict[str, Any], protocol: Protocol) -> Connection:
    """A record the fast check accepted, as a Connection (every field kept)."""
    return Connection(
        client_ip=d["client_ip"],
        client_port=d["client_port"],
        server_ip=d["server_ip"],
        server_port=d["server_port"],
        protocol=protocol,
        first_seen=float(d["first_seen"]),
        last_seen=float(d["last_seen"]),
        packets_out=d["packets_out"],
        bytes_out=d["bytes_out"],
        packets_in=d["packets_in"],
        bytes_in=d["bytes_in"],
        orientation=Orientation(d["orientation"]),
        node=d.get("node"),
        interface=d.get("interface"),
        service_ip=d.get("service_ip"),
        service_port=d.get("service_port"),
    )


def read_flows(path: str | Path, **kwargs: Any) -> FlowFile:
    """Shorthand: `FlowFile(str(path), ...)`."""
    return FlowFile(str(path), **kwargs)
