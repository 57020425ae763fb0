"""The kernel maps of `bpf/flows.c` seen from userspace: draining them.

The entry layouts are in `layout`; the `stats` and `drained` indexes are here and must
change with the C. Draining empties the LRU flow map with
BPF_MAP_LOOKUP_AND_DELETE_BATCH in chunks; where the kernel lacks it (before 5.6) it
falls back to per-key BPF_MAP_LOOKUP_AND_DELETE_ELEM (hash maps: 5.14), and then to
lookup followed by delete — a packet landing between the two is lost and shows in the
lost counters. The feature is detected by trying, never by kernel version; `method`
forces one (tests exercise each). bcc's own `items_lookup_and_delete_batch` is not used:
it allocates max_entries-sized buffers per call and aliases its batch tokens. What is
drained stays packed (`layout.Batch`) until `Assembler.assemble_entries` decodes it.
"""

from __future__ import annotations

import ctypes
import enum
import errno
import functools
import logging
import os
import platform
import time
from collections.abc import Callable

from netwatch.capture.layout import KEY, VALUE, Batch, batch_of

_log = logging.getLogger("netwatch.capture")

STAT_NAMES = (
    "packets",
    "bytes",
    "flows_created",
    "update_failed",
    "non_ip",
    "other_proto",
    "fragment_packets",
    "fragment_bytes",
    "truncated",
    "icmp6_control",
)
DR_PACKETS, DR_BYTES, DR_ENTRIES = 0, 1, 2
DR_ACTIVE = 3
"""`drained[DR_ACTIVE]`: the flow map the programs write to (0 `flows`, 1 `flows_b`)."""
FLOW_MAPS = ("flows", "flows_b")
BPF_MAP_TYPE_HASH_LRU, BPF_MAP_TYPE_PERCPU_ARRAY, BPF_MAP_TYPE_ARRAY = 9, 6, 2
_UNSUPPORTED = {errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, 524}  # 524: ENOTSUPP


Record = Callable[[bytes, bytes, int], None]
"""`(keys, values, n)`: n packed keys and n packed values, as one syscall returned them."""


class CaptureSetupError(RuntimeError):
    """The eBPF backend cannot start here (no BPF, no headers, incompatible pinned maps)."""


class DrainMethod(enum.Enum):
    AUTO = "auto"
    BATCH = "batch"
    PER_KEY = "per-key"
    LOOKUP_DELETE = "lookup-delete"


