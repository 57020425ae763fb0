"""50 concurrent scrapers against a publishing agent: it stays responsive (issue 6).

One agent (replay backend, snapshot file of 20 single-pod workloads, a fake clock) serves
on 127.0.0.1:0 while a thread keeps stepping it: every drain brings `PER_DRAIN` new
connections spread over the 380 ordered workload pairs. Meanwhile 50 client threads
loop over `/metrics` (and every tenth request `/api/flows`) for a few seconds. Asserted:

- every response is 200;
- every `/metrics` body parses (`prometheus_client.parser`) and is one snapshot, not a
  torn mix of two: every connection carries the same packets and bytes, so across each
  body sum(packets) = 5 * sum(flows) and sum(bytes) = 320 * sum(flows), and the flow
  count is a whole number of drains;
- each client sees the counters never go back;
- p99 latency stays under 2 s — responsiveness, not speed.
"""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from netwatch.core.flow import Connection
from tests.unit.agent_fixtures import CLUSTER, INGRESS, POD, Clock, conn, make_agent

WORKLOADS = 20
PER_DRAIN = 250
CLIENTS = 50
SECONDS = 4.0
P99_BOUND = 2.0

POLICY = INGRESS.format(target="w0", source="w1")


def ip(i: int) -> str:
    return f"10.42.0.{10 + i}"


def drains(clock: Clock) -> Iterator[Sequence[Connection]]:
    """Endless drains of PER_DRAIN new connections (fresh client ports) over random pairs."""
    rng = random.Random(6)
    port = 20000
    yield []  # the drain in start()
    while True:
        batch = []
        for _ in range(PER_DRAIN):
            a, b = rng.sample(range(WORKLOADS), 2)
            port += 1
            batch.append(conn(ip(a), ip(b), 8080, at=clock.now - 0.6, cport=port))
        yield batch


def totals(body: str) -> dict[str, float]:
    out = dict.fromkeys(("flows", "packets", "bytes"), 0.0)
    names = {
        "netwatch_flows_total": "flows",
        "netwatch_flow_packets_total": "packets",
        "netwatch_flow_bytes_total": "bytes",
    }
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            key = names.get(s.name)
            if key is not None:
                out[key] += s.value
    return out


def test_fifty_concurrent_scrapes_while_publishing(tmp_path: Path) -> None:
    pods = "".join(POD.format(name=f"w{i}", ip=ip(i), port=8080) for i in range(WORKLOADS))
    clock = Clock()
    agent, _ = make_agent(tmp_path, drains(clock), clock, cluster_yaml=CLUSTER + pods + POLICY)
    agent.start()
    stop = threading.Event()
    problems: list[str] = []
    latencies: list[float] = []
    bodies: list[list[str]] = [[] for _ in range(CLIENTS)]
    flow_bodies: set[str] = set()
    lock = threading.Lock()

    def stepper() -> None:
        while not stop.is_set():
            clock.now += 5.0
            agent.step()
            time.sleep(0.2)

    def client(n: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            path = "/api/flows" if (i + n) % 10 == 0 else "/metrics"
            t = time.perf_counter()
            try:
                with urllib.request.urlopen(agent.server.url + path, timeout=30) as resp:
                    status, body = resp.status, resp.read().decode()
            except Exception as exc:
                with lock:
                    problems.append(f"{path}: {exc!r}")
                continue
            elapsed = time.perf_counter() - t
            with lock:
                latencies.append(elapsed)
                if status != 200:
                    problems.append(f"{path}: status {status}")
                elif path == "/metrics":
                    bodies[n].append(body)
                else:
                    flow_bodies.add(body)

    threads = [threading.Thread(target=stepper)]
    threads += [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    try:
        for t in threads:
            t.start()
        time.sleep(SECONDS)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
        agent.shutdown()
    assert not any(t.is_alive() for t in threads)
    assert problems == []
    # Parsing is done afterwards, once per distinct body (scrapes between two drains
    # read one snapshot), so the test's own CPU does not slow the server it measures.
    parsed = {body: totals(body) for body in {b for seen in bodies for b in seen}}
    for body in flow_bodies:
        assert isinstance(json.loads(body), dict)
    for seen in bodies:
        last = 0.0
        for body in seen:
            sums = parsed[body]
            flows = sums["flows"]
            assert sums["packets"] == 5 * flows and sums["bytes"] == 320 * flows, sums
            assert flows % PER_DRAIN == 0, f"{flows} is not a whole number of drains"
            assert flows >= last, f"flows_total went back: {last} -> {flows}"
            last = flows
    assert agent.drains > 10, "the drains kept publishing"
    assert len(latencies) >= 2 * CLIENTS
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    assert p99 < P99_BOUND, f"p99 {p99:.3f} s over {len(latencies)} requests"
