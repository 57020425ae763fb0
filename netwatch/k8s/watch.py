"""One resource's list+watch loop (a "reflector", in client-go's words).

`Reflector.run` lists the collection, then watches it from the list's resourceVersion
with `allowWatchBookmarks=true`, forever:

- Every event and bookmark advances the tracked resourceVersion, so a dropped stream,
  a connection error or the server's own `timeoutSeconds` end is resumed with a new
  watch from exactly where the last one stopped: nothing lost, nothing repeated. A line
  cut short by a drop has no newline yet and is never parsed; the re-watch replays it.
- 410 Gone means that resourceVersion is compacted away. It arrives either as the HTTP
  status of the request (an `ApiException` with status 410) or, as real API servers
  send it for watches, as a 200 stream whose event is `{"type": "ERROR", "object":
  {"kind": "Status", "code": 410}}`. Both relist: a full, consistent list
  (resourceVersion unset, so never older than what we had) delivered as `replace`,
  which is how objects deleted while we were away disappear.
- Any other failure sleeps an exponential, fully jittered backoff and re-watches from
  the last resourceVersion; so does a watch that ends at once without an event
  (client-go's "very short watch"). Every request waits for a token of the agent-wide
  `RequestGate` first, so a flood of failures stays within its rate.

The kubernetes client's typed list methods are called with `_preload_content=False`,
and `stream` reads the raw JSON: `kubernetes.watch.Watch` deserialises into client
models (slow, large) and, on a 410, silently retries once with the same stale
resourceVersion. Raw dicts go straight to `convert`; only the slim core values outlive
a response. Lists are paged (`limit`/`continue`) to bound the raw JSON held at once.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import urllib3
from kubernetes.client.exceptions import ApiException

from netwatch.core.inventory import EventType, InventoryObject
from netwatch.k8s.backoff import Backoff, BackoffPolicy, RequestGate, jittered
from netwatch.k8s.fields import InvalidObject
from netwatch.k8s.resources import METADATA_LIST_ACCEPT, METADATA_WATCH_ACCEPT, Resource
from netwatch.k8s.stream import (
    ObjectRef,
    StreamError,
    as_mapping,
    as_string,
    close,
    describe_error,
    json_lines,
    object_ref,
    read_json,
    shutdown,
)

log = logging.getLogger(__name__)

HTTP_GONE = 410
MIN_WATCH_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class WatchOptions:
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    watch_timeout: float = 300.0
    """Server-side `timeoutSeconds` of a watch, jittered up to twice this (as client-go)."""
    connect_timeout: float = 10.0
    read_grace: float = 30.0
    """Silence tolerated past `timeoutSeconds` before a stream counts as dead."""
    request_timeout: float = 60.0
    """Read timeout of list requests."""
    page_size: int = 500
    """`limit` of list requests; bounds the raw JSON held at once."""
    rate: float = 1.0
    """Requests per second all watchers of a source may make together, sustained."""
    burst: int = 24
    """Requests allowed at once: two rounds of all twelve resources start unthrottled."""


@dataclass(frozen=True, slots=True)
class ResourceHealth:
    resource: str
    healthy: bool = False
    """A list or watch is current: the cache is in sync now."""
    synced: bool = False
    """The initial list has been delivered."""
    last_sync: float | None = None
    """Epoch seconds the cache was last known to be in sync (None: never)."""
    resource_version: str | None = None
    error: str | None = None
    """Why the last attempt failed, until one succeeds."""

    def stale_seconds(self, now: float, *, since: float) -> float:
        """0 while healthy; else how long the cache may have been missing changes."""
        if self.healthy:
            return 0.0
        return max(0.0, now - (self.last_sync if self.last_sync is not None else since))


class Output(Protocol):
    """Where a reflector delivers (the live source's publisher)."""

    def relisted(
        self, resource: Resource, objects: Mapping[ObjectRef, InventoryObject], *, at: float
    ) -> None: ...

    def changed(
        self,
        resource: Resource,
        *,
        type: EventType,
        ref: ObjectRef,
        obj: InventoryObject | None,
        at: float,
    ) -> None:
        """`obj` is None when the new state did not convert: drop what was there."""


class _Expired(Exception):
    """410 Gone: the resourceVersion is too old; only a relist recovers."""


_FAILURES = (ApiException, urllib3.exceptions.HTTPError, OSError, ValueError, StreamError)


RESTART_REASONS = ("closed", "error", "expired")


@dataclass
class _Counters:
    # Every key exists from the start: readers on other threads (a metrics scrape) then
    # never see the dict change size while they iterate it.
    restarts: Counter[str] = field(
        default_factory=lambda: Counter(dict.fromkeys(RESTART_REASONS, 0))
    )
    skipped: int = 0
    """Objects that failed conversion."""


class Reflector:
    """List+watch of one resource; `run` is a thread body, `abort` may be called from any."""

    def __init__(
        self,
        resource: Resource,
        *,
        list_function: Callable[..., Any],
        output: Output,
        gate: RequestGate,
        options: WatchOptions,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
        uniform: Callable[[], float],
    ) -> None:
        self.resource = resource
        self._list_fn = list_function
        self._out = output
        self._gate = gate
        self._opts = options
        self._clock = clock
        self._sleep = sleep
        self._uniform = uniform
        self._backoff = Backoff(options.backoff, uniform=uniform)
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._response: Any = None
        self._rv: str | None = None
        """The resourceVersion to resume from; None: relist first."""
        self.health = ResourceHealth(resource.name)
        self.counters = _Counters()

    @property
    def restarts(self) -> int:
        return sum(self.counters.restarts.values())

    # ----------------------------------------------------------------- control

    def abort(self) -> None:
        """Stop `run`: wake its sleep's owner separately; this unblocks a read."""
        self._stopping.set()
        with self._lock:
            response = self._response
        if response is not None:
            shutdown(response)

    def run(self) -> None:
        consistent = False
        while not self._stopping.is_set():
            started = self._clock()
            try:
                if self._rv is None:
                    self._rv = self._relist(consistent=consistent)
                    consistent = False
                self._watch(self._rv)
                # A clean end: the server's timeoutSeconds (or a proxy) closed the stream.
                self._backoff.reset()
                self._restarted("closed")
            except _Expired as exc:
                if self._stopping.is_set():
                    break
                if self._rv is None:  # the relist itself expired (its continue token)
                    self._fail_and_wait(exc, started=started)
                else:
                    log.info("%s: %s; relisting", self.resource.name, exc)
                    self._failed(f"expired: {exc}")
                    self._restarted("expired")
                self._rv, consistent = None, True
            except _FAILURES as exc:
                if self._stopping.is_set():
                    break
                self._fail_and_wait(exc, started=started)
            except Exception as exc:  # a bug must not end the watch for good
                if self._stopping.is_set():
                    break
                log.exception("%s: unexpected error in watch loop", self.resource.name)
                self._fail_and_wait(exc, started=started)

    def _fail_and_wait(self, exc: BaseException, *, started: float) -> None:
        if self._clock() - started >= self._opts.backoff.reset_after:
            self._backoff.reset()  # it had been up for a while: start the schedule over
        delay = self._backoff.next_delay()
        log.warning("%s: %s; retrying in %.2fs", self.resource.name, describe_error(exc), delay)
        self._failed(describe_error(exc))
        self._restarted("error")
        if delay > 0:
            self._sleep(delay)

    def _restarted(self, reason: str) -> None:
        self.counters.restarts[reason] += 1

    # ------------------------------------------------------------------ health

    def _in_sync(self, rv: str, *, listed: bool = False) -> None:
        self.health = replace(
            self.health,
            healthy=True,
            synced=self.health.synced or listed,
            last_sync=self._clock(),
            resource_version=rv,
            error=None,
        )

    def _failed(self, error: str) -> None:
        h = self.health
        # Up to this moment the cache was current; from now on it may miss changes.
        self.health = replace(
            h, healthy=False, error=error, last_sync=self._clock() if h.healthy else h.last_sync
        )

    # -------------------------------------------------------------------- list

    def _relist(self, *, consistent: bool) -> str:
        """List every page; deliver `replace`; return the list's resourceVersion."""
        objects: dict[ObjectRef, InventoryObject] = {}
        list_rv: str | None = None
        cont: str | None = None
        self._gate.wait_turn()
        while True:
            kwargs: dict[str, Any] = {
                "limit": self._opts.page_size,
                "_preload_content": False,
                "_request_timeout": (self._opts.connect_timeout, self._opts.request_timeout),
            }
            if cont:
                kwargs["_continue"] = cont
            elif not consistent:
                # "0": any recent state, served from the API server's watch cache — cheap
                # for a DaemonSet of thousands. After a 410, unset: a consistent read, so
                # the relist is never older than the stream we lost.
                kwargs["resource_version"] = "0"
            if self.resource.metadata_only:
                kwargs["_headers"] = {"Accept": METADATA_LIST_ACCEPT}
            try:
                body = read_json(self._call(**kwargs))
            except ApiException as exc:
                if exc.status == HTTP_GONE:  # the continue token expired mid-list
                    raise _Expired(f"list continuation expired: {exc.reason}") from exc
                raise
            meta = as_mapping(body.get("metadata"))
            list_rv = list_rv or as_string(meta.get("resourceVersion"))
            items = body.get("items")
            for item in items if isinstance(items, list) else ():
                converted = self._convert(item)
                if converted is not None:
                    objects[converted[0]] = converted[1]
            cont = as_string(meta.get("continue"))
            if not cont:
                break
        if not list_rv:
            raise StreamError("list response has no metadata.resourceVersion")
        self._out.relisted(self.resource, objects, at=self._clock())
        self._in_sync(list_rv, listed=True)
        return list_rv

    # ------------------------------------------------------------------- watch

    def _watch(self, rv: str) -> None:
        """One watch request, from `rv`; `self._rv` follows every event and bookmark, so
        wherever the stream breaks, the next watch resumes right after the last one seen."""
        timeout = jittered(self._opts.watch_timeout, spread=1.0, uniform=self._uniform)
        kwargs: dict[str, Any] = {
            "watch": True,
            "resource_version": rv,
            "allow_watch_bookmarks": True,
            "timeout_seconds": max(1, int(timeout)),
            "_preload_content": False,
            "_request_timeout": (self._opts.connect_timeout, timeout + self._opts.read_grace),
        }
        if self.resource.metadata_only:
            kwargs["_headers"] = {"Accept": METADATA_WATCH_ACCEPT}
        self._gate.wait_turn()
        opened, received = self._clock(), 0
        try:
            response = self._call(**kwargs)
        except ApiException as exc:
            if exc.status == HTTP_GONE:
                raise _Expired(f"watch from resourceVersion {rv}: {exc.reason}") from exc
            raise
        self._in_sync(rv)
        try:
            for line in json_lines(response):
                self._rv = rv = self._handle(line, rv)
                self._in_sync(rv)
                received += 1
        finally:
            with self._lock:
                self._response = None
            close(response)
        if not received and self._clock() - opened < min(
            MIN_WATCH_SECONDS, max(1, int(timeout)) / 2
        ):
            # A server or proxy that ends every watch at once would otherwise be re-watched
            # as fast as the gate allows, with no backoff (client-go: "very short watch").
            raise StreamError("very short watch: the stream ended at once, without events")

    def _call(self, **kwargs: Any) -> Any:
        response = self._list_fn(**kwargs)
        with self._lock:
            self._response = response
        if self._stopping.is_set():  # abort() ran before the response was registered
            shutdown(response)
        return response

    def _handle(self, line: str, rv: str) -> str:
        try:
            event = json.loads(line)
        except ValueError as exc:
            raise StreamError(f"unparseable watch event: {exc}") from None
        event = as_mapping(event)
        kind = event.get("type")
        obj = as_mapping(event.get("object"))
        if kind == "ERROR":
            code, message = obj.get("code"), obj.get("message") or obj.get("reason")
            if code == HTTP_GONE:
                raise _Expired(f"watch from resourceVersion {rv}: {message}")
            raise StreamError(f"watch error {code}: {message}")
        new_rv = as_string(as_mapping(obj.get("metadata")).get("resourceVersion")) or rv
        if kind == "BOOKMARK":
            return new_rv
        try:
            event_type = EventType(kind)
        except ValueError:
            log.warning("%s: ignoring watch event of type %r", self.resource.name, kind)
            return new_rv
        converted = self._convert(obj)
        ref = converted[0] if converted else object_ref(obj)
        self._out.changed(
            self.resource,
            type=event_type,
            ref=ref,
            obj=converted[1] if converted else None,
            at=self._clock(),
        )
        return new_rv

    def _convert(self, raw: object) -> tuple[ObjectRef, InventoryObject] | None:
        obj = as_mapping(raw)
        ref = object_ref(obj)
        source = f"{self.resource.name} {ref[0]}/{ref[1]}" if ref[0] else self.resource.name
        try:
            return ref, self.resource.convert(obj, source=f"api {source}")
        except InvalidObject as exc:
            self.counters.skipped += 1
            log.warning("%s: skipping object: %s", self.resource.name, exc)
            return None
