"""Shared helpers for benchmarks: robust statistics and the one-line JSON result."""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence


def median(samples: Sequence[float]) -> float:
    """Median: the machines are shared and noisy, so means would lie."""
    return statistics.median(samples)


def percentile(samples: Sequence[float], fraction: float) -> float:
    """The sample at `fraction` (0..1) of the sorted list, nearest-rank."""
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def report(benchmark: str, ratio: float, reference: str, **figures: float | str) -> None:
    """Print the closing JSON line every benchmark ends with (see DESIGN.md)."""
    line = {"benchmark": benchmark, "ratio": round(ratio, 3), "reference": reference}
    line.update({k: (round(v, 3) if isinstance(v, float) else v) for k, v in figures.items()})
    print(json.dumps(line), flush=True)
