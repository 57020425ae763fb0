"""The eBPF capture backend (bcc): TC programs on pod veths, in-kernel counters, deltas.

Neighbours: `bpf/flows.c` (the program: strategy, limits and fallbacks in its header),
`kernel_src` (headers for bcc), `bpffs` (pinning, scope lock), `attach` (TC clsact),
`netlink_watch` (veths that appear later), `listeners` + `conntrack` + `assemble`
(orientation, ClusterIP, counted-once). Owners use it as a `FlowSource`:

    source = EbpfSource(EbpfOptions(...))   # compiles, loads, attaches
    while running: emit(source.drain())     # deltas since the previous drain
    source.stop(); emit(source.drain()); source.close()

or, keeping a busy node's drain small in memory, `for part in source.drain_parts(): ...`
(`capture.base.Parted`).

`stop()` detaches first so the final drain misses nothing; with `persist=True` it leaves
the programs attached and the maps pinned instead, and the next process — attaching with
`replace`, no gap — drains what this one did not: a restart neither loses nor
double-counts. A thread of its own (`emptier`) watches the kernel map every 250 ms and
empties it into memory from half full, so the Python processing in `drain()` never lets
the LRU map fill and evict; what it takes waits packed (`layout.Batch`, 100 bytes an
entry). Draining (batch lookup-and-delete with fallbacks) lives in `bpf_maps`, decoding
and the counted-once rule in `assemble`, the process's own memory in `heap`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute

from netwatch.capture import bpffs
from netwatch.capture.assemble import Assembler
from netwatch.capture.attach import LinkInfo, LinkSelector, TcAttacher, list_links
from netwatch.capture.bpf_maps import (
    BPF_MAP_TYPE_ARRAY,
    BPF_MAP_TYPE_HASH_LRU,
    BPF_MAP_TYPE_PERCPU_ARRAY,
    FLOW_MAPS,
    STAT_NAMES,
    CaptureSetupError,
    DrainMethod,
    MapDrainer,
)
from netwatch.capture.conntrack import ConntrackReader
from netwatch.capture.emptier import CaptureStats, MapEmptier
from netwatch.capture.heap import keep_batches_off_the_heap, return_compiler_memory, trim_heap
from netwatch.capture.journal import Journal, JournalError
from netwatch.capture.kernel_src import ensure_kernel_source
from netwatch.capture.layout import KEY, VALUE, batch_of
from netwatch.capture.listeners import NetnsDirectory, SocketTable
from netwatch.capture.netlink_watch import LinkWatcher
from netwatch.core.flow import Connection

_log = logging.getLogger("netwatch.capture")

PROGRAM_FILE = "flows.c"


@dataclass(frozen=True, slots=True)
class EbpfOptions:
    interfaces: tuple[str, ...] = ()
    """Link name patterns (fnmatch); empty: every veth of the namespace."""
    map_size: int = 65536
    pin_dir: Path | None = None
    """Default: /sys/fs/bpf/netwatch/netns-<inode of this network namespace>."""
    persist: bool = False
    """Leave programs attached and maps pinned on exit, for a seamless restart."""
    reset: bool = False
    """Detach leftovers and drop pinned maps (and their undrained counts) before starting."""
    node: str | None = None
    is_cluster_pod: Callable[[str], bool] | None = None
    pods_version: Callable[[], int] | None = None
    """Changes whenever `is_cluster_pod` may answer differently (`agent.pods.ClusterPods`)."""
    drain_method: DrainMethod = DrainMethod.AUTO
    conntrack: bool = True
    proc: Path = Path("/proc")
    journal_dir: Path | None = None
    """Write-ahead journal of drained entries (`journal`); the agent's `--state-dir`."""
    backlog: int | None = None
    """Most drained entries waiting for the owner's next drain (default: twice the map).
    At the limit the emptier pauses and the kernel map takes the overflow, then its LRU
    (evictions are counted as lost): memory stays bounded when the owner falls behind."""

    def backlog_limit(self) -> int:
        return self.backlog if self.backlog is not None else 2 * self.map_size

    def resolved_pin_dir(self) -> Path:
        return self.pin_dir if self.pin_dir is not None else bpffs.default_pin_dir()


def program_source() -> str:
    return resources.files("netwatch.capture").joinpath("bpf", PROGRAM_FILE).read_text()


