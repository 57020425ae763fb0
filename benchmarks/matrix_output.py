"""Streaming validation of `netwatch policy matrix -o json` output files.

Why streaming: at 5,000 pods one port's output holds 25 million pairs (about 2.5 GB of
JSON); `json.load` on that needs well over 10 GB in the benchmark process. This reader
parses the top-level object itself and decodes the `pairs` array in batches with the
stdlib C decoder, so memory stays at one read buffer plus an n² bitmap, and every byte
is still parsed as JSON (a malformed file fails here, not silently).

Checks (DESIGN §4): the header echoes port and protocol; every pair has string `src`
and `dst` and a boolean `allowed`; each ordered pair of the expected pods occurs exactly
once and nothing else occurs; a pod's pair with itself is allowed (§3.7).
"""

from __future__ import annotations

import codecs
import json
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import Any, BinaryIO

_CHUNK = 8 << 20
_WS = " \t\r\n"
_MAX_ERRORS = 10
_decoder = json.JSONDecoder()


@dataclass
class MatrixCheck:
    """What one output file contained, and everything wrong with it."""

    pairs: int = 0
    allowed: int = 0
    header: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def error(self, message: str) -> None:
        if len(self.errors) < _MAX_ERRORS:
            self.errors.append(message)


class _Reader:
    """A text window over a file: `buf[pos:]` is unread; `more()` appends a chunk."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.buf = ""
        self.pos = 0
        self.eof = False
        self.window = 0
        """Incremented by each `more()`: a failed batch is not retried on the same window."""
        self._utf8 = codecs.getincrementaldecoder("utf-8")()

    def more(self) -> bool:
        """Append the next chunk to the window; False at end of file."""
        if self.eof:
            return False
        data = self.stream.read(_CHUNK)
        if not data:
            self.eof = True
            text = self._utf8.decode(b"", final=True)  # raises on a truncated sequence
            if not text:
                return False
        else:
            text = self._utf8.decode(data)
        self.buf = self.buf[self.pos :] + text
        self.pos = 0
        self.window += 1
        return True

    def peek(self) -> str:
        """The next non-whitespace character ('' at end of file), not consumed."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in _WS:
                self.pos += 1
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self.more():
                return ""

    def expect(self, char: str) -> None:
        got = self.peek()
        if got != char:
            raise ValueError(f"expected {char!r}, found {got or 'end of file'!r}")
        self.pos += 1

    def value(self) -> Any:
        """One complete JSON value (reading more until it is whole)."""
        self.peek()
        while True:
            try:
                val, end = _decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError:
                if self.more():
                    continue
                raise
            # A number at the window's edge may continue in the next chunk.
            if end == len(self.buf) and not self.eof and self.more():
                continue
            self.pos = end
            return val


class _PairCounter:
    """Per-batch checks; a bytearray of n² cells catches duplicates and strangers."""

    def __init__(self, pods: list[str], check: MatrixCheck) -> None:
        self.index = {p: i for i, p in enumerate(pods)}
        self.n = len(pods)
        self.seen = bytearray(self.n * self.n)
        self.check = check

    def add(self, items: list[Any]) -> None:
        check = self.check
        if not all(type(it) is dict for it in items):
            check.error("a pairs entry is not an object")
            return
        try:
            srcs = list(map(itemgetter("src"), items))
            dsts = list(map(itemgetter("dst"), items))
            flags = list(map(itemgetter("allowed"), items))
        except KeyError as exc:
            check.error(f"a pair lacks {exc}")
            return
        if set(map(type, flags)) - {bool}:
            check.error("a pair's `allowed` is not a boolean")
        check.pairs += len(items)
        check.allowed += flags.count(True)
        index, n, seen = self.index, self.n, self.seen
        for src, dst, ok in zip(srcs, dsts, flags, strict=True):
            i, j = index.get(src), index.get(dst)
            if i is None or j is None:
                check.error(f"unexpected pod in pair {src!r} -> {dst!r}")
                continue
            k = i * n + j
            if seen[k]:
                check.error(f"duplicate pair {src} -> {dst}")
            seen[k] = 1
            if i == j and ok is not True:
                check.error(f"{src} may not reach itself (a pod cannot block itself)")

    def finish(self) -> None:
        missing = self.n * self.n - sum(self.seen)
        if missing:
            self.check.error(f"{missing} of {self.n * self.n} ordered pairs are missing")


def _pairs(reader: _Reader, counter: _PairCounter) -> None:
    """Decode the array in batches: cut after the last `}` and parse `[...]` in one go.

    A batch that does not parse (the cut fell inside a string or a nested object, or the
    window holds the array's end) falls back to one element at a time until the next
    window, so the worst case is per-element speed, never a wrong parse.
    """
    reader.expect("[")
    if reader.peek() == "]":
        reader.pos += 1
        return
    failed_window = -1
    while True:
        start = reader.pos
        items = None
        if reader.window != failed_window:
            end = reader.buf.rfind("}", start)
            if end > start:
                try:
                    items = json.loads("[" + reader.buf[start : end + 1] + "]")
                except json.JSONDecodeError:
                    failed_window = reader.window
                else:
                    reader.pos = end + 1
        if items is None:
            items = [reader.value()]
        counter.add(items)
        if reader.peek() == "]":
            reader.pos += 1
            return
        reader.expect(",")


def check_matrix_file(path: Path, *, pods: list[str], port: int, protocol: str) -> MatrixCheck:
    """Parse and check one output file against the pods that must be in it."""
    check = MatrixCheck()
    counter = _PairCounter(pods, check)
    try:
        with path.open("rb") as stream:
            reader = _Reader(stream)
            reader.expect("{")
            saw_pairs = False
            while reader.peek() != "}":
                key = reader.value()
                if not isinstance(key, str):
                    raise ValueError("object key is not a string")
                reader.expect(":")
                if key == "pairs":
                    saw_pairs = True
                    _pairs(reader, counter)
                else:
                    check.header[key] = reader.value()
                if reader.peek() == ",":
                    reader.pos += 1
            reader.expect("}")
            if reader.peek() != "":
                raise ValueError("data after the top-level object")
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        check.error(f"not valid JSON: {exc}")
        return check
    if not saw_pairs:
        check.error("no `pairs` array")
    if check.header.get("port") != port:
        check.error(f"header port {check.header.get('port')!r}, expected {port}")
    if str(check.header.get("protocol", "")).upper() != protocol.upper():
        check.error(f"header protocol {check.header.get('protocol')!r}, expected {protocol}")
    counter.finish()
    return check
