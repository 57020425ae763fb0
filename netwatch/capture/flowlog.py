"""Flow logs: `Connection` records as JSON Lines (DESIGN §5), written and read here only.

Writing is deterministic — fixed key order, Python's shortest float repr, no NaN — so a
flow log is a golden file. Reading validates every line against the published schema
(`netwatch/schemas/flow.schema.json`) plus the cross-field rules a schema cannot say
(`last_seen >= first_seen`, one address family per record). A bad line is skipped and
reported as `FILE:LINE: FIELD: problem` — one broken line must not cost the user the
other million — unless `strict` asks for the first problem to be fatal. Blank lines are
ignored. Enriched records (`client`, `server`, `verdict`) validate too; reading returns
their `Connection` part.

Neighbours: `replay` streams a log as a `FlowSource`; `netwatch capture` writes with
`write_connections`; analysis writes enriched records with `connection_to_record`.
"""

from __future__ import annotations

import ipaddress
import json
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import IO, Any, TextIO

import jsonschema
from jsonschema.exceptions import ValidationError, best_match

from netwatch.core.flow import Connection, Orientation
from netwatch.core.model import Protocol

FIELD_ORDER: tuple[str, ...] = (
    "client_ip",
    "client_port",
    "server_ip",
    "server_port",
    "protocol",
    "first_seen",
    "last_seen",
    "packets_out",
    "bytes_out",
    "packets_in",
    "bytes_in",
    "orientation",
    "node",
    "interface",
)
"""Keys of every written record, in order; `service_ip`/`service_port` follow when set."""
ENDPOINT_FIELDS: tuple[str, ...] = (
    "kind",
    "namespace",
    "name",
    "workload",
    "workload_kind",
    "service",
)
"""Keys of an enriched `client`/`server` object, in order (missing ones written as null)."""


# --- writing -----------------------------------------------------------------------------


def connection_to_record(
    conn: Connection,
    *,
    client: Mapping[str, str | None] | None = None,
    server: Mapping[str, str | None] | None = None,
    verdict: str | None = None,
) -> dict[str, object]:
    """The JSON object for one record, keys in `FIELD_ORDER` then the enrichment."""
    record: dict[str, object] = {
        "client_ip": conn.client_ip,
        "client_port": conn.client_port,
        "server_ip": conn.server_ip,
        "server_port": conn.server_port,
        "protocol": conn.protocol.value,
        "first_seen": conn.first_seen,
        "last_seen": conn.last_seen,
        "packets_out": conn.packets_out,
        "bytes_out": conn.bytes_out,
        "packets_in": conn.packets_in,
        "bytes_in": conn.bytes_in,
        "orientation": conn.orientation.value,
        "node": conn.node,
        "interface": conn.interface,
    }
    if conn.service_ip is not None:
        record["service_ip"] = conn.service_ip
        record["service_port"] = conn.service_port
    for key, endpoint in (("client", client), ("server", server)):
        if endpoint is not None:
            record[key] = {field: endpoint.get(field) for field in ENDPOINT_FIELDS}
    if verdict is not None:
        record["verdict"] = verdict
    return record


def format_record(record: Mapping[str, object]) -> str:
    """One JSON Lines line (no newline); raises ValueError for NaN/infinite numbers."""
    return json.dumps(record, allow_nan=False)


def write_connections(conns: Iterable[Connection], out: TextIO) -> int:
    """Append one line per connection to `out` and flush (live capture is piped); count."""
    count = 0
    for conn in conns:
        out.write(format_record(connection_to_record(conn)))
        out.write("\n")
        count += 1
    out.flush()
    return count


# --- reading -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FlowLogIssue:
    """One problem in one line; `field` is a dotted path, None for a line-level problem."""

    source: str
    line: int
    field: str | None
    message: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}"
        return (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )


class FlowLogError(ValueError):
    """A flow log that cannot be used: strict mode's first bad line, or an unreadable file."""

    def __init__(self, issues: Iterable[FlowLogIssue], *, text: str | None = None) -> None:
        self.issues = tuple(issues)
        super().__init__(text or "; ".join(str(i) for i in self.issues))


@cache
def schema() -> dict[str, Any]:
    """The published flow-record JSON Schema (draft 2020-12), loaded once."""
    text = resources.files("netwatch").joinpath("schemas/flow.schema.json").read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


@cache
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(
        schema(), format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"duplicate field {key!r}")
        seen[key] = value
    return seen


def _describe(error: ValidationError) -> tuple[str | None, str]:
    """(field, message) in the user's terms for one schema violation."""
    path = ".".join(str(p) for p in error.absolute_path)
    if error.validator == "required":
        missing = error.message.split("'")[1]
        return (f"{path}.{missing}" if path else missing), "required field is missing"
    if error.validator == "additionalProperties":
        known = error.schema.get("properties", {}) if isinstance(error.schema, dict) else {}
        extra = sorted(set(error.instance) - set(known)) if isinstance(error.instance, dict) else []
        if not extra:
            return path or None, error.message
        return (f"{path}.{extra[0]}" if path else extra[0]), "unknown field"
    if error.validator == "dependentRequired":
        return "service_ip", "required when service_port is set"
    if error.validator in ("anyOf", "oneOf"):
        if path.endswith("_ip") and isinstance(error.instance, str):
            return path, f"{error.instance!r} is not an IPv4 or IPv6 address"
        inner = best_match(error.context or ())
        if inner is not None:
            return path or None, inner.message
    return path or None, error.message


