"""A small, real Kubernetes API server for tests: list and watch over HTTP/1.1 on loopback.

Why not kmock: its KubernetesEmulator (source read at nolar/kmock main, PyPI 0.8)
answers lists with the placeholder `resourceVersion: "..."`, replays every object as
ADDED on each watch whatever the resourceVersion, sends no bookmarks, ignores
`timeoutSeconds` and never answers 410 — the very behaviours the live source must be
proven against. This server keeps an etcd-like global revision and an event log, so:

- list: `resourceVersion` in the response, `limit`/`continue` paging, items without
  `kind`/`apiVersion` (as the API server sends them), metadata-only answers for
  `Accept: ...;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1`;
- watch: a chunked stream of JSON lines starting after the requested resourceVersion,
  `BOOKMARK` events on request when `allowWatchBookmarks=true`, a clean end after
  `timeoutSeconds`, and for a compacted resourceVersion a 200 stream whose only event is
  an `ERROR` Status with code 410 (what real servers do), or an HTTP 410 when
  `gone_as_status` is set;
- faults: cut open streams (`drop_streams`), end them with an ERROR event (410 or
  another code), fail every request with a status or a connection reset (`fail_with`),
  stop the server and start it again on the same port; every request is recorded.

Only what the tests need: no create/patch over HTTP (tests change state directly), no
label or field selectors, namespaces taken from objects.
"""

from __future__ import annotations

import bisect
import contextlib
import copy
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

# plural -> (apiVersion, kind)
RESOURCES: dict[str, tuple[str, str]] = {
    "namespaces": ("v1", "Namespace"),
    "nodes": ("v1", "Node"),
    "pods": ("v1", "Pod"),
    "services": ("v1", "Service"),
    "endpointslices": ("discovery.k8s.io/v1", "EndpointSlice"),
    "networkpolicies": ("networking.k8s.io/v1", "NetworkPolicy"),
    "deployments": ("apps/v1", "Deployment"),
    "statefulsets": ("apps/v1", "StatefulSet"),
    "daemonsets": ("apps/v1", "DaemonSet"),
    "replicasets": ("apps/v1", "ReplicaSet"),
    "jobs": ("batch/v1", "Job"),
    "cronjobs": ("batch/v1", "CronJob"),
}
CLUSTER_SCOPED = {"namespaces", "nodes"}


@dataclass(frozen=True)
class Request:
    at: float
    """time.monotonic() when it arrived."""
    resource: str
    watch: bool
    params: dict[str, str]
    accept: str


@dataclass
class _Stream:
    resource: str
    connection: socket.socket
    bookmarks: bool
    drop: bool = False
    error: int | None = None
    """End the stream with an ERROR event of this code."""
    bookmark: bool = False


@dataclass
class _State:
    revision: int = 1
    compacted: int = 0
    """Watches and continues from a revision below this get 410 Gone."""
    objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = field(default_factory=dict)
    log: list[tuple[int, str, str, dict[str, Any]]] = field(default_factory=list)
    """(revision, resource, event type, object), in revision order."""


