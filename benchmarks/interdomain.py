"""Inter-domain event channels: ping-pong between two guests in two domain processes.

Two kit guests (guests/interdomain.c, roles a and b) under a `pyxen daemon` of the
benchmark's own: B sends on its end of an inter-domain channel, A sends back at once, B
times each round trip. Two ways of waiting, each timed over the same number of rounds:
"poll", both sides block in SCHEDOP_poll on their masked port (the signal path between the
two domain processes and the hypercalls, nothing else), and "upcall", the answer comes from
A's event handler and B wakes from hlt by its upcall (adds two interrupt deliveries and the
guests' handlers, which this host's KVM emulates instruction by instruction in ring 0). Per
vCPU backend (both domains on the same one).

Reference, measured in the same run by the same guest: the null hypercall
(`xen_version`) round trip. The ratio is one way (half a round trip) over that, i.e. how
many null hypercalls one event from one domain process to the other is worth; the headline
is the poll ping-pong's.

    python -m benchmarks interdomain
    python -m benchmarks.interdomain --rounds 5000
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from benchmarks.common import report
from benchmarks.pair import run_pair
from pyxen.toolstack.accel import available_accels

ROUNDS = 2000
MEMORY_MIB = 16
TIMEOUT_S = 240.0


def pingpong(accel: str, rounds: int) -> dict[str, str]:
    """B's figures from one run of the pair on `accel`."""
    cmdlines = {role: f"role={role} rounds={rounds} console=hvc0" for role in "ab"}
    return run_pair("interdomain", accel, MEMORY_MIB, cmdlines, ["b"], TIMEOUT_S)[0]


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.interdomain",
                                description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--rounds", type=int, default=ROUNDS, help=f"round trips (default {ROUNDS})")
    p.add_argument("--accel", choices=("kvm", "soft"), action="append",
                   help="a vCPU backend to measure (default: every one this machine has)")
    args = p.parse_args(list(argv or []))
    ratios, figures = {}, {}
    for accel in args.accel or available_accels():
        rounds = args.rounds
        got = pingpong(accel, rounds)
        null = int(got["null_hypercall_ns"]) / 1000
        figures[f"{accel}_null_hypercall_us"] = null
        for way, prefix in (("poll", "poll_"), ("upcall", "pingpong_")):
            rtt = int(got[f"{prefix}rtt_median_ns"]) / 1000
            p99 = int(got[f"{prefix}rtt_p99_ns"]) / 1000
            ratio = rtt / 2 / null
            if way == "poll":
                ratios[accel] = ratio
            figures.update({f"{accel}_{way}_rtt_us": rtt, f"{accel}_{way}_rtt_p99_us": p99,
                            f"{accel}_{way}_ratio": ratio})
            print(f"{accel} {way}: round trip {rtt:.0f} µs median (p99 {p99:.0f} µs), one way "
                  f"{rtt / 2:.0f} µs = {ratio:.1f} × the null hypercall ({null:.1f} µs), "
                  f"{got[f'{prefix}rounds']} rounds", flush=True)
    main_accel = "kvm" if "kvm" in ratios else next(iter(ratios))
    report("interdomain", ratios[main_accel],
           f"null hypercall of the same guest ({main_accel}); ratio = poll one way / it",
           **{f"{a}_ratio": r for a, r in ratios.items()}, **figures)


if __name__ == "__main__":
    main(sys.argv[1:])
