"""The agent's HTTP endpoints: Prometheus scrapes, probes and a read-only API.

Everything served comes from one `Published` value (the telemetry snapshot plus the
rendered suggestions) that the agent swaps into a `SnapshotBox` after each drain. A
request takes one reference to it and renders from that, so a response is consistent
even while the next drain is being published, and nothing here reads the agent's
mutable state. `/metrics` renders the registry the agent built (`metrics.build_registry`
over the same box); this module never imports prometheus collectors of its own.

Documents are rendered once per published snapshot: the first request for a document
(`/metrics` once per negotiated content type) renders it while later requests for the
same snapshot wait for and share those bytes, and the next `publish` drops them all.
The box numbers its snapshots, and the cache is keyed on that generation, never on
time. So every collector in the `/metrics` registry must be a function of the published
snapshot alone (all of `netwatch.metrics` is); a series that changes per scrape would
be frozen until the next drain.

| path | what | auth |
| --- | --- | --- |
| `/metrics` | Prometheus text (OpenMetrics when asked via Accept) | yes |
| `/healthz` | 200 while the process serves (and `liveness()` holds) | never |
| `/readyz` | 200 iff every readiness check holds (capture attached, inventory fresh) | yes |
| `/api/flows` | flow series as JSON; `?label=value` filters on flow labels | yes |
| `/api/findings` | finding counts, unused rules, unexpected flows as JSON | yes |
| `/api/suggestions` | suggested NetworkPolicies, multi-document YAML | yes |
| `/api/graph` | Grafana Node Graph data (`?format=frames` for data frames) | yes |

Only GET is served; every other method is 405 — no endpoint changes anything. The
listen address defaults to loopback; TLS (certificate + key files, TLS >= 1.2) and a
bearer token (compared in constant time) are optional. Threads: one per connection,
bounded by `max_connections` (beyond it a connection is closed at once), each with a
socket timeout, TLS handshakes included, so a slow client cannot stall the others.
`stop()` stops accepting, lets in-flight requests finish (up to a timeout), then
closes idle keep-alive connections.

The documents themselves are built in `netwatch.render.telemetry`.
"""

from __future__ import annotations

import hmac
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from netwatch.core.telemetry import FLOW_LABELS, TelemetrySnapshot
from netwatch.render.telemetry import (
    findings_document,
    flows_document,
    graph_document,
    graph_frames,
    to_json,
)

log = logging.getLogger("netwatch.server")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9810
JSON_TYPE = "application/json"
YAML_TYPE = "application/yaml; charset=utf-8"
TEXT_TYPE = "text/plain; charset=utf-8"

Check = Callable[[], bool]


# ------------------------------------------------------------------ what is served


@dataclass(frozen=True, slots=True)
class Published:
    """One consistent state of the agent, as every endpoint shows it."""

    telemetry: TelemetrySnapshot
    suggestions_yaml: str = ""
    """Multi-document NetworkPolicy YAML, rendered by the agent; empty: none yet."""


class SnapshotBox:
    """The single mutable cell between the agent and the readers.

    `publish` stores one (generation, value) pair, a single reference and so atomic in
    CPython; readers call `current()` (or `state()`) once per request and use only
    what it returned. The generation counts publications: it tells a renderer that
    reads the box itself (the `/metrics` registry) whether a publish happened meanwhile,
    even if the same value was published again.
    """

    def __init__(self, initial: Published) -> None:
        self._state = (0, initial)
        self._publishing = threading.Lock()  # increments are not atomic across writers

    def publish(self, published: Published) -> None:
        with self._publishing:
            self._state = (self._state[0] + 1, published)

    def current(self) -> Published:
        return self._state[1]

    def state(self) -> tuple[int, Published]:
        """The current value with its publication number (0: the initial value)."""
        return self._state

    def telemetry(self) -> TelemetrySnapshot:
        """A `metrics.SnapshotSource`."""
        return self._state[1].telemetry


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    """0 picks a free port (tests)."""
    tls_cert: str | None = None
    """PEM certificate chain file; with `tls_key`, serve HTTPS only."""
    tls_key: str | None = None
    token: str | None = None
    """Bearer token required on every path but `public_paths`."""
    public_paths: frozenset[str] = frozenset({"/healthz"})
    max_connections: int = 128
    timeout: float = 30.0
    """Socket timeout per connection (TLS handshake, idle keep-alive, slow clients)."""

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both a certificate and a key file")
        if self.token is not None and not self.token.strip():
            raise ValueError("the bearer token is empty")