def _cross_field(record: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Rules the schema cannot express; only called on schema-valid records."""
    problems: list[tuple[str, str]] = []
    if record["last_seen"] < record["first_seen"]:
        problems.append(
            ("last_seen", f"{record['last_seen']} is before first_seen {record['first_seen']}")
        )
    client = ipaddress.ip_address(record["client_ip"])
    server = ipaddress.ip_address(record["server_ip"])
    if client.version != server.version:
        problems.append(("server_ip", f"IPv{server.version} but client_ip is IPv{client.version}"))
    return problems


def record_to_connection(record: Mapping[str, Any]) -> Connection:
    """A validated record as a `Connection` (the enrichment is not part of it)."""
    service_port = record.get("service_port")
    return Connection(
        client_ip=record["client_ip"],
        client_port=int(record["client_port"]),
        server_ip=record["server_ip"],
        server_port=int(record["server_port"]),
        protocol=Protocol(record["protocol"]),
        first_seen=float(record["first_seen"]),
        last_seen=float(record["last_seen"]),
        packets_out=int(record["packets_out"]),
        bytes_out=int(record["bytes_out"]),
        packets_in=int(record["packets_in"]),
        bytes_in=int(record["bytes_in"]),
        orientation=Orientation(record["orientation"]),
        node=record.get("node"),
        interface=record.get("interface"),
        service_ip=record.get("service_ip"),
        service_port=None if service_port is None else int(service_port),
    )


def parse_line(line: bytes | str, *, source: str, number: int) -> Connection | list[FlowLogIssue]:
    """One line → a Connection, or every problem found in it."""

    def issue(field: str | None, message: str) -> list[FlowLogIssue]:
        return [FlowLogIssue(source=source, line=number, field=field, message=message)]

    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            return issue(None, f"not UTF-8 (byte {exc.start + 1} of the line)")
    line = line.rstrip("\r\n")
    try:
        record = json.loads(line, object_pairs_hook=_unique_keys, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:  # its "line 1" would confuse: we are one line
        at = "" if exc.msg.endswith(" at") else " at"
        return issue(None, f"not valid JSON: {exc.msg}{at} column {exc.colno}")
    except ValueError as exc:  # from the hooks: NaN, duplicate keys
        return issue(None, f"not valid JSON: {exc}")
    if not isinstance(record, dict):
        return issue(None, f"expected a JSON object, got {type(record).__name__}")
    described = sorted(
        (_describe(e) for e in _validator().iter_errors(record)), key=lambda fm: fm[0] or ""
    )
    found = [FlowLogIssue(source, number, field, message) for field, message in described]
    if not found:
        found = [FlowLogIssue(source, number, f, m) for f, m in _cross_field(record)]
    return found or record_to_connection(record)


class FlowLogReader:
    """Streams the valid records of a flow log and collects the problems of the rest.

    Iterate it once. `issues` keeps the first `max_issues` problems (a garbage file must
    not exhaust memory); `skipped_lines` counts every rejected line.
    """

    def __init__(
        self,
        lines: Iterable[bytes | str],
        *,
        source: str,
        strict: bool = False,
        max_issues: int = 1000,
    ) -> None:
        self._lines = lines
        self.source = source
        self.strict = strict
        self.max_issues = max_issues
        self.issues: list[FlowLogIssue] = []
        self.skipped_lines = 0
        self.records = 0

    def __iter__(self) -> Iterator[Connection]:
        for number, line in enumerate(self._lines, start=1):
            text = _strip_bom(line) if number == 1 else line
            if not text.strip():
                continue
            parsed = parse_line(text, source=self.source, number=number)
            if isinstance(parsed, Connection):
                self.records += 1
                yield parsed
                continue
            if self.strict:
                raise FlowLogError(parsed)
            self.skipped_lines += 1
            self.issues.extend(parsed[: max(0, self.max_issues - len(self.issues))])


def _strip_bom(line: bytes | str) -> bytes | str:
    """A UTF-8 byte-order mark (Windows editors) is not part of the first record."""
    if isinstance(line, bytes):
        return line.removeprefix(b"\xef\xbb\xbf")
    return line.removeprefix("\ufeff")


@dataclass(frozen=True, slots=True)
class FlowLog:
    """A whole flow log read into memory."""

    connections: tuple[Connection, ...]
    issues: tuple[FlowLogIssue, ...]
    skipped_lines: int


def open_binary(path: str | Path) -> IO[bytes]:
    """Open a flow log for reading; `-` is standard input. FlowLogError if unreadable."""
    if str(path) == "-":
        return sys.stdin.buffer
    try:
        return open(path, "rb")  # the caller (a reader or a source) closes it
    except OSError as exc:
        issue = FlowLogIssue(source=str(path), line=0, field=None, message=exc.strerror or "")
        raise FlowLogError([issue], text=f"{path}: {exc.strerror}") from exc


def source_name(path: str | Path) -> str:
    """How a flow log is named in messages: as the user wrote it; stdin as `<stdin>`."""
    return "<stdin>" if str(path) == "-" else str(path)


def read_flow_log(path: str | Path, *, strict: bool = False) -> FlowLog:
    """Read a whole flow log (`-` for stdin); problems are returned, not raised, unless strict."""
    stream = open_binary(path)
    try:
        reader = FlowLogReader(stream, source=source_name(path), strict=strict)
        connections = tuple(reader)
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
    return FlowLog(connections, tuple(reader.issues), reader.skipped_lines)
