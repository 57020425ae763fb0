"""`netwatch inventory`: what each IP is — pod, Service, node or external (DESIGN §4).

Snapshot files (`--cluster`) do not say since when their objects exist, so they are
loaded as present from `-inf` (each pod bounded by its creationTimestamp when known):
any `--at` sees the snapshot's state, except that Succeeded/Failed pods own no IP.
`--kubeconfig` lists every kind once through the live source and treats that list the
same way, like `kubectl get`; the agent is what keeps a watched, time-aware history.
"""

from __future__ import annotations

import ipaddress
import math
import re
import sys
import threading
import time
from collections.abc import Sequence
from datetime import datetime

import click

from netwatch.cli.common import (
    BadInput,
    load,
    output_format,
    output_option,
    stdout_console,
)
from netwatch.core.identity import Identity, IdentityIndex
from netwatch.core.inventory import InventoryEvent, InventoryObject, ObjectKind
from netwatch.core.store import InventoryStore
from netwatch.render.inventory import inventory_to_dict, render_inventory_table
from netwatch.render.output import OutputFormat, emit

_EPOCH = re.compile(r"-?\d+(\.\d+)?")
_CIDR_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
LIST_TIMEOUT = 30.0
"""Seconds `--kubeconfig` waits for the first list of every kind."""


def parse_time(text: str, flag: str = "--at") -> float:
    """Epoch seconds (`1764250000.5`) or RFC 3339 (`2025-11-27T13:26:40Z`, with offset)."""
    value = text.strip()
    if _EPOCH.fullmatch(value):
        return float(value)
    try:
        moment = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        raise BadInput(
            f"{flag} {text!r}: expected epoch seconds or an RFC 3339 time "
            "such as 2025-11-27T13:26:40Z"
        ) from None
    if moment.tzinfo is None:
        raise BadInput(f"{flag} {text!r}: RFC 3339 needs a UTC offset (Z or ±HH:MM)")
    return moment.timestamp()


def parse_named_cidrs(values: tuple[str, ...]) -> dict[str, str]:
    """`NAME=CIDR` options to the index's configuration; bad entries are exit 2."""
    named: dict[str, str] = {}
    for item in values:
        name, eq, cidr = item.partition("=")
        if not eq or not _CIDR_NAME.fullmatch(name):
            raise BadInput(f"--cidr {item!r}: expected NAME=CIDR, e.g. corp-vpn=10.8.0.0/16")
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError as exc:
            raise BadInput(f"--cidr {item!r}: {exc}") from None
        named[name] = cidr
    return named


def _ips(values: tuple[str, ...]) -> list[str]:
    """Requested IPs in canonical spelling, in the order given, without repeats."""
    out: list[str] = []
    for value in values:
        try:
            ip = ipaddress.ip_address(value).compressed
        except ValueError:
            raise BadInput(f"{value!r} is not an IP address") from None
        if ip not in out:
            out.append(ip)
    return out


class _ListedOnce:
    """An InventorySink taking only the live source's lists, each as a snapshot (`-inf`).

    A one-shot answer reads one list of each kind, like `kubectl get`; watch events that
    race with the lists are dropped, and nothing is taken once `close()` has returned.
    """

    def __init__(self, store: InventoryStore) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._closed = False

    def replace(self, kind: ObjectKind, objects: Sequence[InventoryObject], *, at: float) -> None:
        with self._lock:
            if not self._closed:
                self._store.replace(kind, objects, at=-math.inf)

    def apply(self, event: InventoryEvent) -> None:
        pass

    def close(self) -> None:
        with self._lock:
            self._closed = True


def _load_live(kubeconfig: str, *, index: IdentityIndex) -> None:
    """One list of every kind through the live source into `index`."""
    try:
        from netwatch.k8s.live import LiveSource  # noqa: PLC0415 - only --kubeconfig needs it
    except ImportError:  # pragma: no cover - the live source ships with this command
        raise BadInput(
            f"--kubeconfig {kubeconfig}: the live Kubernetes source is not part of this "
            "build; dump the cluster and use --cluster instead"
        ) from None
    store = InventoryStore(index=index)
    sink = _ListedOnce(store)
    try:
        source = LiveSource.from_config(sink, kubeconfig=kubeconfig)
    except Exception as exc:  # unreadable or invalid kubeconfig: the user's to fix
        raise BadInput(f"--kubeconfig {kubeconfig}: {exc}") from None
    source.start()
    try:
        synced = source.wait_synced(LIST_TIMEOUT)
        sink.close()
        pending = sorted(k.value for k, h in source.health().items() if not h.synced)
    finally:
        source.stop(timeout=5.0)
    if not synced:
        raise BadInput(
            f"--kubeconfig {kubeconfig}: could not list {', '.join(pending) or 'the cluster'} "
            f"within {LIST_TIMEOUT:.0f}s"
        )


@click.command()
@click.option(
    "--cluster",
    "cluster_paths",
    multiple=True,
    type=click.Path(path_type=str),
    help="Snapshot file or directory (kubectl get -o yaml/json); repeatable.",
)
@click.option(
    "--kubeconfig",
    type=click.Path(path_type=str),
    help="Read the cluster from the API instead of files (exclusive with --cluster).",
)
@click.option(
    "--strict", is_flag=True, help="Treat any invalid or unreadable object as fatal (exit 2)."
)
@click.option(
    "--at",
    "at_text",
    metavar="TIME",
    help="Epoch seconds or RFC 3339 time to resolve at; default: now.",
)
@click.option(
    "--cidr",
    "cidrs",
    multiple=True,
    metavar="NAME=CIDR",
    help="Name an external range (longest prefix wins; others are 'world'); repeatable.",
)
@output_option
@click.argument("ip_args", metavar="[IP]...", nargs=-1)
def inventory(
    cluster_paths: tuple[str, ...],
    kubeconfig: str | None,
    strict: bool,
    at_text: str | None,
    cidrs: tuple[str, ...],
    output: str,
    ip_args: tuple[str, ...],
) -> None:
    """What each IP is: pod (with its workload), Service, node or external.

    Without IPs, lists every pod, Service and node IP known at --at, sorted.
    """
    if cluster_paths and kubeconfig:
        raise click.UsageError("--cluster and --kubeconfig are mutually exclusive")
    if not cluster_paths and not kubeconfig:
        raise click.UsageError("one of --cluster or --kubeconfig is required")
    at = time.time() if at_text is None else parse_time(at_text)
    if not math.isfinite(at):
        raise BadInput(f"--at {at_text!r}: not a finite time")
    try:
        index = IdentityIndex(named_cidrs=parse_named_cidrs(cidrs))
    except ValueError as exc:  # two names for one range
        raise BadInput(f"--cidr: {exc}") from None
    ips = _ips(ip_args)
    if kubeconfig:
        _load_live(kubeconfig, index=index)
    else:
        InventoryStore.from_cluster(load(cluster_paths, strict=strict).cluster, index=index)
    entries: list[tuple[str, Identity]] = (
        [(ip, index.lookup(ip, at)) for ip in ips] if ips else index.owned(at)
    )
    fmt = output_format(output)
    if fmt is OutputFormat.TABLE:
        render_inventory_table(entries, at=at, console=stdout_console())
    else:
        emit(inventory_to_dict(entries), fmt, sys.stdout)