def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT`, `[IPv6]:PORT` or `:PORT` (loopback) → (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"listen address {text!r} is not HOST:PORT")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return host or DEFAULT_HOST, int(port)


# ------------------------------------------------------------------ the server


class NetwatchServer:
    """HTTP(S) server over a `SnapshotBox`; `start()`, then `stop()` (or use `with`)."""

    def __init__(
        self,
        *,
        config: ServerConfig,
        box: SnapshotBox,
        registry: CollectorRegistry,
        readiness: Mapping[str, Check],
        liveness: Check | None = None,
    ) -> None:
        """`readiness`: named checks that must all hold for `/readyz` (the agent passes
        `capture` — attached — and `inventory` — fresh); a check that raises fails."""
        self.config = config
        self._box = box
        self._registry = registry
        self._readiness = dict(readiness)
        self._liveness = liveness
        self._tls = _tls_context(config) if config.tls_cert else None
        self._slots = threading.BoundedSemaphore(config.max_connections)
        self._lock = threading.Condition()
        self._inflight = 0
        self._open: set[socket.socket] = set()
        self._stopping = False
        self._cache_lock = threading.Lock()  # held only to find a document's cell
        self._cache: _Renderings | None = None
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._httpd = _HTTPServer((self.config.host, self.config.port), app=self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="netwatch-http"
        )
        self._thread.daemon = True
        self._thread.start()
        log.info("serving on %s", self.url)

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("the server is not started")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        host = self.config.host
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if self._tls else 'http'}://{host}:{self.port}"

    def stop(self, *, timeout: float = 5.0) -> None:
        """Stop accepting, let in-flight requests finish, close idle connections."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()  # returns once the accept loop has exited
        with self._lock:
            self._stopping = True
            self._lock.wait_for(lambda: self._inflight == 0, timeout=timeout)
            sockets = list(self._open)
        for sock in sockets:  # idle keep-alive readers see EOF and end their thread
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout)
        log.info("stopped")

    def __enter__(self) -> NetwatchServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ connection bookkeeping

    def _track(self, sock: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._open.add(sock)
            else:
                self._open.discard(sock)

    @contextmanager
    def _request(self) -> Iterator[None]:
        with self._lock:
            self._inflight += 1
        try:
            yield
        finally:
            with self._lock:
                self._inflight -= 1
                self._lock.notify_all()

    # ------------------------------------------------------------------ requests

    def handle_get(self, handler: _Handler) -> None:
        with self._request():
            if self._stopping:
                handler.close_connection = True
            url = urlsplit(handler.path)
            route = _ROUTES.get(url.path)
            if route is None:
                handler.respond(404, TEXT_TYPE, b"not found\n")
                return
            if not self._authorized(url.path, handler.headers.get("Authorization")):
                handler.respond(
                    401,
                    TEXT_TYPE,
                    b"unauthorized\n",
                    headers={"WWW-Authenticate": 'Bearer realm="netwatch"'},
                )
                return
            try:
                status, content_type, body = route(self, handler, dict(parse_qsl(url.query)))
            except _BadRequest as exc:
                handler.respond(400, TEXT_TYPE, f"{exc}\n".encode())
                return
            handler.respond(status, content_type, body)

    def _authorized(self, path: str, header: str | None) -> bool:
        token = self.config.token
        if token is None or path in self.config.public_paths:
            return True
        scheme, _, given = (header or "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(given.strip().encode(), token.encode())

    def _cached(
        self,
        name: str,
        state: tuple[int, Published],
        render: Callable[[], bytes],
        *,
        reads_box: bool = False,
    ) -> bytes:
        """`render()` once per published snapshot and document; concurrent requests wait.

        `state` is the box's `state()` the request read. A request for an older
        snapshot than the cached one renders for itself and keeps nothing. With
        `reads_box`, `render` reads the box itself rather than `state`, so its bytes are
        kept only if nothing was published meanwhile (they are returned either way).
        """
        generation = state[0]
        with self._cache_lock:
            cache = self._cache
            if cache is None or cache.generation < generation:
                cache = self._cache = _Renderings(generation)  # drops the previous snapshot's
            cell = cache.cell(name) if cache.generation == generation else None
        if cell is None:  # stale, or one Accept variant too many
            return render()
        with cell.lock:  # a render of another snapshot or document uses another lock
            if cell.body is None:
                body = render()
                if reads_box and self._box.state()[0] != generation:
                    return body
                cell.body = body
            return cell.body

    def _metrics(self, handler: _Handler, _query: dict[str, str]) -> tuple[int, str, bytes]:
        encoder, content_type = choose_encoder(handler.headers.get("Accept", ""))
        # The content type names the encoder entirely (format, version, escaping).
        body = self._cached(
            f"metrics {content_type}",
            self._box.state(),
            lambda: encoder(self._registry),
            reads_box=True,
        )
        return 200, content_type, body

    def _healthz(self, _handler: _Handler, _query: dict[str, str]) -> tuple[int, str, bytes]:
        if self._liveness is not None and not _holds(self._liveness):
            return 503, TEXT_TYPE, b"not live\n"
        return 200, TEXT_TYPE, b"ok\n"

    def _readyz(self, _handler: _Handler, _query: dict[str, str]) -> tuple[int, str, bytes]:
        results = {name: _holds(check) for name, check in sorted(self._readiness.items())}
        lines = [
            f"[{'+' if ok else '-'}]{name} {'ok' if ok else 'failed'}"
            for name, ok in results.items()
        ]
        ready = all(results.values())
        lines.append(f"readyz check {'passed' if ready else 'failed'}")
        return (200 if ready else 503), TEXT_TYPE, ("\n".join(lines) + "\n").encode()

    def _flows(self, _handler: _Handler, query: dict[str, str]) -> tuple[int, str, bytes]:
        unknown = sorted(set(query) - set(FLOW_LABELS))
        if unknown:
            raise _BadRequest(f"unknown filter(s) {', '.join(unknown)}; filter on {FLOW_LABELS}")
        state = self._box.state()
        published = state[1]
        if query:
            return 200, JSON_TYPE, to_json(flows_document(published.telemetry, query))
        body = self._cached("flows", state, lambda: to_json(flows_document(published.telemetry)))
        return 200, JSON_TYPE, body

    def _findings(self, _handler: _Handler, _query: dict[str, str]) -> tuple[int, str, bytes]:
        state = self._box.state()
        published = state[1]
        body = self._cached(
            "findings", state, lambda: to_json(findings_document(published.telemetry))
        )
        return 200, JSON_TYPE, body

    def _suggestions(self, _handler: _Handler, _query: dict[str, str]) -> tuple[int, str, bytes]:
        text = self._box.current().suggestions_yaml
        return 200, YAML_TYPE, (text or "# no suggestions yet\n").encode()

    def _graph(self, _handler: _Handler, query: dict[str, str]) -> tuple[int, str, bytes]:
        shape = query.get("format", "rows")
        if shape not in ("rows", "frames") or set(query) - {"format"}:
            raise _BadRequest("graph takes only format=rows|frames")
        state = self._box.state()
        published = state[1]
        document = graph_frames if shape == "frames" else graph_document
        body = self._cached(f"graph-{shape}", state, lambda: to_json(document(published.telemetry)))
        return 200, JSON_TYPE, body


_Route = Callable[[NetwatchServer, "_Handler", dict[str, str]], tuple[int, str, bytes]]
_ROUTES: dict[str, _Route] = {
    "/metrics": NetwatchServer._metrics,
    "/healthz": NetwatchServer._healthz,
    "/readyz": NetwatchServer._readyz,
    "/api/flows": NetwatchServer._flows,
    "/api/findings": NetwatchServer._findings,
    "/api/suggestions": NetwatchServer._suggestions,
    "/api/graph": NetwatchServer._graph,
}


class _BadRequest(ValueError):
    pass


class _Cell:
    """One document of one snapshot: rendered by the first request, under `lock`."""

    __slots__ = ("body", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.body: bytes | None = None


class _Renderings:
    """The documents rendered from the snapshot of one generation (the only one kept)."""

    MAX_DOCUMENTS = 8
    """The four JSON documents and a few `/metrics` content types; further Accept
    variants are rendered per request, so odd headers cannot grow the cache."""

    def __init__(self, generation: int) -> None:
        self.generation = generation
        self._cells: dict[str, _Cell] = {}

    def cell(self, name: str) -> _Cell | None:
        """Call under the server's cache lock."""
        cell = self._cells.get(name)
        if cell is None and len(self._cells) < self.MAX_DOCUMENTS:
            cell = self._cells[name] = _Cell()
        return cell


def _holds(check: Check) -> bool:
    try:
        return bool(check())
    except Exception:  # a broken check means "not ready", never a 500
        log.exception("health check failed")
        return False


def _tls_context(config: ServerConfig) -> ssl.SSLContext:
    assert config.tls_cert is not None and config.tls_key is not None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config.tls_cert, config.tls_key)
    return context


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], *, app: NetwatchServer) -> None:
        self.app = app
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.app._slots.acquire(blocking=False):
            log.warning("too many connections; closing one from %s", client_address)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.app._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.app._slots.release()

    def finish_request(self, request: Any, client_address: Any) -> None:
        app = self.app
        request.settimeout(app.config.timeout)
        conn: socket.socket = request
        if app._tls is not None:
            try:  # the handshake runs here, on this connection's thread, under the timeout
                conn = app._tls.wrap_socket(request, server_side=True)
            except (OSError, ssl.SSLError) as exc:
                log.debug("TLS handshake with %s failed: %s", client_address, exc)
                return
        app._track(conn, add=True)
        try:
            super().finish_request(conn, client_address)
        except OSError as exc:  # resets and timeouts of one client are not server errors
            log.debug("connection from %s: %s", client_address, exc)
        finally:
            app._track(conn, add=False)
            if conn is not request:
                conn.close()


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "netwatch"
    sys_version = ""

    def do_GET(self) -> None:
        self.server.app.handle_get(self)

    def _not_allowed(self) -> None:
        self.close_connection = True  # an unread request body must not become a request
        self.respond(405, TEXT_TYPE, b"method not allowed: netwatch is read-only\n", allow=True)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _not_allowed  # noqa: N815

    def respond(
        self,
        status: int,
        content_type: str,
        body: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        allow: bool = False,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        if allow:
            self.send_header("Allow", "GET")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)
