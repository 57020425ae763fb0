"""`netwatch capture`: live connections (eBPF or sniff) or a pcap, as a JSON Lines flow log.

Output (DESIGN §5) goes to stdout or `--out`. By default the capture drains the kernel
every `--drain-interval` seconds, adds the deltas up per connection and writes ONE record
per connection when it ends (`--duration`, SIGINT or SIGTERM). With `--every S` it
writes the connections seen in each S-second window instead (deltas: a consumer sums
them). Status goes to stderr: the backend chosen, the interfaces, and at the end the
counters (`--stats FILE` writes them as JSON: evictions, lost packets, drain method…).

`--backend auto` (default) uses eBPF when the program loads and falls back to sniff
(AF_PACKET), saying which on stderr. `--netns NAME` runs the capture in a node's network
namespace (the lab's nodes) while keeping the host's bpffs, so `--persist` restarts work
there too.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any, TextIO

import click
from pyroute2 import IPRoute

from netwatch.agent.pods import ClusterPods
from netwatch.capture.accumulate import Accumulator
from netwatch.capture.attach import AttachError, LinkSelector, enter_netns, list_links
from netwatch.capture.base import FlowSource
from netwatch.capture.bpf_maps import CaptureSetupError, DrainMethod
from netwatch.capture.ebpf import EbpfOptions, EbpfSource, render_program
from netwatch.capture.flowlog import write_connections
from netwatch.capture.listeners import HostSockets
from netwatch.cli.common import BadInput, load

_log = logging.getLogger("netwatch.capture")


def _say(message: str) -> None:
    sys.stderr.write(f"netwatch: {message}\n")
    sys.stderr.flush()


def cluster_pod_predicate(
    pod_cidrs: Sequence[str], cluster_paths: Sequence[str]
) -> Callable[[str], bool]:
    """Which IPs are cluster pods (the counted-once rule): the agent's `ClusterPods`
    (`--pod-cidr`, the snapshot's pod IPs and node podCIDRs), fixed at start."""
    try:
        pods = ClusterPods(pod_cidrs)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    if cluster_paths:
        pods.update(load(cluster_paths, strict=False).cluster)
    return pods


def _open_sniff(patterns: Sequence[str], node: str | None) -> FlowSource:
    # scapy takes ~0.5 s to import: only the sniff fallback pays for it
    from netwatch.capture.sniff import SniffError, SniffSource  # noqa: PLC0415

    with IPRoute() as ipr:
        names = [link.name for link in LinkSelector(tuple(patterns)).select(list_links(ipr))]
    if not names:
        raise click.ClickException("sniff: no interface matches (use --interface)")
    try:
        return SniffSource(names, node=node, listening=HostSockets())
    except SniffError as exc:
        raise click.ClickException(f"sniff: {exc}") from exc


def _ebpf_options(**kw: Any) -> EbpfOptions:
    return EbpfOptions(
        interfaces=tuple(kw["interfaces"]),
        map_size=kw["map_size"],
        pin_dir=Path(kw["pin_dir"]) if kw["pin_dir"] else None,
        persist=kw["persist"],
        reset=kw["reset"],
        node=kw["node"],
        is_cluster_pod=kw["is_cluster_pod"],
        pods_version=kw.get("pods_version"),
        drain_method=DrainMethod(kw["drain_method"]),
        conntrack=kw["conntrack"],
    )


def _write_stats(path: str | None, source: FlowSource, *, backend: str, records: int) -> None:
    stats: dict[str, Any] = {"backend": backend, "records": records}
    native = getattr(source, "stats", None)
    if native is not None and hasattr(native, "as_dict"):
        stats.update(native.as_dict())
    for name in ("lost", "frames", "skipped", "interfaces_lost"):
        if hasattr(source, name) and name not in stats:
            stats[name] = getattr(source, name)
    summary = ", ".join(
        f"{k} {stats[k]}"
        for k in ("records", "evicted_entries", "lost_packets", "lost", "drain_method")
        if k in stats
    )
    _say(f"done: {summary}")
    if path:
        Path(path).write_text(json.dumps(stats, indent=2, sort_keys=True, default=str) + "\n")


@click.command("capture")
@click.option(
    "--backend",
    type=click.Choice(["auto", "ebpf", "sniff"]),
    default="auto",
    show_default=True,
    help="auto: eBPF when it loads, else sniff.",
)
@click.option(
    "--interface",
    "interfaces",
    multiple=True,
    metavar="IF",
    help="Interface name or fnmatch pattern (repeatable). Default: every pod "
    "veth (veth without an address of its own); eBPF also attaches to "
    "matching links that appear later.",
)
@click.option(
    "--duration",
    type=float,
    default=None,
    metavar="S",
    help="Stop after S seconds (default: until SIGINT/SIGTERM).",
)
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write JSON Lines here instead of stdout.",
)
@click.option(
    "--pcap",
    "pcap_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Read connections from a pcap/pcapng file instead of capturing.",
)
@click.option("--print-bpf", is_flag=True, help="Print the eBPF program and its -D flags.")
@click.option(
    "--map-size",
    type=click.IntRange(min=16),
    default=65536,
    show_default=True,
    help="Entries of each of the two in-kernel LRU flow maps (-DNW_MAP_SIZE).",
)
@click.option(
    "--every",
    type=float,
    default=None,
    metavar="S",
    help="Write each S-second window's connections (deltas) instead of one "
    "record per connection at the end.",
)
@click.option("--drain-interval", type=float, default=1.0, show_default=True, metavar="S")
@click.option("--netns", default=None, help="Capture in this network namespace (node).")
@click.option("--node-name", "node", default=None, help="`node` of the records.")
@click.option(
    "--pod-cidr",
    "pod_cidrs",
    multiple=True,
    metavar="CIDR",
    help="Cluster pod CIDR (repeatable): connections to these are reported by "
    "the server pod's node only.",
)
@click.option(
    "--cluster",
    "cluster_paths",
    multiple=True,
    type=click.Path(path_type=str),
    help="Cluster snapshot: its pod IPs count as cluster pods too.",
)
@click.option(
    "--persist",
    is_flag=True,
    help="eBPF: leave programs attached and maps pinned on exit, so the next "
    "capture continues without loss or double counting.",
)
@click.option(
    "--reset",
    is_flag=True,
    help="eBPF: drop leftover programs and pinned maps (and their counts) first.",
)
@click.option("--pin-dir", default=None, help="eBPF: bpffs directory for the pinned maps.")
@click.option(
    "--drain-method",
    type=click.Choice(["auto", "batch", "per-key", "lookup-delete"]),
    default="auto",
    show_default=True,
    help="eBPF: map drain (auto detects).",
)
@click.option("--no-conntrack", is_flag=True, help="Do not resolve ClusterIPs via conntrack.")
@click.option(
    "--stats",
    "stats_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write capture counters as JSON here at the end.",
)
@click.option("-v", "--verbose", is_flag=True, help="Log attach/detach events to stderr.")
def capture(
    backend: str,
    interfaces: tuple[str, ...],
    duration: float | None,
    out_path: str | None,
    pcap_path: str | None,
    print_bpf: bool,
    map_size: int,
    every: float | None,
    drain_interval: float,
    netns: str | None,
    node: str | None,
    pod_cidrs: tuple[str, ...],
    cluster_paths: tuple[str, ...],
    persist: bool,
    reset: bool,
    pin_dir: str | None,
    drain_method: str,
    no_conntrack: bool,
    stats_path: str | None,
    verbose: bool,
) -> None:
    """Capture connections as JSON Lines (DESIGN §5)."""
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO if verbose else logging.WARNING,
        format="netwatch: %(message)s",
    )
    if netns:
        try:
            enter_netns(netns)  # before any thread exists: they inherit it
        except AttachError as exc:
            raise BadInput(str(exc)) from exc
    node = node or netns or socket.gethostname()
    options = _ebpf_options(
        interfaces=interfaces,
        map_size=map_size,
        pin_dir=pin_dir,
        persist=persist,
        reset=reset,
        node=node,
        drain_method=drain_method,
        conntrack=not no_conntrack,
        is_cluster_pod=None,
    )
    if print_bpf:
        click.echo(render_program(options), nl=False)
        return
    if (
        (duration is not None and duration <= 0)
        or drain_interval <= 0
        or (every is not None and every <= 0)
    ):
        raise BadInput("--duration, --every and --drain-interval must be positive")
    with ExitStack() as stack:
        out: TextIO = (
            stack.enter_context(open(out_path, "w", encoding="utf-8")) if out_path else sys.stdout
        )
        if pcap_path:
            _from_pcap(pcap_path, out=out, node=node, interfaces=interfaces)
            return
        # Only now: the predicate may load cluster snapshots, which --print-bpf never needs.
        options = dataclasses.replace(
            options, is_cluster_pod=cluster_pod_predicate(pod_cidrs, cluster_paths)
        )
        # Handlers first: a SIGTERM during the compile must still end in a clean detach.
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        source, chosen = _open_live(backend, options, interfaces=interfaces, node=node)
        _say(
            f"capturing with {chosen} on {', '.join(_interfaces_of(source)) or 'no interface yet'}"
        )
        _run(
            source,
            stop=stop,
            out=out,
            duration=duration,
            every=every,
            drain_interval=drain_interval,
            stats_path=stats_path,
            backend=chosen,
        )