class KubeAPI:
    def __init__(self, *, port: int = 0, bookmark_interval: float | None = None) -> None:
        self._state = _State()
        self._cond = threading.Condition()
        self._streams: list[_Stream] = []
        self._connections: set[socket.socket] = set()
        self._fault: int | str | None = None
        self.gone_as_status = False
        self.bookmark_interval = bookmark_interval
        self.requests: list[Request] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.port = port

    # ----------------------------------------------------------------- server

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._stopping = False
        server = _Server(("127.0.0.1", self.port), _Handler)
        server.api = self
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, args=(0.05,), name="kube-api", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Close the listening socket and every connection: the API server went away."""
        if self._server is None:
            return
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._server.shutdown()
        self._server.server_close()
        with self._cond:
            connections = list(self._connections)
        for conn in connections:
            _shutdown(conn)
        assert self._thread is not None
        self._thread.join(5)
        self._server = None

    # ------------------------------------------------------------------ state

    def create(self, resource: str, obj: dict[str, Any]) -> dict[str, Any]:
        return self._write(resource, "ADDED", obj)

    def update(self, resource: str, obj: dict[str, Any]) -> dict[str, Any]:
        return self._write(resource, "MODIFIED", obj)

    def delete(self, resource: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        with self._cond:
            key = (namespace or "", name)
            obj = self._state.objects.get(resource, {}).pop(key)
            return self._record(resource, "DELETED", obj)

    def _write(self, resource: str, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        api_version, api_kind = RESOURCES[resource]
        obj = {"apiVersion": api_version, "kind": api_kind, **copy.deepcopy(obj)}
        meta = obj.setdefault("metadata", {})
        if resource not in CLUSTER_SCOPED:
            meta.setdefault("namespace", "default")
        meta.setdefault("uid", f"uid-{resource}-{meta.get('namespace', '')}-{meta['name']}")
        with self._cond:
            key = (meta.get("namespace", ""), meta["name"])
            store = self._state.objects.setdefault(resource, {})
            if (kind == "ADDED") == (key in store):
                raise KeyError(f"{resource} {key}: {'exists' if kind == 'ADDED' else 'missing'}")
            store[key] = obj
            return self._record(resource, kind, obj)

    def _record(self, resource: str, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        self._state.revision += 1
        obj = {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(self._state.revision)}}
        if kind != "DELETED":
            self._state.objects[resource][_key(obj)] = obj  # stored with its revision
        self._state.log.append((self._state.revision, resource, kind, obj))
        self._cond.notify_all()
        return obj

    @property
    def revision(self) -> int:
        with self._cond:
            return self._state.revision

    def compact(self) -> None:
        """Forget history: any watch or continue from before now gets 410 Gone."""
        with self._cond:
            self._state.compacted = self._state.revision
            self._state.log.clear()

    # ----------------------------------------------------------------- faults

    def drop_streams(self, resource: str | None = None) -> int:
        """Cut open watches mid-stream (no terminating chunk); return how many."""
        return self._flag_streams("drop", resource, True)

    def expire_streams(self, resource: str | None = None, *, code: int = 410) -> int:
        """End open watches with an ERROR event (410 Gone unless `code` says otherwise)."""
        return self._flag_streams("error", resource, code)

    def send_bookmarks(self, resource: str | None = None) -> int:
        """A BOOKMARK at the current revision on open watches that allow them."""
        return self._flag_streams("bookmark", resource, True)

    def _flag_streams(self, flag: str, resource: str | None, value: object) -> int:
        with self._cond:
            streams = [s for s in self._streams if resource in (None, s.resource)]
            for stream in streams:
                setattr(stream, flag, value)
            self._cond.notify_all()
            return len(streams)

    def open_streams(self, resource: str | None = None) -> int:
        with self._cond:
            return sum(1 for s in self._streams if resource in (None, s.resource))

    def fail_with(self, fault: int | str | None) -> None:
        """Answer every request with this HTTP status, or "reset" the connection; None heals."""
        with self._cond:
            self._fault = fault

    def count(self, *, since: float = 0.0, watch: bool | None = None) -> int:
        with self._cond:
            return sum(1 for r in self.requests if r.at >= since and watch in (None, r.watch))

    # -------------------------------------------------------------- serving

    def _serve(self, handler: _Handler) -> None:
        url = urlsplit(handler.path)
        params = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        resource = url.path.rstrip("/").rsplit("/", 1)[-1]
        watch = params.get("watch") in ("true", "1", "True")
        accept = handler.headers.get("Accept", "")
        with self._cond:
            self.requests.append(Request(time.monotonic(), resource, watch, params, accept))
            fault = self._fault
        if fault == "reset":
            handler.close_connection = True
            _shutdown(handler.connection)
            return
        if isinstance(fault, int):
            handler.send_json(fault, _status(fault, "injected failure"))
            return
        if resource not in RESOURCES or handler.command != "GET":
            handler.send_json(404, _status(404, f"unknown resource {url.path}"))
            return
        metadata_only = "as=PartialObjectMetadata" in accept
        if watch:
            self._watch(handler, resource, params, metadata_only=metadata_only)
        else:
            self._list(handler, resource, params, metadata_only=metadata_only)

    def _list(
        self, handler: _Handler, resource: str, params: dict[str, str], *, metadata_only: bool
    ) -> None:
        with self._cond:
            items = sorted(self._state.objects.get(resource, {}).items())
            revision = self._state.revision
            compacted = self._state.compacted
        offset = 0
        if params.get("continue"):
            token_rv, token_offset = params["continue"].split(":")
            if int(token_rv) < compacted:
                handler.send_json(410, _status(410, "continue token expired", reason="Expired"))
                return
            revision, offset = int(token_rv), int(token_offset)
        limit = int(params.get("limit") or 0) or len(items)
        page = [obj for _, obj in items[offset : offset + limit]]
        meta: dict[str, Any] = {"resourceVersion": str(revision)}
        if offset + limit < len(items):
            meta["continue"] = f"{revision}:{offset + limit}"
        api_version, kind = RESOURCES[resource]
        body = {
            "apiVersion": "meta.k8s.io/v1" if metadata_only else api_version,
            "kind": "PartialObjectMetadataList" if metadata_only else f"{kind}List",
            "metadata": meta,
            # The API server leaves kind and apiVersion out of list items.
            "items": [_metadata_only(o) if metadata_only else _without_type(o) for o in page],
        }
        handler.send_json(200, body)

    def _watch(
        self, handler: _Handler, resource: str, params: dict[str, str], *, metadata_only: bool
    ) -> None:
        position = int(params.get("resourceVersion") or 0)
        deadline = time.monotonic() + float(params.get("timeoutSeconds") or 3600)
        with self._cond:
            too_old = position < self._state.compacted
        if too_old and self.gone_as_status:
            handler.send_json(410, _status(410, f"too old resource version: {position}"))
            return
        handler.start_chunked()
        if too_old:
            gone = _status(410, f"too old resource version: {position}", reason="Expired")
            handler.write_chunk(_line({"type": "ERROR", "object": gone}))
            handler.end_chunked()
            return
        stream = _Stream(resource, handler.connection, params.get("allowWatchBookmarks") == "true")
        next_bookmark = (
            time.monotonic() + self.bookmark_interval if self.bookmark_interval else None
        )
        with self._cond:
            self._streams.append(stream)
        try:
            while True:
                with self._cond:
                    events = self._events_after(resource, position)
                    while not (events or stream.drop or stream.error or stream.bookmark):
                        if self._stopping or time.monotonic() >= deadline:
                            break
                        if next_bookmark is not None and time.monotonic() >= next_bookmark:
                            stream.bookmark = True
                            break
                        self._cond.wait(0.02)
                        events = self._events_after(resource, position)
                    drop, error, stopping = stream.drop, stream.error, self._stopping
                    bookmark = stream.bookmark and stream.bookmarks
                    stream.bookmark = False
                    revision = self._state.revision
                for rev, event_type, obj in events:
                    payload = _metadata_only(obj) if metadata_only else obj
                    handler.write_chunk(_line({"type": event_type, "object": payload}))
                    position = rev
                if drop or stopping:
                    _shutdown(handler.connection)
                    handler.close_connection = True
                    return
                if error:
                    status = _status(error, "watch ended by the test")
                    handler.write_chunk(_line({"type": "ERROR", "object": status}))
                    break
                if bookmark:
                    api_version, kind = RESOURCES[resource]
                    mark = {
                        "kind": kind,
                        "apiVersion": api_version,
                        "metadata": {"resourceVersion": str(revision)},
                    }
                    handler.write_chunk(_line({"type": "BOOKMARK", "object": mark}))
                    position = max(position, revision)
                    if self.bookmark_interval:
                        next_bookmark = time.monotonic() + self.bookmark_interval
                if not events and time.monotonic() >= deadline:
                    break
            handler.end_chunked()
        except OSError:
            handler.close_connection = True
        finally:
            with self._cond:
                self._streams.remove(stream)

    def _events_after(self, resource: str, position: int) -> list[tuple[int, str, dict[str, Any]]]:
        log = self._state.log
        start = bisect.bisect_right(log, position, key=lambda e: e[0])
        return [(rev, kind, obj) for rev, res, kind, obj in log[start:] if res == resource]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # twelve watchers connect at once; the default 5 drops SYNs
    api: KubeAPI

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients hanging up mid-response are part of the tests


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.api._cond:
            self.server.api._connections.add(self.connection)

    def finish(self) -> None:
        with self.server.api._cond:
            self.server.api._connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def do_GET(self) -> None:
        self.server.api._serve(self)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def send_json(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def start_chunked(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()

    def write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def end_chunked(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def _status(code: int, message: str, *, reason: str = "") -> dict[str, Any]:
    reasons = {410: "Expired", 404: "NotFound", 500: "InternalError", 503: "ServiceUnavailable"}
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason or reasons.get(code, "Unknown"),
        "code": code,
    }


def _key(obj: dict[str, Any]) -> tuple[str, str]:
    meta = obj["metadata"]
    return (meta.get("namespace", ""), meta["name"])


def _line(event: dict[str, Any]) -> bytes:
    return json.dumps(event).encode() + b"\n"


def _metadata_only(obj: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj["metadata"],
    }


def _without_type(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}


def _shutdown(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)


def kubeconfig_text(url: str) -> str:
    """A kubeconfig for `url` (plain HTTP on loopback, a dummy token)."""
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test", "cluster": {"server": url}}],
            "users": [{"name": "test", "user": {"token": "test-token"}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
            "current-context": "test",
        }
    )


def wait_until(
    predicate: Callable[[], object],
    *,
    timeout: float = 5.0,
    message: Callable[[], object] | str = "",
) -> None:
    """Poll `predicate`; on timeout fail with `message` (called then, if callable)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            detail = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout}s: {detail or predicate}")
        time.sleep(0.01)
