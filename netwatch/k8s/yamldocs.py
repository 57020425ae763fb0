"""Fast, safe YAML documents for snapshot loading, and recovery around syntax errors.

Why not just `yaml.load_all(..., Loader=CSafeLoader)`: its libyaml half is quick, but
composing a node graph and then constructing Python objects from it runs in Python and
takes about 1 s per 1.5 MB — a 5,000-pod dump would take several seconds. Kubernetes
dumps use only plain mappings, sequences and scalars, so `load_all` here builds them
directly from libyaml's event stream and resolves each distinct plain scalar once with
SafeLoader's own resolvers and constructors (same YAML 1.1 results: `yes` is true, `010`
is 8). Anything unusual — merge keys, explicit tags, complex keys — falls back to the
full safe loader, so results never differ, only speed does.

Timestamps stay strings in both paths: nothing reads them, building datetimes is slow,
and JSON input has strings there anyway.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.events import (
    AliasEvent,
    DocumentEndEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)
from yaml.nodes import ScalarNode

_CParser: Any
try:
    from yaml._yaml import CParser as _CParser
except ImportError:  # PyYAML built without libyaml
    _CParser = None

_DROPPED_TAGS = {"tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:value"}
_STR = "tag:yaml.org,2002:str"
_SIMPLE_TAGS = {_STR, "tag:yaml.org,2002:int", "tag:yaml.org,2002:float",
                "tag:yaml.org,2002:bool", "tag:yaml.org,2002:null"}  # fmt: skip
_COLLECTION_TAGS = {None, "!", "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"}


def _make_loader() -> Any:
    base: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    resolvers = {
        first: [(tag, rx) for tag, rx in entries if tag not in _DROPPED_TAGS]
        for first, entries in base.yaml_implicit_resolvers.items()
    }
    return type("SnapshotLoader", (base,), {"yaml_implicit_resolvers": resolvers})


SAFE_LOADER: Any = _make_loader()
"""SafeLoader (libyaml-backed when available) minus timestamp and `=` resolution."""
_RESOLVERS: dict[str, list[tuple[str, re.Pattern[str]]]] = SAFE_LOADER.yaml_implicit_resolvers
_CONSTRUCTOR = SafeConstructor()
_MISSING = object()
_CACHE_LIMIT = 200_000


class _Unsupported(Exception):
    """A feature the event builder leaves to the full loader."""


def load_all(data: bytes | str) -> list[Any]:
    """Every document of a YAML stream (`None` for empty ones); raises `yaml.YAMLError`."""
    if _CParser is not None:
        try:
            return _EventBuilder().build(data)
        except _Unsupported:
            pass
    return list(yaml.load_all(data, Loader=SAFE_LOADER))


def load_one(text: str) -> Any:
    """One document, for re-reading a stream piece by piece after a syntax error."""
    docs = load_all(text)
    return docs[0] if docs else None


class _EventBuilder:
    """Builds Python values from libyaml events, as SafeLoader would for plain YAML."""

    def __init__(self) -> None:
        self.plain: dict[str, Any] = {}

    def scalar(self, event: Any) -> Any:
        tag = event.tag
        if tag is None or tag == "!":
            if not event.implicit[0]:
                return event.value  # quoted: always a string
            value = event.value
            found = self.plain.get(value, _MISSING)
            if found is _MISSING:
                found = self._resolve_plain(value)
                if len(self.plain) < _CACHE_LIMIT:
                    self.plain[value] = found
            return found
        if tag not in _SIMPLE_TAGS:
            raise _Unsupported(tag)
        return _construct(tag, event.value)

    @staticmethod
    def _resolve_plain(value: str) -> Any:
        for tag, regexp in _RESOLVERS.get(value[:1], ()):
            if regexp.match(value):
                if tag not in _SIMPLE_TAGS:
                    raise _Unsupported(tag)  # `<<` merge keys
                return _construct(tag, value)
        return value

    def build(self, data: bytes | str) -> list[Any]:
        parser = _CParser(data)
        try:
            return self._run(parser)
        finally:
            parser.dispose()

    def _run(self, parser: Any) -> list[Any]:
        docs: list[Any] = []
        anchors: dict[str, Any] = {}
        stack: list[Any] = []  # open collections
        keys: list[Any] = []  # per open collection: the pending mapping key
        root: Any = None
        get_event = parser.get_event
        while True:
            event = get_event()
            cls = event.__class__
            if cls is ScalarEvent:
                value = self.scalar(event)
            elif cls is MappingStartEvent or cls is SequenceStartEvent:
                if event.tag not in _COLLECTION_TAGS:
                    raise _Unsupported(event.tag)
                value = {} if cls is MappingStartEvent else []
            elif cls is MappingEndEvent or cls is SequenceEndEvent:
                stack.pop()
                keys.pop()
                continue
            elif cls is AliasEvent:
                if event.anchor not in anchors:
                    raise _Unsupported("undefined alias")  # the full loader says where
                value = anchors[event.anchor]
            elif cls is DocumentEndEvent:
                docs.append(root)
                root = None
                anchors.clear()
                continue
            elif cls is StreamEndEvent:
                return docs
            else:  # stream/document start
                continue
            if cls is not AliasEvent and event.anchor is not None:
                anchors[event.anchor] = value
            if not stack:
                root = value
            else:
                top = stack[-1]
                if top.__class__ is list:
                    top.append(value)
                elif keys[-1] is _MISSING:
                    if value.__class__ is dict or value.__class__ is list:
                        raise _Unsupported("complex key")
                    keys[-1] = value
                else:
                    top[keys[-1]] = value
                    keys[-1] = _MISSING
            if cls is MappingStartEvent or cls is SequenceStartEvent:
                stack.append(value)
                keys.append(_MISSING)


def _construct(tag: str, value: str) -> Any:
    if tag == _STR:
        return value
    return _CONSTRUCTOR.yaml_constructors[tag](_CONSTRUCTOR, ScalarNode(tag, value))


# YAML forbids `---`/`...` at column 0 inside content, so these lines always delimit
# documents; used only to recover the documents around a syntax error.
_DOC_START = re.compile(r"^---(?:[ \t]|$)")
_DOC_END = re.compile(r"^\.\.\.(?:[ \t]|$)")


def split_documents(text: str) -> list[tuple[int, str]]:
    """Cut a YAML stream at document markers: (0-based first line, text) per document.

    A stretch holding only blanks, comments, directives or `...` is not a document
    (`load_all` yields none for it), so numbering matches the parser's.
    """
    chunks: list[tuple[int, list[str]]] = [(0, [])]
    for lineno, line in enumerate(text.splitlines(keepends=True)):
        if _DOC_START.match(line):
            chunks.append((lineno, [line]))
        elif _DOC_END.match(line):
            chunks[-1][1].append(line)
            chunks.append((lineno + 1, []))
        else:
            chunks[-1][1].append(line)
    docs: list[tuple[int, str]] = []
    for first, lines in chunks:
        explicit = bool(lines) and _DOC_START.match(lines[0]) is not None
        if explicit or any(_is_content(line) for line in lines):
            docs.append((first, "".join(lines)))
    return docs


def _is_content(line: str) -> bool:
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith(("#", "%")) and not _DOC_END.match(line)


def syntax_error_message(exc: yaml.YAMLError, *, first_line: int = 0) -> str:
    """`syntax error at line L, column C: …`, L counted from the top of the file."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        syntax = isinstance(exc, yaml.scanner.ScannerError | yaml.parser.ParserError)
        what = "syntax error" if syntax else "invalid YAML"  # e.g. an undefined alias
        detail = exc.problem or "invalid YAML"
        if exc.context:
            detail = f"{detail} ({exc.context})"
        return f"{what} at line {first_line + mark.line + 1}, column {mark.column + 1}: {detail}"
    if isinstance(exc, yaml.reader.ReaderError):
        return f"unreadable YAML at character {exc.position}: {exc.reason}"
    return f"invalid YAML: {exc}"
