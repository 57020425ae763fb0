"""What the eBPF backend does about its own memory (glibc and the kernel's page cache).

Three measured problems, one place: bcc's clang/LLVM compile leaves its heap and code
resident after the programs are loaded (`return_compiler_memory`); drained batches,
allocated in the emptier thread and freed by the drain, would settle into glibc's heaps
(`keep_batches_off_the_heap`); and a drain's transient records leave free heap pages
behind (`trim_heap`). Each is best effort: not glibc, or an older kernel, and nothing
happens. Figures: README Performance, benchmarks/agent_ebpf.py.
"""

from __future__ import annotations

import contextlib
import ctypes
from pathlib import Path

_COMPILER_LIBRARIES = ("libbcc", "LLVM", "clang")
_MADV_PAGEOUT = 21  # Linux >= 5.4; older kernels answer EINVAL, and nothing changes
_M_MMAP_THRESHOLD = -3  # mallopt(3)
_BATCH_MMAP_BYTES = 64 * 1024


def keep_batches_off_the_heap() -> None:
    """Drained batches (180 to 230 KiB each, hundreds per drain on a busy node) are
    allocated in one thread and freed in another, a drain later. glibc's adaptive mmap
    threshold soon moves blocks that size into its heaps, whose freed holes stay
    resident; a fixed threshold keeps each batch in a mapping of its own, returned to
    the kernel the moment it is freed. Process-wide: large blocks of any origin."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: its own policy
        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, _BATCH_MMAP_BYTES)


def trim_heap() -> None:
    """Return the heap's free pages (after the compile; after a drain, its transient
    records freed). Not glibc (musl and friends have no malloc_trim): nothing happens."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def return_compiler_memory(maps: Path = Path("/proc/self/maps")) -> None:
    """Give back what bcc's clang/LLVM compile left resident, once the programs are loaded.

    Two parts, both measured on this machine right after setup: (1) the compile's heap,
    which glibc keeps in its arenas after LLVM frees it — `malloc_trim(0)` returns about
    37 MiB (RssAnon 78 → 40 MiB); (2) the compiler's code, ~90 MiB of libbcc/LLVM/clang
    text pages touched once by the compile — `madvise(MADV_PAGEOUT)` on those read-only
    file mappings drops them (RssFile 91 → 15 MiB; VmRSS 132 → 55 MiB). Clean file pages
    only: writable mappings are left alone (nothing goes to swap), and a page needed
    again later is simply read back. Not glibc, or an older kernel: nothing happens.
    """
    trim_heap()
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        madvise = libc.madvise
        lines = maps.read_text().splitlines()
    except (OSError, AttributeError):
        return
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    for line in lines:
        fields = line.split()
        if len(fields) < 6 or "w" in fields[1]:
            continue
        if not any(name in fields[5] for name in _COMPILER_LIBRARIES):
            continue
        low, high = (int(x, 16) for x in fields[0].split("-"))
        madvise(low, high - low, _MADV_PAGEOUT)
