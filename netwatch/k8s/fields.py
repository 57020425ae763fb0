"""Reading loosely typed Kubernetes objects while collecting every problem, with its path.

`convert` and `netpol` build core values from dicts that came out of YAML, JSON or the
kubernetes client's `sanitize_for_serialization`. Those dicts are untrusted: any field
may be missing, null or of the wrong type. `ObjectReader` gives the converters typed
accessors that never raise; instead each records a `LoadProblem` naming the object and
the dotted field path, so one pass reports *every* problem in an object (DESIGN §3.9)
rather than making the user fix them one at a time. Unknown fields are simply never
read, which is how we stay lenient about API versions and extra keys.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from netwatch.core.model import (
    EMPTY_LABELS,
    POLICY_PROTOCOLS,
    Labels,
    LoadProblem,
    NamespaceName,
    OwnerRef,
    Protocol,
    Uid,
)
from netwatch.core.selectors import label_key_error, label_value_error

DEFAULT_NAMESPACE = NamespaceName("default")
_EMPTY: Mapping[str, Any] = {}
# Case-sensitive, as the API server validates them: `tcp` is rejected, not upper-cased.
_PROTOCOLS = {p.value: p for p in POLICY_PROTOCOLS}


class InvalidObject(Exception):
    """An object that cannot be converted; `problems` lists everything wrong with it."""

    def __init__(self, problems: Sequence[LoadProblem]) -> None:
        self.problems: tuple[LoadProblem, ...] = tuple(problems)
        super().__init__("; ".join(str(p) for p in self.problems))


def describe_value(value: object) -> str:
    """How a bad value is quoted in messages, in YAML's vocabulary rather than Python's."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


# Label keys and values repeat across thousands of pods; their regexes need not rerun.
_key_error = functools.lru_cache(maxsize=8192)(label_key_error)
_value_error = functools.lru_cache(maxsize=8192)(label_value_error)


def label_key_problem(key: object) -> str | None:
    """Why `key` is not a valid label key, or None."""
    if not isinstance(key, str):
        return f"label key {describe_value(key)} must be a string"
    return _key_error(key)


def label_value_problem(value: object) -> str | None:
    """Why `value` is not a valid label value, or None."""
    if not isinstance(value, str):
        return f"label value {describe_value(value)} must be a string"
    return _value_error(value)


def label_problem(key: object, value: object) -> str | None:
    """Why `key: value` is not a valid label, or None."""
    return label_key_problem(key) or label_value_problem(value)


class ObjectReader:
    """Typed access to one object's fields; wrong shapes become problems, not exceptions."""

    __slots__ = ("obj", "problems", "source")

    def __init__(self, *, source: str, obj: str) -> None:
        self.source = source
        self.obj = obj
        self.problems: list[LoadProblem] = []

    def error(self, field: str, message: str) -> None:
        self.problems.append(LoadProblem(self.source, self.obj, field, message))

    def check(self) -> None:
        """Raise `InvalidObject` if anything was recorded; call once the object is read."""
        if self.problems:
            raise InvalidObject(self.problems)

    def mapping(self, value: object, field: str) -> Mapping[str, Any]:
        """A mapping field; null/absent reads as empty, like Go's zero value."""
        if value is None:
            return _EMPTY
        if isinstance(value, Mapping):
            return value
        self.error(field, f"expected a mapping, got {describe_value(value)}")
        return _EMPTY

    def items(self, value: object, field: str) -> Sequence[Any]:
        """A list field; null/absent reads as empty."""
        if value is None:
            return ()
        if isinstance(value, list | tuple):
            return value
        self.error(field, f"expected a list, got {describe_value(value)}")
        return ()

    def string(self, value: object, field: str) -> str | None:
        if value is None or isinstance(value, str):
            return value
        self.error(field, f"expected a string, got {describe_value(value)}")
        return None

    def integer(self, value: object, field: str) -> int | None:
        """An integer field; booleans and floats are rejected as the API server would."""
        if value is None:
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        self.error(field, f"expected an integer, got {describe_value(value)}")
        return None

    def boolean(self, value: object, field: str, *, default: bool) -> bool:
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        self.error(field, f"expected true or false, got {describe_value(value)}")
        return default

    def protocol(self, value: object, field: str) -> Protocol:
        """A `protocol` field of a port: TCP when absent, else exactly TCP, UDP or SCTP."""
        if value is None:
            return Protocol.TCP
        found = _PROTOCOLS.get(value) if isinstance(value, str) else None
        if found is None:
            self.error(
                field, f"unsupported protocol {describe_value(value)} (expected TCP, UDP or SCTP)"
            )
            return Protocol.TCP
        return found

    def labels(self, value: object, field: str) -> Labels:
        """A label map (metadata.labels, a Service selector), each pair syntax-checked."""
        raw = self.mapping(value, field)
        if not raw:
            return EMPTY_LABELS
        good: dict[str, str] = {}
        for key, val in raw.items():
            problem = label_problem(key, val)
            if problem is not None:
                self.error(f"{field}[{key}]", problem)
            else:
                good[key] = val
        return Labels(good)


