"""FIFO event channels (issue 9): send -> upcall latency from vCPU 0 to vCPU 1 through the
FIFO queues (guests/evtchn_fifo.c bench=N), per vCPU backend.

Reference, measured in the same run on the same backend: the same send -> upcall path
under the 2-level ABI (guests/evtchn_latency.c); the ratio says what the FIFO ABI's event
words, queues and compare-exchange linking cost on top of the 2-level bitmaps.
"""

from __future__ import annotations

from benchmarks.common import report
from benchmarks.events import run_guest
from pyxen.toolstack.accel import available_accels

SAMPLES, ROUNDS = 300, 3


def main() -> None:
    figures: dict[str, float] = {}
    ratio = 0.0
    for accel in available_accels():
        pairs = []
        for _ in range(ROUNDS):  # interleaved, so both see the same machine load
            two = run_guest("evtchn_latency", accel, "--vcpus", "2",
                            "--cmdline", f"samples={SAMPLES}")
            fifo = run_guest("evtchn_fifo", accel, "--vcpus", "2", "--cmdline", f"bench={SAMPLES}")
            pairs.append((int(two["send_to_upcall_median_ns"][0]) / 1e3,
                          int(fifo["send_to_upcall_median_ns"][0]) / 1e3))
        two_us = sorted(p[0] for p in pairs)[len(pairs) // 2]
        fifo_us = sorted(p[1] for p in pairs)[len(pairs) // 2]
        print(f"{accel}: send -> upcall on the other vCPU: FIFO median {fifo_us:.1f} us, "
              f"2-level median {two_us:.1f} us, ratio {fifo_us / two_us:.2f}")
        figures.update({f"{accel}_fifo_send_to_upcall_us": fifo_us,
                        f"{accel}_2level_send_to_upcall_us": two_us})
        if accel == "kvm" or not ratio:
            ratio = fifo_us / two_us
    report("events_fifo", ratio, "2-level send -> upcall, same backend, same run", **figures)
