"""The libunicorn C reference of `python -m benchmarks hypercall` (benchmarks/unicorn_ref.c)
builds, boots the real bench guest and answers every one of its hypercalls. Its figures are
the benchmark's business: here only that it yields a positive per-call time."""

from __future__ import annotations

import math
import shutil

import pytest
from benchmarks import hypercall
from benchmarks.common import median

from guestkit import image as guest_image

pytest.importorskip("unicorn", reason="the software CPU engine (pip unicorn) is not installed")
SHORT, LONG = 1_000, 50_000


@pytest.fixture(scope="module")
def reference() -> tuple:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed: the C references are built at run time")
    return hypercall.build_unicorn_reference()


@pytest.mark.parametrize("mode", hypercall.UNICORN_MODES)
def test_reference_runs_the_bench_guest(guests: None, reference: tuple, mode: str) -> None:
    binary, page = reference
    image = guest_image("bench_hypercall")
    # Each run exits non-zero (CalledProcessError) unless the guest made exactly n
    # xen_version calls through its hypercall page and then shut down.
    slopes = []
    for _ in range(3):
        runs = [hypercall.time_unicorn_reference(binary, image, n, page, mode)
                for n in (SHORT, LONG)]
        assert all(t > 0 for t in runs)
        slopes.append(hypercall.slope_us(runs, SHORT, LONG))
    per_call = median(slopes)
    assert math.isfinite(per_call) and 0 < per_call < 1_000  # µs: plausible, not a rate check


def test_missing_gcc_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hypercall.shutil, "which", lambda _name: None)
    with pytest.raises(SystemExit, match="gcc"):
        hypercall.build_unicorn_reference()