def program_cflags(options: EbpfOptions) -> list[str]:
    pin = str(options.resolved_pin_dir())
    if '"' in pin or "\\" in pin:
        raise CaptureSetupError(f"unusable pin directory {pin!r}")
    return [f"-DNW_MAP_SIZE={options.map_size}", f'-DNW_PIN_DIR="{pin}"']


def render_program(options: EbpfOptions) -> str:
    """The program as `--print-bpf` shows it: the -D flags, then the C."""
    flags = " ".join(program_cflags(options))
    return f"// bcc cflags: {flags}\n// source: netwatch/capture/bpf/{PROGRAM_FILE}\n" + (
        program_source()
    )


class EbpfSource:
    """`FlowSource` over the TC programs of one network namespace (the node's)."""

    def __init__(self, options: EbpfOptions) -> None:
        if options.map_size < 16:
            raise CaptureSetupError("map size must be at least 16")
        self.options = options
        self._pin_dir = options.resolved_pin_dir()
        self._lock_guard = threading.Lock()
        self._links: dict[int, LinkInfo] = {}
        self._names: dict[int, str] = {}
        self._stopped = False
        self._closed = False
        self._watcher: LinkWatcher | None = None
        self._watch_attacher: TcAttacher | None = None
        self._emptier: MapEmptier | None = None
        self._journal: Journal | None = None
        self._position = 0
        self.stats = CaptureStats(map_size=options.map_size)
        try:
            ensure_kernel_source()
            bpffs.ensure_mounted()
            self._scope_lock = bpffs.ScopeLock(f"netns-{bpffs.netns_inode()}")
        except (OSError, RuntimeError) as exc:
            raise CaptureSetupError(str(exc)) from exc
        try:
            self._setup()
        except BaseException:
            self._abort()
            raise

    def _abort(self) -> None:
        """Undo a half-done setup: nothing attached or pinned may outlive a failed start."""
        if self._emptier is not None:
            self._emptier.stop()
        with contextlib.suppress(Exception):
            if self._watcher is not None:
                self._watcher.stop()
        attacher = getattr(self, "_attacher", None)
        ipr = getattr(self, "_ipr", None)
        if attacher is not None and ipr is not None and not self.options.persist:
            with contextlib.suppress(Exception):
                for link in list_links(ipr):
                    if attacher.ours(link.index):
                        attacher.detach(link.index)
        if not self.options.persist and getattr(self, "_bpf", None) is not None:
            bpffs.remove_pins(self._pin_dir)
        if self._journal is not None:
            self._journal.close()
        for closable in (attacher, ipr):
            if closable is not None:
                with contextlib.suppress(Exception):
                    closable.close()
        self._scope_lock.release()

    # -- setup ----------------------------------------------------------------------
    def _setup(self) -> None:
        self._ipr = IPRoute()
        if self.options.reset:
            self._detach_leftovers()
            bpffs.remove_pins(self._pin_dir)
        self._pin_dir.mkdir(parents=True, exist_ok=True)
        self._check_pinned()
        try:
            # bcc reads BCC_KERNEL_SOURCE, set just above by ensure_kernel_source()
            from bcc import BPF  # noqa: PLC0415
        except ImportError as exc:  # pragma: no cover - depends on the machine
            raise CaptureSetupError(
                f"bcc is not importable ({exc}); install python3-bpfcc"
            ) from exc
        try:
            self._bpf = BPF(text=program_source(), cflags=program_cflags(self.options))
            ingress = self._bpf.load_func("nw_ingress", BPF.SCHED_CLS)
            egress = self._bpf.load_func("nw_egress", BPF.SCHED_CLS)
        except Exception as exc:
            raise CaptureSetupError(f"cannot compile/load the capture program: {exc}") from exc
        return_compiler_memory()
        keep_batches_off_the_heap()
        self._fds = (ingress.fd, egress.fd)
        self._prog_names = (ingress.name, egress.name)
        first, second = (
            MapDrainer(
                self._bpf[name].get_fd(),
                max_entries=self.options.map_size,
                method=self.options.drain_method,
            )
            for name in FLOW_MAPS
        )
        if self.options.journal_dir is not None:
            try:
                self._journal = Journal(
                    self.options.journal_dir, key_size=KEY.size, value_size=VALUE.size
                )
            except JournalError as exc:
                raise CaptureSetupError(str(exc)) from exc
        self._emptier = MapEmptier(
            bpf=self._bpf,
            drainers=(first, second),
            journal=self._journal,
            stats=self.stats,
            map_size=self.options.map_size,
            backlog=self.options.backlog_limit(),
        )
        self._start_ns = time.monotonic_ns()
        self._directory = NetnsDirectory(nsid_of=self._nsid_of, proc=self.options.proc)
        conntrack = None
        if self.options.conntrack:
            reader = ConntrackReader(self.options.proc / "self" / "net" / "nf_conntrack")
            conntrack = reader if reader.available else None
        self._assembler = Assembler(
            node=self.options.node,
            is_cluster_pod=self.options.is_cluster_pod or (lambda _ip: False),
            pods_version=self.options.pods_version or (lambda: 0),
            sockets=self._sockets_of,
            conntrack=conntrack,
        )
        self._attacher = TcAttacher(
            ingress_fd=self._fds[0], egress_fd=self._fds[1], names=self._prog_names
        )
        self._selector = LinkSelector(self.options.interfaces)
        self._rescan(self._attacher, self._ipr)
        self._watcher = LinkWatcher(self._rescan_from_watcher)
        self._watcher.start()
        self._emptier.start()

    def _check_pinned(self) -> None:
        expected = {
            **{
                name: (BPF_MAP_TYPE_HASH_LRU, KEY.size, VALUE.size, self.options.map_size)
                for name in FLOW_MAPS
            },
            "stats": (BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8, len(STAT_NAMES)),
            "drained": (BPF_MAP_TYPE_ARRAY, 4, 8, 4),
        }
        for name, (mtype, ksize, vsize, entries) in expected.items():
            info = bpffs.pinned_map_info(self._pin_dir / name)
            if info is None:
                continue
            got = (info.map_type, info.key_size, info.value_size, info.max_entries)
            if got != (mtype, ksize, vsize, entries):
                hint = (
                    f"run with --map-size {info.max_entries}"
                    if name in FLOW_MAPS and got[:3] == (mtype, ksize, vsize)
                    else "it was made by another netwatch version"
                )
                raise CaptureSetupError(
                    f"pinned map {self._pin_dir / name} does not fit this program "
                    f"(type/key/value/entries {got}, expected {(mtype, ksize, vsize, entries)}): "
                    f"{hint}, or pass --reset to drop it with its undrained counts"
                )

    def _nsid_of(self, fd: int) -> int | None:
        reply = self._ipr.get_netnsid(fd=fd)
        nsid = reply.get("nsid") if reply else None
        return nsid if isinstance(nsid, int) and 0 <= nsid < 0xFFFFFFFF else None

    def _sockets_of(self, ifindex: int) -> SocketTable | None:
        with self._lock_guard:
            link = self._links.get(ifindex)
        if link is None or link.peer_netnsid is None:
            return None
        return self._directory.sockets(link.peer_netnsid)

    # -- links ----------------------------------------------------------------------
    def _rescan_from_watcher(self) -> None:
        if self._stopped:
            return
        if self._watch_attacher is None:
            self._watch_attacher = TcAttacher(
                ingress_fd=self._fds[0], egress_fd=self._fds[1], names=self._prog_names
            )
            self._watch_ipr = IPRoute()
        self._rescan(self._watch_attacher, self._watch_ipr)

    def _rescan(self, attacher: TcAttacher, ipr: Any) -> None:
        current = {link.index: link for link in list_links(ipr)}
        with self._lock_guard:
            known = dict(self._links)
        for index in set(known) - set(current):
            _log.info("interface %s vanished", known[index].name)
            with self._lock_guard:
                self._links.pop(index, None)
        for link in self._selector.select(current.values()):
            if link.index in known and known[link.index].name == link.name:
                continue
            try:
                attacher.attach(link.index)
            except Exception as exc:  # e.g. the link vanished between list and attach
                self.stats.attach_errors += 1
                _log.warning("cannot attach to %s: %s", link.name, exc)
                continue
            _log.info("attached to %s (ifindex %d)", link.name, link.index)
            with self._lock_guard:
                self._links[link.index] = link
                self._names[link.index] = link.name
        with self._lock_guard:
            self.stats.interfaces = sorted(link.name for link in self._links.values())

    def _detach_leftovers(self) -> None:
        cleaner = TcAttacher(ingress_fd=-1, egress_fd=-1, names=("", ""))
        try:
            removed = cleaner.detach_everywhere(list_links(self._ipr))
            if removed:
                _log.info("removed leftover programs from %s", ", ".join(removed))
        finally:
            cleaner.close()

    @property
    def interfaces(self) -> list[str]:
        with self._lock_guard:
            return sorted(link.name for link in self._links.values())

    # -- FlowSource -------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return False

    def drain(self) -> list[Connection]:
        return [conn for part in self.drain_parts() for conn in part]

    def drain_parts(self) -> Iterator[list[Connection]]:
        """`drain()` one kernel batch (at most 4,096 entries) at a time: what the owner
        holds at once stays small however much the drain takes. Consume it whole."""
        if self._closed:
            return
        started = time.monotonic()
        pending, self._position = self._live_emptier().take()
        self._directory.new_generation()
        offset = time.time_ns() - time.monotonic_ns()
        with self._lock_guard:
            names = dict(self._names)
        entries = 0
        deferred: list[tuple[bytes, bytes]] = []
        pending.reverse()  # popped from the end: each batch is freed once assembled
        while pending:
            batch = pending.pop()
            entries += batch[2]
            yield self._assembler.assemble_entries(
                batch,
                names=names.get,
                epoch_offset_ns=offset,
                start_ns=self._start_ns,
                defer=deferred,
            )
        step = self._live_emptier().chunk
        for i in range(0, len(deferred), step):
            yield self._assembler.assemble_entries(
                batch_of(deferred[i : i + step]),
                names=names.get,
                epoch_offset_ns=offset,
                start_ns=self._start_ns,
            )
        self._assembler.end_drain()
        if entries:
            trim_heap()
        s, a = self.stats, self._assembler.stats
        s.drains += 1
        s.drain_method = self._live_emptier().method
        s.last_drain_entries = entries
        s.reported, s.suppressed, s.dnat_resolved = a.reported, a.suppressed, a.dnat_resolved
        s.orientation = dict(a.orientation)
        took = time.monotonic() - started
        s.last_drain_seconds = took
        s.max_drain_seconds = max(s.max_drain_seconds, took)

    # -- the journal (`netwatch.capture.journal`; the agent's checkpoint protocol) -------
    @property
    def position(self) -> int:
        """The journal segment holding exactly what the last `drain()` returned (0: none)."""
        return self._position

    def recover(self, position: int) -> int:
        """Hand the journal's entries after `position` to the next `drain()`; returns how
        many. Call once, after restoring the checkpoint that includes `position`."""
        recovered = self._live_emptier().recover(position)
        if recovered:
            _log.info("recovered %d drained entries from the journal", recovered)
        return recovered

    def acknowledge(self, position: int) -> None:
        """Everything up to `position` is counted and checkpointed: drop it from the journal."""
        self._live_emptier().acknowledge(position)

    def _live_emptier(self) -> MapEmptier:
        if self._emptier is None:  # pragma: no cover - set by _setup before any use
            raise RuntimeError("the capture is not set up")
        return self._emptier

    def stop(self) -> None:
        """Stop watching links; detach the programs unless persisting. Drain afterwards."""
        if self._stopped:
            return
        self._stopped = True
        self._live_emptier().stop()
        if self._watcher is not None:
            self._watcher.stop()
        if self._watch_attacher is not None:
            self._watch_attacher.close()
            self._watch_ipr.close()
        if self.options.persist:
            return
        try:
            links = list_links(self._ipr)
            with self._lock_guard:
                mine = set(self._links)
            for link in links:
                if link.index in mine or self._attacher.ours(link.index):
                    self._attacher.detach(link.index)
        except Exception as exc:
            _log.warning("detach failed: %s", exc)

    def close(self) -> None:
        """Detach (unless persisting) and, without persist, unpin the maps. Idempotent."""
        if self._closed:
            return
        self.stop()
        self._closed = True
        self._attacher.close()
        self._ipr.close()
        self._bpf.cleanup()
        self._live_emptier().close()
        if not self.options.persist:
            bpffs.remove_pins(self._pin_dir)
        self._scope_lock.release()
