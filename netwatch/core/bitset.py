"""Pod sets as Python integers: bit i set means pod i of an index is in the set.

Set-based evaluation computes each selector's pod set once and then combines sets with
`&`, `|` and `~`; arbitrary-precision ints make those C-speed operations on a few hundred
bytes even for thousands of pods, with no third-party dependency.
"""

from __future__ import annotations

from collections.abc import Iterator

Bits = int


def iter_bits(bits: Bits) -> Iterator[int]:
    """Indexes of the set bits, ascending."""
    while bits:
        low = bits & -bits
        yield low.bit_length() - 1
        bits ^= low


def has(bits: Bits, i: int) -> bool:
    return (bits >> i) & 1 == 1


def bit_string(bits: Bits, width: int) -> str:
    """'0'/'1' characters, index i at position i (fast per-pair lookups)."""
    return format(bits, f"0{width}b")[::-1] if width else ""
