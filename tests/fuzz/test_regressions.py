"""Every input the fuzzers found a bug with (fuzz/crashes/<target>/<name>), replayed through
its target: fixed bugs stay fixed. A target raises only on a bug."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
if str(ROOT) not in sys.path:  # `fuzz` is a top-level package, as `benchmarks` is
    sys.path.insert(0, str(ROOT))
CRASHES = sorted(p for p in (ROOT / "fuzz" / "crashes").glob("*/*") if p.is_file())


def test_there_are_regressions() -> None:
    assert CRASHES


@pytest.mark.parametrize("path", CRASHES, ids=[f"{p.parent.name}/{p.name}" for p in CRASHES])
def test_crash_input_no_longer_fails(path: Path) -> None:
    target = importlib.import_module(f"fuzz.targets.{path.parent.name}")
    target.one_input(path.read_bytes())