def _interfaces_of(source: FlowSource) -> list[str]:
    names = getattr(source, "interfaces", ())
    return list(names)


def _open_live(
    backend: str, options: EbpfOptions, *, interfaces: Sequence[str], node: str
) -> tuple[FlowSource, str]:
    if backend in ("ebpf", "auto"):
        try:
            return EbpfSource(options), "ebpf"
        except CaptureSetupError as exc:
            if backend == "ebpf":
                raise click.ClickException(f"ebpf backend unavailable: {exc}") from exc
            _say(f"ebpf backend unavailable ({exc}); falling back to sniff")
    return _open_sniff(interfaces, node), "sniff"


def _run(
    source: FlowSource,
    *,
    stop: threading.Event,
    out: TextIO,
    duration: float | None,
    every: float | None,
    drain_interval: float,
    stats_path: str | None,
    backend: str,
) -> None:
    start = time.monotonic()
    deadline = start + duration if duration is not None else None
    window_end = start + every if every is not None else None
    acc = Accumulator()
    records = 0
    try:
        while not stop.is_set() and not source.finished:
            now = time.monotonic()
            wake = now + drain_interval
            if deadline is not None:
                wake = min(wake, deadline)
            stop.wait(max(0.0, wake - now))
            acc.add(source.drain())
            now = time.monotonic()
            if window_end is not None and now >= window_end:
                records += write_connections(acc.connections(), out)
                acc = Accumulator()
                window_end += every or 0.0
            if deadline is not None and now >= deadline:
                break
    finally:
        halt = getattr(source, "stop", None)
        if callable(halt):
            halt()  # eBPF: detach first, so the last drain misses nothing
        acc.add(source.drain())
        source.close()
        acc.add(source.drain())  # sniff: what was still queued in its sockets
        records += write_connections(acc.connections(), out)
        _write_stats(stats_path, source, backend=backend, records=records)


def _from_pcap(path: str, *, out: TextIO, node: str, interfaces: Sequence[str]) -> None:
    from netwatch.capture.pcap import PcapError, PcapSource  # noqa: PLC0415 - scapy, slow

    try:
        source = PcapSource(
            path, node=node, interface=interfaces[0] if interfaces else None, strict=True
        )
        acc = Accumulator()
        while not source.finished:
            acc.add(source.drain())
        source.close()
    except PcapError as exc:
        raise BadInput(str(exc)) from exc
    except OSError as exc:
        raise BadInput(f"{path}: {exc.strerror or exc}") from exc
    write_connections(acc.connections(), out)
