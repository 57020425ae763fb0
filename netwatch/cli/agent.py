"""`netwatch agent`: the per-node daemon (DESIGN §4; the wiring is `netwatch.agent`).

This module only parses flags (each also read from a `NETWATCH_*` environment variable,
for the DaemonSet), builds the capture source the way `netwatch capture` does (its
helpers, not a copy) and the inventory feed, installs SIGTERM/SIGINT handlers and runs
the agent until one arrives. Logs are JSON lines on stderr.

Inventory: `--cluster PATH` (repeatable; snapshot files, reloaded when they change),
else `--kubeconfig K`, else in-cluster configuration. Capture: `--backend auto` (eBPF,
falling back to sniff), `ebpf`, `sniff`, or `replay --flows F.jsonl` (tests, demos).
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from dataclasses import replace
from pathlib import Path

import click

from netwatch.agent import DEFAULT_DRAIN_INTERVAL, DEFAULT_MAX_STALE, Agent, AgentConfig
from netwatch.agent.inventory import BufferedSink, InventoryFeed, LiveFeed, SnapshotFeed
from netwatch.agent.logs import setup_logging
from netwatch.agent.pods import ClusterPods
from netwatch.agent.state import StateDir, StateDirError
from netwatch.capture.attach import AttachError, enter_netns
from netwatch.capture.base import FlowSource
from netwatch.capture.flowlog import FlowLogError
from netwatch.capture.replay import ReplaySource
from netwatch.cli.capture import _ebpf_options, _open_live
from netwatch.cli.common import BadInput, ipblock_option
from netwatch.cli.inventory import parse_named_cidrs
from netwatch.core.engine import IPBlockPodIPs
from netwatch.server import ServerConfig, parse_listen

log = logging.getLogger("netwatch.agent")


def _open_flows(
    backend: str,
    *,
    flows_path: str | None,
    interfaces: tuple[str, ...],
    node: str,
    pods: ClusterPods,
    persist: bool,
    journal_dir: Path | None,
    map_size: int,
) -> tuple[FlowSource, str]:
    if backend == "replay":
        if not flows_path:
            raise BadInput("--backend replay needs --flows FILE")
        if journal_dir is not None:
            raise BadInput(
                "--state-dir does not go with --backend replay (a restart replays the file)"
            )
        try:
            return ReplaySource.from_file(flows_path), "replay"
        except FlowLogError as exc:
            raise BadInput(str(exc)) from exc
    if flows_path:
        raise BadInput("--flows is only for --backend replay")
    options = _ebpf_options(
        interfaces=interfaces,
        map_size=map_size,
        pin_dir=None,
        persist=persist,
        reset=False,
        node=node,
        drain_method="auto",
        conntrack=True,
        is_cluster_pod=pods,
        pods_version=lambda: pods.version,
    )
    options = replace(options, journal_dir=journal_dir)
    if backend == "sniff":
        return _open_live("sniff", options, interfaces=interfaces, node=node)
    return _open_live(backend, options, interfaces=interfaces, node=node)


def _state_dir(path: Path | None) -> StateDir | None:
    if path is None:
        return None
    try:
        return StateDir(path)
    except StateDirError as exc:
        raise BadInput(str(exc)) from exc


def _server_config(
    listen: str, tls_cert: str | None, tls_key: str | None, token_file: str | None
) -> ServerConfig:
    try:
        host, port = parse_listen(listen)
        token = Path(token_file).read_text(encoding="utf-8").strip() if token_file else None
        return ServerConfig(host=host, port=port, tls_cert=tls_cert, tls_key=tls_key, token=token)
    except (ValueError, OSError) as exc:
        raise BadInput(str(exc)) from exc


@click.command("agent")
@click.option(
    "--cluster",
    "cluster_paths",
    multiple=True,
    type=click.Path(path_type=str),
    envvar="NETWATCH_CLUSTER",
    help="Snapshot file or directory (reloaded on change); repeatable. Else the API server.",
)
@click.option("--kubeconfig", envvar="NETWATCH_KUBECONFIG", default=None, help="Else in-cluster.")
@click.option("--node-name", "node", envvar="NETWATCH_NODE_NAME", default=None, help="This node.")
@click.option(
    "--listen",
    envvar="NETWATCH_LISTEN",
    default="127.0.0.1:9810",
    show_default=True,
    help="HOST:PORT of the HTTP server (/metrics, /readyz, /api/...).",
)
@click.option(
    "--backend",
    envvar="NETWATCH_BACKEND",
    type=click.Choice(["auto", "ebpf", "sniff", "replay"]),
    default="auto",
    show_default=True,
)
@click.option("--flows", "flows_path", default=None, help="Flow log for --backend replay.")
@click.option(
    "--interface",
    "interfaces",
    multiple=True,
    envvar="NETWATCH_INTERFACES",
    help="Link name pattern to capture on (default: every veth); repeatable.",
)
@click.option(
    "--drain-interval",
    type=float,
    envvar="NETWATCH_DRAIN_INTERVAL",
    default=DEFAULT_DRAIN_INTERVAL,
    show_default=True,
    metavar="S",
)
@click.option(
    "--max-stale",
    type=float,
    envvar="NETWATCH_MAX_STALE",
    default=DEFAULT_MAX_STALE,
    show_default=True,
    metavar="S",
    help="Seconds of stale inventory before /readyz fails.",
)
@click.option(
    "--suggest-interval",
    type=float,
    envvar="NETWATCH_SUGGEST_INTERVAL",
    default=60.0,
    show_default=True,
    metavar="S",
    help="Seconds between re-computations of /api/suggestions.",
)
@click.option(
    "--tls-cert", envvar="NETWATCH_TLS_CERT", default=None, type=click.Path(dir_okay=False)
)
@click.option("--tls-key", envvar="NETWATCH_TLS_KEY", default=None, type=click.Path(dir_okay=False))
@click.option(
    "--token-file",
    envvar="NETWATCH_TOKEN_FILE",
    default=None,
    type=click.Path(dir_okay=False),
    help="Bearer token required on every path but /healthz.",
)
@click.option("--cidr", "cidrs", multiple=True, envvar="NETWATCH_CIDRS", metavar="NAME=CIDR")
@click.option("--pod-cidr", "pod_cidrs", multiple=True, envvar="NETWATCH_POD_CIDRS")
@ipblock_option
@click.option("--netns", default=None, help="Capture in this network namespace (a lab node).")
@click.option("--persist", is_flag=True, help="eBPF: keep programs and maps across restarts.")
@click.option(
    "--map-size",
    envvar="NETWATCH_MAP_SIZE",
    type=click.IntRange(min=16),
    default=65536,
    show_default=True,
    help="eBPF: entries of each of the two in-kernel flow maps (168 bytes each); the "
    "active one is checked every 250 ms and emptied from "
    "half full. Size it above 4 x (new entries in 250 ms) and, so that a busy connection "
    "is one entry per drain, above 2 x (connections active in a drain interval) — a "
    "connection between two pods of the node takes an entry per veth. Overflow shows in "
    "netwatch_capture_lost_total.",
)
@click.option(
    "--state-dir",
    envvar="NETWATCH_STATE_DIR",
    default=None,
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep counters (checkpoint) and drained data (journal) here across restarts.",
)
@click.option(
    "--log-level",
    envvar="NETWATCH_LOG_LEVEL",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
def agent(
    cluster_paths: tuple[str, ...],
    kubeconfig: str | None,
    node: str | None,
    listen: str,
    backend: str,
    flows_path: str | None,
    interfaces: tuple[str, ...],
    drain_interval: float,
    max_stale: float,
    suggest_interval: float,
    tls_cert: str | None,
    tls_key: str | None,
    token_file: str | None,
    cidrs: tuple[str, ...],
    pod_cidrs: tuple[str, ...],
    ipblock_pod_ips: str,
    netns: str | None,
    persist: bool,
    map_size: int,
    state_dir: Path | None,
    log_level: str,
) -> None:
    """Capture, attribute and evaluate this node's connections; serve metrics and API."""
    setup_logging(level=getattr(logging, log_level.upper()))
    if cluster_paths and kubeconfig:
        raise BadInput("--cluster and --kubeconfig are exclusive")
    if netns:
        try:
            enter_netns(netns)  # before any thread exists: they inherit it
        except AttachError as exc:
            raise BadInput(str(exc)) from exc
    node = node or netns or socket.gethostname()
    try:
        config = AgentConfig(
            node=node,
            drain_interval=drain_interval,
            max_stale=max_stale,
            suggest_interval=suggest_interval,
            ipblock_pod_ips=IPBlockPodIPs(ipblock_pod_ips),
            named_cidrs=parse_named_cidrs(cidrs),
            pod_cidrs=pod_cidrs,
            backend=backend,
        )
    except ValueError as exc:
        raise BadInput(str(exc)) from exc
    server = _server_config(listen, tls_cert, tls_key, token_file)
    stop = threading.Event()
    for sig in (
        signal.SIGINT,
        signal.SIGTERM,
    ):  # before the compile: a SIGTERM then still ends cleanly
        signal.signal(sig, lambda *_: stop.set())
    try:
        pods = ClusterPods(pod_cidrs)
    except ValueError as exc:
        raise BadInput(str(exc)) from exc
    state = _state_dir(state_dir)
    flows, chosen = _open_flows(
        backend,
        flows_path=flows_path,
        interfaces=interfaces,
        node=node,
        pods=pods,
        persist=persist,
        journal_dir=state.journal_dir if state is not None else None,
        map_size=map_size,
    )
    sink = BufferedSink()
    feed: InventoryFeed = (
        SnapshotFeed(cluster_paths, sink, clock=time.time)
        if cluster_paths
        else LiveFeed.from_config(sink, kubeconfig=kubeconfig, clock=time.time)
    )
    the_agent = Agent(
        config=replace(config, backend=chosen),
        flows=flows,
        inventory=feed,
        sink=sink,
        server=server,
        state=state,
        pods=pods,
    )
    try:
        the_agent.start()
    except OSError as exc:
        flows.close()
        raise click.ClickException(f"cannot serve on {listen}: {exc}") from exc
    the_agent.run(stop)
