"""The thread that keeps the eBPF flow maps from filling, and the capture's counters.

`MapEmptier` moves entries out of the kernel's LRU maps into memory, where they wait
packed (`layout.Batch`) for the owner's next drain (`take()`). The programs write to
one of two maps (`bpf/flows.c`); a pass makes the other one active, waits until no
program can still be writing to the old one (`bpf_maps.wait_for_programs`) and then
empties it by lookup-and-delete (`bpf_maps.MapDrainer`) — alone, so every increment is
in what it copies: no packet lost to a race with the deletion.

Every `EMPTY_INTERVAL_S` the thread checks how full the active map is (entries the
program created minus entries drained — both kernel counters) and empties it from half
full, again at once while a pass still takes a quarter of the map. Below half it leaves
the entries where they are: an entry kept until the drain folds every later packet of
its conversation in, so a busy connection is one entry per drain rather than one per
pass (fewer entries to process, fewer created in the kernel). When the owner falls
behind by a whole backlog (`EbpfOptions.backlog`), the thread stops emptying: the map
buffers, and what its LRU then evicts is counted as lost — the process does not grow
without bound.

Each pass appends its batches to the write-ahead journal (`journal`) the moment the
syscall returns them, adds what it took to the pinned `drained` array, and derives the
loss counters of `CaptureStats` (evictions, lost packets/bytes) from the kernel's own.
Neighbours: `ebpf` (the backend that owns this), `bpf_maps`, `journal`, `layout`.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

from netwatch.capture.bpf_maps import (
    DR_ACTIVE,
    DR_BYTES,
    DR_ENTRIES,
    DR_PACKETS,
    STAT_NAMES,
    MapDrainer,
    wait_for_programs,
)
from netwatch.capture.journal import Journal
from netwatch.capture.layout import Batch, batch_of, totals

_log = logging.getLogger("netwatch.capture")

EMPTY_INTERVAL_S = 0.25
"""How often the kernel map's fill is checked, whatever the owner's drain interval."""


@dataclass(slots=True)
class CaptureStats:
    backend: str = "ebpf"
    drain_method: str = ""
    drains: int = 0
    map_size: int = 0
    last_drain_entries: int = 0
    max_pass_entries: int = 0
    """Most entries one lookup-and-delete pass took from the map (vs `map_size`)."""
    last_drain_seconds: float = 0.0
    max_drain_seconds: float = 0.0
    kernel: dict[str, int] = field(default_factory=dict)
    """Cumulative since the pinned maps were created (they survive restarts)."""
    drained_packets: int = 0
    drained_bytes: int = 0
    drained_entries: int = 0
    evicted_entries: int = 0
    """LRU evictions (entries created but never drained); a lower bound while traffic flows."""
    lost_packets: int = 0
    """Counted by the kernel but never drained (evictions, update failures, races)."""
    lost_bytes: int = 0
    interfaces: list[str] = field(default_factory=list)
    attach_errors: int = 0
    reported: int = 0
    suppressed: int = 0
    dnat_resolved: int = 0
    orientation: dict[str, int] = field(default_factory=dict)
    journal_errors: int = 0
    """Batches the write-ahead journal could not take (`--state-dir` full or gone)."""
    max_backlog_entries: int = 0
    """Most entries the emptier left waiting for the next drain (at most the backlog
    limit plus one pass)."""
    emptier_paused: int = 0
    """Checks that found the map half full but the backlog at its limit (not emptied)."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class MapEmptier:
    """Kernel map → packed batches in memory (see the module doc); thread-safe."""

    def __init__(
        self,
        *,
        bpf: Any,
        drainers: tuple[MapDrainer, MapDrainer],
        journal: Journal | None,
        stats: CaptureStats,
        map_size: int,
        backlog: int,
    ) -> None:
        """`bpf`: the loaded `bcc.BPF` (its `stats` and `drained` maps); `drainers`: of
        `flows` and `flows_b`; `backlog`: most entries waiting for `take()` before the
        thread stops emptying."""
        self._bpf = bpf
        self._drainers = drainers
        self._barrier_warned = False
        self._journal = journal
        self.stats = stats
        self._half, self._quarter = map_size // 2, map_size // 4
        self._limit = backlog
        self._lock = threading.Lock()
        self._pending: list[Batch] = []
        self._backlog = 0
        """Entries in `_pending`."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="netwatch-drain", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """End the thread (a pass under way finishes first). Idempotent."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def close(self) -> None:
        self.stop()
        if self._journal is not None:
            self._journal.close()

    # -- the owner's side ----------------------------------------------------------------
    def take(self) -> tuple[list[Batch], int]:
        """Empty the map once more, then hand over everything waiting, with the journal
        segment that holds exactly that (0 without a journal; `journal.rotate`)."""
        self.empty()
        with self._lock:
            pending, self._pending, self._backlog = self._pending, [], 0
            position = self._journal.rotate() if self._journal is not None else 0
        return pending, position

    def recover(self, position: int) -> int:
        """Queue the journal's entries after `position` for the next `take()`."""
        if self._journal is None:
            return 0
        with self._lock:
            recovered = self._journal.recover(position)
            step = self._drainers[0].chunk
            self._pending[:0] = [
                batch_of(recovered[i : i + step]) for i in range(0, len(recovered), step)
            ]
            self._backlog += len(recovered)
        return len(recovered)

    def acknowledge(self, position: int) -> None:
        if self._journal is not None:
            self._journal.acknowledge(position)

    # -- the thread ------------------------------------------------------------------------
    def _loop(self) -> None:
        paused = False
        while not self._stop.wait(EMPTY_INTERVAL_S):
            try:
                while self._occupancy() >= self._half:
                    if self._backlog >= self._limit:
                        paused = self._pause(paused)
                        break
                    paused = False
                    taken = self.empty()
                    self.stats.max_backlog_entries = max(
                        self.stats.max_backlog_entries, self._backlog
                    )
                    if taken < self._quarter or self._stop.is_set():
                        break
            except Exception:
                _log.exception("emptying the flow map failed")

    def _pause(self, paused: bool) -> bool:
        """The owner is behind by a whole backlog: leave the entries in the kernel map."""
        self.stats.emptier_paused += 1
        if not paused:
            _log.warning(
                "capture falling behind: %d drained entries wait for the drain; the kernel "
                "map is left to fill (what its LRU evicts is counted as lost)",
                self._backlog,
            )
        return True

    def _occupancy(self) -> int:
        """Entries in the flow map now, from the kernel's counters: created minus drained.
        Entries the LRU evicted still count (an overestimate: the map is emptied sooner)."""
        created = int(
            self._bpf["stats"].sum(ctypes.c_uint32(STAT_NAMES.index("flows_created"))).value
        )
        drained = int(self._bpf["drained"][ctypes.c_uint32(DR_ENTRIES)].value)
        return created - drained

    def empty(self) -> int:
        """One pass: switch maps, wait out the programs, empty the old one (and any
        leftovers of the idle one, e.g. after a crash mid-pass); returns the entries."""
        with self._lock:
            record = self._journaled if self._journal else None
            # Read before the switch: all of it went into the maps emptied below.
            kernel_before = self._read_stats()
            active = self._active()
            batches = self._drainers[1 - active].drain(record)
            self._set_active(1 - active)
            if not wait_for_programs() and not self._barrier_warned:
                self._barrier_warned = True
                _log.warning(
                    "membarrier(MEMBARRIER_CMD_GLOBAL) unavailable: waiting a fixed grace "
                    "period after switching flow maps instead (a slower program's packet "
                    "would show as lost)"
                )
            batches += self._drainers[active].drain(record)
            packets = nbytes = entries = 0
            for batch in batches:
                p, b = totals(batch)
                packets, nbytes, entries = packets + p, nbytes + b, entries + batch[2]
            self._add_drained(packets=packets, nbytes=nbytes, entries=entries)
            self._account(kernel_before)
            self._pending.extend(batches)
            self._backlog += entries
            self.stats.max_pass_entries = max(self.stats.max_pass_entries, entries)
        return entries

    def _journaled(self, keys: bytes, values: bytes, count: int) -> None:
        """Append one batch to the journal; a failure (a full disk) costs crash safety
        for that batch, never the batch itself: it is counted as usual."""
        assert self._journal is not None
        try:
            self._journal.append(keys, values, count)
        except OSError as exc:
            self.stats.journal_errors += 1
            if self.stats.journal_errors == 1 or not self.stats.journal_errors % 1000:
                _log.error(
                    "journal append failed (%s; %d times): drained entries are counted but "
                    "would not survive a crash",
                    exc,
                    self.stats.journal_errors,
                )

    def _active(self) -> int:
        return 1 if int(self._bpf["drained"][ctypes.c_uint32(DR_ACTIVE)].value) == 1 else 0

    def _set_active(self, index: int) -> None:
        self._bpf["drained"][ctypes.c_uint32(DR_ACTIVE)] = ctypes.c_uint64(index)

    @property
    def method(self) -> str:
        """The lookup-and-delete variant in use (`bpf_maps.DrainMethod`)."""
        return self._drainers[0].method.value

    @property
    def chunk(self) -> int:
        """Most entries one batch holds."""
        return self._drainers[0].chunk

    # -- loss accounting ----------------------------------------------------------------
    def _read_stats(self) -> dict[str, int]:
        table = self._bpf["stats"]
        return {name: int(table.sum(ctypes.c_uint32(i)).value) for i, name in enumerate(STAT_NAMES)}

    def _drained_totals(self) -> tuple[int, int, int]:
        table = self._bpf["drained"]
        return (
            int(table[ctypes.c_uint32(DR_PACKETS)].value),
            int(table[ctypes.c_uint32(DR_BYTES)].value),
            int(table[ctypes.c_uint32(DR_ENTRIES)].value),
        )

    def _add_drained(self, *, packets: int, nbytes: int, entries: int) -> None:
        if not entries:
            return
        table = self._bpf["drained"]
        for index, add in ((DR_PACKETS, packets), (DR_BYTES, nbytes), (DR_ENTRIES, entries)):
            key = ctypes.c_uint32(index)
            table[key] = ctypes.c_uint64(int(table[key].value) + add)

    def _account(self, kernel_before: dict[str, int]) -> None:
        s = self.stats
        s.kernel = self._read_stats()
        s.drained_packets, s.drained_bytes, s.drained_entries = self._drained_totals()
        # Everything counted before this pass started was drained now or earlier, unless
        # the LRU evicted it (or an update raced with deletion): lower bounds, exact at rest.
        s.evicted_entries = max(
            s.evicted_entries, kernel_before["flows_created"] - s.drained_entries
        )
        failed = kernel_before["update_failed"]
        s.lost_packets = max(s.lost_packets, kernel_before["packets"] - s.drained_packets + failed)
        s.lost_bytes = max(s.lost_bytes, kernel_before["bytes"] - s.drained_bytes)