@dataclass(frozen=True, slots=True)
class ObjectMeta:
    """The `metadata` every converter needs, plus the reader that names the object."""

    reader: ObjectReader
    namespace: NamespaceName
    name: str
    labels: Labels
    uid: Uid | None
    owners: tuple[OwnerRef, ...]


def object_name(obj: Mapping[str, Any], *, kind: str, namespaced: bool) -> str:
    """`Kind namespace/name` (or `Kind name` for cluster-scoped kinds) for messages."""
    meta = obj.get("metadata")
    meta = meta if isinstance(meta, Mapping) else _EMPTY
    name = meta.get("name")
    shown = name if isinstance(name, str) and name else "<no name>"
    if not namespaced:
        return f"{kind} {shown}"
    ns = meta.get("namespace")
    ns = ns if isinstance(ns, str) and ns else DEFAULT_NAMESPACE
    return f"{kind} {ns}/{shown}"


def read_metadata(
    obj: object, *, kind: str, namespaced: bool, source: str
) -> tuple[ObjectMeta, Mapping[str, Any]]:
    """Read `metadata` and return it with the object as a mapping.

    Raises `InvalidObject` at once only when `obj` is not a mapping at all; a missing
    name is recorded on the reader so the rest of the object is still checked.
    """
    if not isinstance(obj, Mapping):
        problem = LoadProblem(
            source, kind, "", f"expected a {kind} object (a mapping), got {describe_value(obj)}"
        )
        raise InvalidObject([problem])
    r = ObjectReader(source=source, obj=object_name(obj, kind=kind, namespaced=namespaced))
    meta = r.mapping(obj.get("metadata"), "metadata")
    if meta.get("name") in (None, ""):
        r.error("metadata.name", "required: the object has no name")
    name = r.string(meta.get("name"), "metadata.name") or ""
    namespace = DEFAULT_NAMESPACE
    if namespaced:
        # Objects written without a namespace land in `default`, as with `kubectl apply`.
        given = r.string(meta.get("namespace"), "metadata.namespace")
        namespace = NamespaceName(given) if given else DEFAULT_NAMESPACE
    labels = r.labels(meta.get("labels"), "metadata.labels")
    uid = r.string(meta.get("uid"), "metadata.uid")
    owners = _owner_refs(r, meta.get("ownerReferences"))
    om = ObjectMeta(r, namespace, name, labels, Uid(uid) if uid else None, owners)
    return om, obj


def _owner_refs(r: ObjectReader, value: object) -> tuple[OwnerRef, ...]:
    refs: list[OwnerRef] = []
    for i, raw in enumerate(r.items(value, "metadata.ownerReferences")):
        path = f"metadata.ownerReferences[{i}]"
        ref = r.mapping(raw, path)
        kind = r.string(ref.get("kind"), f"{path}.kind")
        name = r.string(ref.get("name"), f"{path}.name")
        uid = r.string(ref.get("uid"), f"{path}.uid")
        controller = r.boolean(ref.get("controller"), f"{path}.controller", default=False)
        if not kind or not name:
            r.error(path, "an owner reference needs both kind and name")
            continue
        refs.append(OwnerRef(kind, name, Uid(uid) if uid else None, controller))
    return tuple(refs)
