"""Snapshot files to a `Cluster`: kubectl dumps, manifests, JSON, Lists, directories.

The offline half of DESIGN §1's `k8s/` package (the live list+watch source is its
sibling). It reads what people actually have at hand — `kubectl get … -o yaml|json`
output, multi-document manifests, `kind: List` and typed lists (`PodList` items carry no
`kind`), directories of all of these — and hands converted objects to `Cluster.build` in
load order, so a later NetworkPolicy with the same namespace/name replaces an earlier
one (§3.8).

Bad input never raises: a missing file, a syntax error, a document that is not an
object, an object without kind or name, or an invalid object each become a
`LoadProblem` naming the file (and document, and list item), the object and the field,
and everything valid is still loaded (§3.9). A YAML syntax error costs only the
document it is in: the file is then re-read document by document.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any, TypeVar

import yaml

from netwatch.core.cluster import Cluster
from netwatch.core.model import (
    EndpointSlice,
    LoadProblem,
    Namespace,
    Node,
    Pod,
    Service,
    WorkloadObject,
)
from netwatch.core.policy import NetworkPolicy
from netwatch.k8s.convert import (
    WORKLOAD_KINDS,
    InvalidObject,
    endpoint_slice_from_dict,
    namespace_from_dict,
    node_from_dict,
    pod_from_dict,
    policy_from_dict,
    service_from_dict,
    workload_from_dict,
)
from netwatch.k8s.fields import describe_value
from netwatch.k8s.yamldocs import load_all, load_one, split_documents, syntax_error_message

EXTENSIONS = (".yaml", ".yml", ".json")
_T = TypeVar("_T")

# API groups each kind is read from. A same-named kind of another group (Calico's
# projectcalico.org NetworkPolicy, say) has a different shape and is skipped, not
# misread. Objects without apiVersion (hand-written manifests) are taken as built-in.
_CORE = frozenset({""})
_APPS = frozenset({"apps", "extensions"})
_GROUPS: Mapping[str, frozenset[str]] = {
    "Namespace": _CORE,
    "Pod": _CORE,
    "Service": _CORE,
    "Node": _CORE,
    "NetworkPolicy": frozenset({"networking.k8s.io", "extensions"}),
    "EndpointSlice": frozenset({"discovery.k8s.io"}),
    "Deployment": _APPS,
    "ReplicaSet": _APPS,
    "DaemonSet": _APPS,
    "StatefulSet": _APPS,
    "Job": frozenset({"batch"}),
    "CronJob": frozenset({"batch"}),
}


@dataclass(frozen=True)
class LoadResult:
    cluster: Cluster
    problems: tuple[LoadProblem, ...]
    objects: int
    """Objects converted successfully."""
    skipped: int
    """Objects of kinds netwatch does not use (ConfigMap, …) or of foreign API groups."""


def load_cluster(paths: Sequence[str | os.PathLike[str]]) -> LoadResult:
    """Load files and directories (recursively, in sorted path order) into one Cluster."""
    loader = _SnapshotLoader()
    for path in paths:
        loader.load_path(os.fspath(path))
    return loader.result()


def snapshot_files(root: str) -> list[str]:
    """The .yaml/.yml/.json files under `root`, sorted by path components.

    Dot-entries are skipped: a mounted ConfigMap holds every file twice, once behind a
    `..data` link, and editors leave `.#name.yaml` lock files.
    """
    found: list[str] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a symlink loop
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found.extend(
            os.path.join(dirpath, f)
            for f in filenames
            if not f.startswith(".") and f.lower().endswith(EXTENSIONS)
        )
    return sorted(found, key=lambda p: PurePath(p).parts)


class _SnapshotLoader:
    """Accumulates converted objects and problems across files, in load order."""

    def __init__(self) -> None:
        self.namespaces: list[Namespace] = []
        self.pods: list[Pod] = []
        self.policies: list[NetworkPolicy] = []
        self.services: list[Service] = []
        self.slices: list[EndpointSlice] = []
        self.nodes: list[Node] = []
        self.workloads: list[WorkloadObject] = []
        self.problems: list[LoadProblem] = []
        self.objects = 0
        self.skipped = 0

    def result(self) -> LoadResult:
        cluster = Cluster.build(
            namespaces=self.namespaces,
            pods=self.pods,
            policies=self.policies,
            # Cluster.build resolves repeats of pods and policies; the loader does the
            # same for the rest, so overlapping dumps do not double-count objects.
            services=_last_wins(self.services, lambda s: s.key),
            endpoint_slices=_last_wins(self.slices, lambda s: f"{s.namespace}/{s.name}"),
            nodes=_last_wins(self.nodes, lambda n: n.name),
            workload_objects=_last_wins(
                self.workloads, lambda w: f"{w.kind.value}/{w.namespace}/{w.name}"
            ),
        )
        return LoadResult(cluster, tuple(self.problems), self.objects, self.skipped)

    def problem(self, source: str, obj: str, field: str, message: str) -> None:
        self.problems.append(LoadProblem(source, obj, field, message))

    # ------------------------------------------------------------------ files

    def load_path(self, path: str) -> None:
        if os.path.isdir(path):
            files = snapshot_files(path)
            if not files:
                self.problem(path, "directory", "", "contains no .yaml, .yml or .json files")
            for file in files:
                self.load_file(file)
        elif not os.path.lexists(path):
            self.problem(path, "file", "", "no such file or directory")
        else:
            self.load_file(path)

    def load_file(self, path: str) -> None:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            self.problem(path, "file", "", f"cannot read: {exc.strerror or exc}")
            return
        if path.lower().endswith(".json"):
            docs = self._parse_json(path, data)
        else:
            docs = self._parse_yaml(path, data)
        multi = len(docs) > 1
        for number, doc in docs:
            source = f"{path} (document {number})" if multi else path
            self.add_document(doc, source)

    def _parse_json(self, path: str, data: bytes) -> list[tuple[int, object]]:
        try:
            return [(1, json.loads(data.decode("utf-8-sig")))]
        except UnicodeDecodeError as exc:
            self.problem(path, "file", "", f"not UTF-8 text: {exc}")
        except json.JSONDecodeError as exc:
            self.problem(
                path,
                "JSON document",
                "",
                f"syntax error at line {exc.lineno}, column {exc.colno}: {exc.msg}",
            )
        return []

    def _parse_yaml(self, path: str, data: bytes) -> list[tuple[int, object]]:
        """All documents, numbered from 1; `None` slots keep numbering after a bad one."""
        try:
            return list(enumerate(load_all(data), 1))
        except yaml.YAMLError:
            pass  # re-read document by document below to keep the good ones
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            self.problem(path, "file", "", f"not UTF-8 text: {exc}")
            return []
        chunks = split_documents(text)
        docs: list[tuple[int, object]] = []
        for number, (first_line, chunk) in enumerate(chunks, 1):
            try:
                docs.append((number, load_one(chunk)))
            except yaml.YAMLError as exc:
                # Reported in document order, with the objects' own problems.
                docs.append(
                    (number, _SyntaxError(syntax_error_message(exc, first_line=first_line)))
                )
        return docs

    # ---------------------------------------------------------------- objects

    def add_document(self, doc: object, source: str) -> None:
        if doc is None:  # an empty document: `---` twice, or a comment-only file
            return
        if isinstance(doc, _SyntaxError):
            self.problem(source, "YAML document", "", doc.message)
            return
        if not isinstance(doc, Mapping):
            self.problem(
                source,
                "document",
                "",
                f"expected a Kubernetes object (a mapping), got {describe_value(doc)}",
            )
            return
        self.add_object(doc, base=source, where="")

    def add_object(self, obj: Mapping[str, Any], *, base: str, where: str) -> None:
        """Convert one object, or each item of a (possibly nested, possibly typed) List."""
        source = f"{base} {where}" if where else base
        kind = obj.get("kind")
        if not isinstance(kind, str) or not kind:
            what = (
                "missing kind"
                if kind is None
                else f"kind must be a name, got {describe_value(kind)}"
            )
            self.problem(
                source, _anonymous(obj), "kind", f"{what}: cannot tell what object this is"
            )
            return
        if kind == "List" or (kind.endswith("List") and "items" in obj):
            self._add_list(obj, kind=kind, base=base, where=where)
            return
        groups = _GROUPS.get(kind)
        api = obj.get("apiVersion")
        if groups is None or (isinstance(api, str) and api.rpartition("/")[0] not in groups):
            self.skipped += 1
            return
        try:
            self._convert(kind, obj, source)
        except InvalidObject as exc:
            self.problems.extend(exc.problems)
        else:
            self.objects += 1

    def _add_list(self, obj: Mapping[str, Any], *, kind: str, base: str, where: str) -> None:
        prefix = f"{where}." if where else ""
        items = obj.get("items")
        if not isinstance(items, list):
            if items is not None:
                source = f"{base} {where}" if where else base
                self.problem(source, kind, "items", f"expected a list, got {describe_value(items)}")
            return
        # Items of a typed list (`PodList`) may omit kind and apiVersion: they are the list's.
        inherited: dict[str, Any] = {}
        if kind != "List":
            inherited["kind"] = kind[: -len("List")]
            if isinstance(obj.get("apiVersion"), str):
                inherited["apiVersion"] = obj["apiVersion"]
        for i, item in enumerate(items):
            item_where = f"{prefix}items[{i}]"
            if not isinstance(item, Mapping):
                self.problem(
                    f"{base} {item_where}",
                    "list item",
                    "",
                    f"expected a Kubernetes object (a mapping), got {describe_value(item)}",
                )
                continue
            missing = {k: v for k, v in inherited.items() if k not in item}
            self.add_object({**item, **missing} if missing else item, base=base, where=item_where)

    def _convert(self, kind: str, obj: Mapping[str, Any], source: str) -> None:
        match kind:
            case "Pod":
                self.pods.append(pod_from_dict(obj, source=source))
            case "NetworkPolicy":
                self.policies.append(policy_from_dict(obj, source=source))
            case "Namespace":
                self.namespaces.append(namespace_from_dict(obj, source=source))
            case "Service":
                self.services.append(service_from_dict(obj, source=source))
            case "EndpointSlice":
                self.slices.append(endpoint_slice_from_dict(obj, source=source))
            case "Node":
                self.nodes.append(node_from_dict(obj, source=source))
            case _ if kind in WORKLOAD_KINDS:
                self.workloads.append(workload_from_dict(obj, source=source))


@dataclass(frozen=True, slots=True)
class _SyntaxError:
    """Stands in for a document that did not parse, so it is reported in its place."""

    message: str


def _anonymous(obj: Mapping[str, Any]) -> str:
    """What can be said about an object without a kind, for `LoadProblem.obj`."""
    meta = obj.get("metadata")
    name = meta.get("name") if isinstance(meta, Mapping) else None
    if not isinstance(name, str) or not name:
        return "object without kind or name"
    ns = meta.get("namespace") if isinstance(meta, Mapping) else None
    return f"object {ns}/{name}" if isinstance(ns, str) and ns else f"object {name}"


def _last_wins(items: Iterable[_T], key: Callable[[_T], str]) -> list[_T]:
    """Keep the last object per key, at its first position (§3.8)."""
    seen: dict[str, _T] = {}
    for item in items:
        seen[key(item)] = item
    return list(seen.values())
