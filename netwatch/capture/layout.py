"""The byte layouts `bpf/flows.c` shares with userspace, and a drained batch of them.

`KEY` mirrors `struct flow_key`, `VALUE` `struct flow_val`, the `F_*` bits its `flags`
word; they must change with the C. A `Batch` is what one lookup-and-delete syscall (or
the journal) hands over: `count` packed keys, then `count` packed values — kept packed
until the drain decodes it, so entries waiting between drains cost their 100 bytes and
no Python objects (a busy node leaves hundreds of thousands of them per drain).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

KEY = struct.Struct("<16s16sHHIBB2x")  # struct flow_key
VALUE = struct.Struct("<7Q")  # struct flow_val
# struct flow_val .flags bits (bpf/flows.c)
F_OPENER_FROM_POD = 1 << 16
F_OPENER_TO_POD = 1 << 17
F_FIRST_TO_POD = 1 << 18

Batch = tuple[bytes, bytes, int]
"""`(keys, values, count)`: `count` packed `KEY`s and as many packed `VALUE`s."""


def batch_of(entries: list[tuple[bytes, bytes]]) -> Batch:
    """Single `(key, value)` entries (the per-key drain, the journal) as one batch."""
    return b"".join(k for k, _ in entries), b"".join(v for _, v in entries), len(entries)


def entries(batch: Batch) -> Iterator[tuple[bytes, bytes]]:
    """The batch as `(key, value)` pairs (tests and tools; the drain never splits it)."""
    keys, values, count = batch
    for i in range(count):
        yield (
            keys[i * KEY.size : (i + 1) * KEY.size],
            values[i * VALUE.size : (i + 1) * VALUE.size],
        )


def totals(batch: Batch) -> tuple[int, int]:
    """(packets, bytes) of every entry in the batch, both directions, summed in C."""
    _keys, values, count = batch
    if not count:
        return 0, 0
    words = memoryview(values).cast("Q")
    packets = sum(words[0::7]) + sum(words[1::7])
    nbytes = sum(words[2::7]) + sum(words[3::7])
    return packets, nbytes
