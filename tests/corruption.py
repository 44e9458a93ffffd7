"""Hypothesis-drawn damage to a file that a parser must refuse in one line or accept whole."""

from __future__ import annotations

from pathlib import Path

from hypothesis import strategies as st


def damaged_file(data: st.DataObject, raw: bytes, regions: list[tuple[int, int]],
                 edits: int, where: Path) -> Path:
    """`raw` with 1..`edits` bytes overwritten (each in one of `regions`, drawn so headers are
    hit far more often than their share of the file), maybe cut short, written to `where`."""
    damaged = bytearray(raw)
    for _ in range(data.draw(st.integers(1, edits))):
        lo, hi = data.draw(st.sampled_from(regions))
        damaged[data.draw(st.integers(lo, hi - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.one_of(st.none(), st.integers(0, len(damaged))))
    where.write_bytes(damaged[:cut])
    return where
