"""The server renders each document once per published snapshot (`netwatch.server`).

Real HTTP against the real server on 127.0.0.1:0 (the `Server` helper of
`test_server`); the renderers are wrapped to count their calls. Asserted: N scrapes of
one snapshot render it once, concurrent ones too and all get the same bytes; a publish
changes the body; each negotiated content type is its own rendering, byte for byte the
uncached one; and a publish during a render never leaves a body under the wrong snapshot.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from prometheus_client.exposition import choose_encoder

import netwatch.server
from netwatch.core.telemetry import TelemetrySnapshot
from netwatch.metrics import TelemetryCollector, build_registry
from netwatch.server import Published, ServerConfig
from tests.telemetry_builders import BUILD, T0
from tests.unit.test_server import Server, shop_snapshot

PLAIN = ""
TEXT_1 = "text/plain; version=1.0.0; escaping=underscores"
OPENMETRICS = "application/openmetrics-text; version=1.0.0"
OPENMETRICS_BARE = "application/openmetrics-text"


@pytest.fixture
def served() -> Iterator[Server]:
    s = Server(config=ServerConfig(port=0))
    yield s
    s.server.stop()


def count_calls(
    monkeypatch: pytest.MonkeyPatch,
    owner: object,
    name: str,
    *,
    before: Callable[[], object] = lambda: None,
) -> list[int]:
    """Wrap `owner.name`: each call appends to the returned list, runs `before`, delegates."""
    calls: list[int] = []
    original = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        before()
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)
    return calls


def scrape(served: Server, *, accept: str = PLAIN, path: str = "/metrics") -> tuple[str, bytes]:
    c = served.connection()
    try:
        c.request("GET", path, headers={"Accept": accept} if accept else {})
        response = c.getresponse()
        body = response.read()
        assert response.status == 200
        return response.getheader("Content-Type", ""), body
    finally:
        c.close()


def uncached(snap: TelemetrySnapshot, accept: str = PLAIN) -> tuple[str, bytes]:
    """What `/metrics` served before the cache: the encoder over a fresh registry."""
    encoder, content_type = choose_encoder(accept)
    return content_type, encoder(build_registry(lambda: snap))


def later_snapshot() -> Published:
    return Published(TelemetrySnapshot.empty(build=BUILD, at=T0 + 99))


def test_scrapes_of_one_snapshot_render_it_once(
    served: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    renders = count_calls(monkeypatch, TelemetryCollector, "collect")
    bodies = {scrape(served)[1] for _ in range(5)}
    assert len(renders) == 1
    assert len(bodies) == 1


def test_publishing_a_snapshot_renders_and_serves_the_new_one(
    served: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    renders = count_calls(monkeypatch, TelemetryCollector, "collect")
    _, before = scrape(served)
    later = later_snapshot()
    served.box.publish(later)
    _, after = scrape(served)
    _, again = scrape(served)
    assert before != after == again
    assert len(renders) == 2
    monkeypatch.undo()
    assert after == uncached(later.telemetry)[1]


@pytest.mark.parametrize(
    ("path", "owner", "name"),
    [
        ("/metrics", TelemetryCollector, "collect"),
        ("/api/flows", netwatch.server, "flows_document"),
    ],
)
def test_concurrent_requests_for_one_snapshot_render_once_and_get_the_same_bytes(
    served: Server, monkeypatch: pytest.MonkeyPatch, path: str, owner: object, name: str
) -> None:
    renders = count_calls(monkeypatch, owner, name, before=lambda: time.sleep(0.2))
    start = threading.Barrier(16)

    def request(_: int) -> bytes:
        start.wait(5)
        return scrape(served, path=path)[1]

    with ThreadPoolExecutor(max_workers=16) as pool:
        bodies = set(pool.map(request, range(16)))
    assert len(renders) == 1
    assert len(bodies) == 1


@pytest.mark.parametrize("accept", [PLAIN, TEXT_1, OPENMETRICS, OPENMETRICS_BARE])
def test_a_cached_body_is_byte_identical_to_the_uncached_rendering(
    served: Server, accept: str
) -> None:
    expected = uncached(served.box.current().telemetry, accept)
    assert scrape(served, accept=accept) == expected  # rendered
    assert scrape(served, accept=accept) == expected  # served from the cache


def test_each_content_type_is_rendered_once_per_snapshot(
    served: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    renders = count_calls(monkeypatch, TelemetryCollector, "collect")
    first = [scrape(served, accept=accept) for accept in (PLAIN, OPENMETRICS, PLAIN, OPENMETRICS)]
    assert len(renders) == 2
    assert first[0] == first[2] != first[1] == first[3]


def test_a_publish_during_a_render_is_never_served_for_another_snapshot(
    served: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The registry reads the box itself; a publish mid-render must not be cached.

    The first render sees a later snapshot published and then the first one published
    again (same object): keyed on identity, the later body would be served for it.
    """
    first = served.box.current()
    expected = uncached(first.telemetry)
    newer = uncached(later_snapshot().telemetry)[1]
    original = TelemetryCollector.collect
    renders: list[int] = []

    def collect(self: TelemetryCollector) -> Iterator[Any]:
        renders.append(1)
        if len(renders) > 1:
            return original(self)
        served.box.publish(later_snapshot())
        families = list(original(self))
        served.box.publish(first)
        return iter(families)

    monkeypatch.setattr(TelemetryCollector, "collect", collect)
    _, during = scrape(served)
    assert during == newer  # one consistent snapshot, only a newer one
    assert scrape(served) == expected
    assert len(renders) == 2


def test_stale_requests_do_not_evict_the_current_snapshot(
    served: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    served.box.publish(Published(shop_snapshot()))
    scrape(served)  # generation 1 is cached
    renders = count_calls(monkeypatch, TelemetryCollector, "collect")
    served.server._cached("metrics x", (0, served.box.current()), bytes)  # a late request
    scrape(served)
    assert renders == []