class MapDrainer:
    """Lookup-and-delete of every entry of the flow map, with feature fallbacks."""

    def __init__(self, fd: int, *, max_entries: int, method: DrainMethod) -> None:
        self._fd = fd
        self._lib = ctypes.CDLL("libbcc.so.0", use_errno=True)
        u32p = ctypes.POINTER(ctypes.c_uint32)
        batch = self._lib.bpf_lookup_and_delete_batch
        batch.argtypes = [ctypes.c_int, u32p, u32p, ctypes.c_void_p, ctypes.c_void_p, u32p]
        batch.restype = ctypes.c_int
        for name in ("bpf_lookup_and_delete", "bpf_lookup_elem"):
            fn = getattr(self._lib, name)
            fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
            fn.restype = ctypes.c_int
        self._lib.bpf_delete_elem.argtypes = [ctypes.c_int, ctypes.c_void_p]
        self._lib.bpf_get_next_key.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
        self.chunk = max(16, min(max_entries, 4096))
        """Most entries one batch holds."""
        self._keys = ctypes.create_string_buffer(KEY.size * self.chunk)
        self._values = ctypes.create_string_buffer(VALUE.size * self.chunk)
        self.method = method

    def drain(self, record: Record | None = None) -> list[Batch]:
        """Take every entry out of the map. `record(keys, values, n)` sees each batch the
        moment the kernel returned it (the write-ahead journal), before it is decoded."""
        if self.method in (DrainMethod.AUTO, DrainMethod.BATCH):
            try:
                out = self._batch(record)
                self.method = DrainMethod.BATCH
                return out
            except _Unsupported:
                if self.method is DrainMethod.BATCH:
                    raise CaptureSetupError("BPF_MAP_LOOKUP_AND_DELETE_BATCH unsupported") from None
                _log.info("batch lookup-and-delete unsupported; falling back to per-key")
                self.method = DrainMethod.PER_KEY
        if self.method is DrainMethod.PER_KEY:
            try:
                return self._per_key(atomic=True, record=record)
            except _Unsupported:
                _log.info("per-key lookup-and-delete unsupported; falling back to lookup+delete")
                self.method = DrainMethod.LOOKUP_DELETE
        return self._per_key(atomic=False, record=record)

    def _batch(self, record: Record | None) -> list[Batch]:
        out: list[Batch] = []
        token_in, token_out = ctypes.c_uint32(0), ctypes.c_uint32(0)
        first = True
        while True:
            count = ctypes.c_uint32(self.chunk)
            rc = self._lib.bpf_lookup_and_delete_batch(
                self._fd,
                None if first else ctypes.byref(token_in),
                ctypes.byref(token_out),
                self._keys,
                self._values,
                ctypes.byref(count),
            )
            err = ctypes.get_errno() if rc != 0 else 0
            n = count.value if rc == 0 or err == errno.ENOENT else 0
            if n:
                keys = ctypes.string_at(self._keys, n * KEY.size)
                values = ctypes.string_at(self._values, n * VALUE.size)
                if record is not None:
                    record(keys, values, n)
                out.append((keys, values, n))
            if rc != 0:
                if err == errno.ENOENT:
                    return out
                if first and err in _UNSUPPORTED:
                    raise _Unsupported(err)
                raise OSError(err, f"BPF_MAP_LOOKUP_AND_DELETE_BATCH: {os.strerror(err)}")
            token_in.value = token_out.value
            first = False

    def _per_key(self, *, atomic: bool, record: Record | None) -> list[Batch]:
        keys: list[bytes] = []
        prev: ctypes.Array[ctypes.c_char] | None = None
        nxt = ctypes.create_string_buffer(KEY.size)
        while self._lib.bpf_get_next_key(self._fd, prev, nxt) == 0:
            keys.append(nxt.raw)
            prev = ctypes.create_string_buffer(nxt.raw, KEY.size)
        out: list[tuple[bytes, bytes]] = []
        value = ctypes.create_string_buffer(VALUE.size)
        for raw in keys:
            key = ctypes.create_string_buffer(raw, KEY.size)
            if atomic:
                rc = self._lib.bpf_lookup_and_delete(self._fd, key, value)
                if rc != 0:
                    err = ctypes.get_errno()
                    if err in _UNSUPPORTED and not out:
                        raise _Unsupported(err)
                    continue  # evicted meanwhile
            else:
                if self._lib.bpf_lookup_elem(self._fd, key, value) != 0:
                    continue
                self._lib.bpf_delete_elem(self._fd, key)
            if record is not None:
                record(raw, value.raw, 1)
            out.append((raw, value.raw))
        return [batch_of(out)] if out else []


class _Unsupported(Exception):
    pass


_MEMBARRIER_NR = {"x86_64": 324, "aarch64": 283}
_MEMBARRIER_CMD_GLOBAL = 1
GRACE_S = 0.05
"""Wait after switching flow maps where membarrier cannot: TC programs run for
microseconds with preemption off, so this is ample — but not a guarantee."""


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def wait_for_programs() -> bool:
    """Return once no BPF program that started before the call can still be running.

    membarrier(MEMBARRIER_CMD_GLOBAL) is synchronize_rcu() (kernel/sched/membarrier.c),
    and TC programs run inside RCU read-side sections: after it, nothing holds a pointer
    into the flow map that was active before. About 10 ms. Where the call is refused
    (nohz_full, no CONFIG_MEMBARRIER, another architecture) a `GRACE_S` sleep stands in
    (False is returned, so the caller can say so once).
    """
    nr = _MEMBARRIER_NR.get(platform.machine())
    if nr is not None and _libc().syscall(nr, _MEMBARRIER_CMD_GLOBAL, 0) == 0:
        return True
    time.sleep(GRACE_S)
    return False
