"""Grant copy throughput: GNTTABOP_copy of 4 KiB pages, 16 per hypercall, from a guest.

guests/grant_table.c with `bench=N` copies one granted page into one of its own frames
16*N times (batched, by grant reference), timed by the guest's pvclock; per vCPU backend.

Reference, measured in the same run: the host copying the same number of 4 KiB pages
with ctypes.memmove (a memcpy behind one Python call per page, the way a Python VMM
copies); the ratio is guest copy throughput over that, so 1.0 would mean a grant copy
costs no more than the bare memcpy of its page.
"""

from __future__ import annotations

import ctypes
import time

from benchmarks.common import median, report
from benchmarks.events import run_guest
from pyxen.toolstack.accel import available_accels

ROUNDS = 5
HYPERCALLS = 200
PAGES_PER_CALL = 16
PAGE = 4096


def guest_bytes_per_s(accel: str) -> float:
    info = run_guest("grant_table", accel, "--cmdline", f"bench={HYPERCALLS}")
    return int(info["bench_copy_bytes"][0]) / (int(info["bench_copy_ns"][0]) / 1e9)


def host_bytes_per_s(pages: int = HYPERCALLS * PAGES_PER_CALL) -> float:
    src = ctypes.create_string_buffer(bytes(range(256)) * (PAGE // 256))
    dst = ctypes.create_string_buffer(PAGE)
    memmove = ctypes.memmove
    start = time.perf_counter()
    for _ in range(pages):
        memmove(dst, src, PAGE)
    return pages * PAGE / (time.perf_counter() - start)


def main() -> None:
    host = median([host_bytes_per_s() for _ in range(ROUNDS)])
    print(f"host memmove of 4 KiB pages: {host / 1e6:.0f} MB/s (median of {ROUNDS})")
    figures: dict[str, float | str] = {"host_memmove_MBps": host / 1e6}
    ratios = []
    for accel in available_accels():
        guest = median([guest_bytes_per_s(accel) for _ in range(ROUNDS)])
        ratio = guest / host
        ratios.append(ratio)
        figures[f"{accel}_grant_copy_MBps"] = guest / 1e6
        figures[f"{accel}_us_per_page"] = PAGE / guest * 1e6
        print(f"{accel}: GNTTABOP_copy {guest / 1e6:.1f} MB/s, {PAGE / guest * 1e6:.1f} us per "
              f"4 KiB page, {ratio:.4f} x host memmove")
    report("grant", min(ratios) if ratios else 0.0, "host ctypes.memmove of 4 KiB pages",
           **figures)
