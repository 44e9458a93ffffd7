"""Granted ring between two domains: libxenvchan-style streaming throughput, both ways at once.

Two kit guests (guests/vchan.c, role=server and role=client) under a `pyxen daemon` of the
benchmark's own: the server grants a ring each way (the largest libxenvchan allows, 2^20
bytes, unless --order says otherwise), the client maps them, and both stream `--mib` MiB
each way at the same time, the data work in guest ring 3. With `check=none` the sender
memcpys from a prefilled local buffer into the ring and the receiver memcpys out of it into
a local buffer, as libxenvchan_write/read do; each receiver times its direction (INFO
stream_ns). Per vCPU backend (both domains on the same one).

Reference, measured in the same run on the same machine: host memcpy bandwidth, Python's
ctypes.memmove (glibc) over a 64 MiB buffer, well beyond the caches, best of a few. The
ratio is the slower direction's MiB/s over it, the median of `--runs` runs of the pair (on
kvm_pvm a rare KVM_RUN through emulated guest ring-0 code takes 0.1-0.5 s, and one of them
in a stream of a few hundred ms shows). The same pair with every byte checked (`check=full`,
the guest's default) is printed too (one run), as is grant copy (`--copy`).

    python -m benchmarks vchan
    python -m benchmarks.vchan --accel kvm --mib 1024
"""

from __future__ import annotations

import argparse
import ctypes
import sys
import time
from collections.abc import Sequence

from benchmarks.common import median, report
from benchmarks.pair import run_pair
from pyxen.toolstack.accel import available_accels

MIB = 256
ORDER = 20          # libxenvchan's largest ring (MAX_RING_SHIFT)
MEMORY_MIB = 32
TIMEOUT_S = 600.0
MEMCPY_MIB = 64
MEMCPY_ROUNDS = 5
RUNS = 3


def pair(accel: str, mib: int, order: int, extra: str = "",
         client_extra: str = "") -> tuple[dict[str, str], dict[str, str]]:
    """The server's and the client's INFO from one run of the pair on `accel`."""
    common = f"mib={mib} console=hvc0 {extra}".strip()
    cmdlines = {"server": f"role=server left_order={order} right_order={order} {common}",
                "client": f"role=client {common} {client_extra}".strip()}
    server, client = run_pair("vchan", accel, MEMORY_MIB, cmdlines, ["server", "client"],
                              TIMEOUT_S)
    return server, client


def rates(mib: int, server: dict[str, str], client: dict[str, str]) -> tuple[float, float]:
    """MiB/s client to server and server to client (each as its receiver timed it)."""
    return (mib / (int(server["stream_ns"]) / 1e9), mib / (int(client["stream_ns"]) / 1e9))


def memcpy_mib_s(mib: int = MEMCPY_MIB, rounds: int = MEMCPY_ROUNDS) -> float:
    """Host memcpy bandwidth, MiB/s: the best of `rounds` copies of `mib` MiB."""
    size = mib << 20
    src = ctypes.create_string_buffer(b"\x5a" * 4096 * 16, size)
    dst = ctypes.create_string_buffer(size)
    ctypes.memmove(dst, src, size)      # both buffers faulted in
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        ctypes.memmove(dst, src, size)
        best = min(best, time.perf_counter() - t0)
    return mib / best


def show(accel: str, label: str, mib: int, order: int, memcpy: float,
         server: dict[str, str], client: dict[str, str]) -> tuple[float, float]:
    """Print one run's figures; its MiB/s client to server and server to client."""
    c2s, s2c = rates(mib, server, client)
    print(f"{accel} {label:>4}: c2s {c2s:7.0f} MiB/s, s2c {s2c:7.0f} MiB/s "
          f"({min(c2s, s2c) / memcpy:.2f} x memcpy); {mib} MiB each way, rings 2^{order}; "
          f"ring-3 entries {server['ring3_entries']} / {client['ring3_entries']}, events sent "
          f"{server['notifies']} / {client['notifies']}, waits {server['waits']} / "
          f"{client['waits']}"
          + (f", copy calls {client['copy_calls']}" if "copy_calls" in client else ""),
          flush=True)
    return c2s, s2c


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.vchan",
                                description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--mib", type=int, default=MIB, help=f"MiB each way (default {MIB})")
    p.add_argument("--order", type=int, default=ORDER,
                   help=f"both rings' order, 2^N bytes (default {ORDER}; 12..20)")
    p.add_argument("--accel", choices=("kvm", "soft"), action="append",
                   help="a vCPU backend to measure (default: every one this machine has)")
    p.add_argument("--runs", type=int, default=RUNS,
                   help=f"runs of the check=none pair; the median counts (default {RUNS})")
    p.add_argument("--copy", action="store_true",
                   help="also the client moving the data with GNTTABOP_copy (check=none)")
    args = p.parse_args(list(argv or []))
    memcpy = memcpy_mib_s()
    print(f"host memcpy: {memcpy:.0f} MiB/s (ctypes.memmove, {MEMCPY_MIB} MiB, best of "
          f"{MEMCPY_ROUNDS})", flush=True)
    ratios: dict[str, float] = {}
    figures: dict[str, float | str] = {"memcpy_mib_s": memcpy}
    for accel in args.accel or available_accels():
        slower = []
        for _ in range(max(1, args.runs)):
            c2s, s2c = show(accel, "none", args.mib, args.order, memcpy,
                            *pair(accel, args.mib, args.order, "check=none"))
            slower.append(min(c2s, s2c))
        ratios[accel] = median(slower) / memcpy
        figures[f"{accel}_none_mib_s"] = median(slower)
        figures[f"{accel}_none_runs_mib_s"] = " ".join(f"{v:.0f}" for v in slower)
        print(f"{accel} none: median {median(slower):.0f} MiB/s, "
              f"{ratios[accel]:.2f} x memcpy", flush=True)
        others = [("copy", "mode=copy", "check=none")] if args.copy else []
        for label, client_extra, check in [*others, ("full", "", "check=full")]:
            c2s, s2c = show(accel, label, args.mib, args.order, memcpy,
                            *pair(accel, args.mib, args.order, check, client_extra))
            figures.update({f"{accel}_{label}_c2s_mib_s": c2s,
                            f"{accel}_{label}_s2c_mib_s": s2c})
    main_accel = "kvm" if "kvm" in ratios else next(iter(ratios))
    report("vchan", ratios[main_accel],
           f"host memcpy (ctypes.memmove, {MEMCPY_MIB} MiB) of the same run; ratio = the slower "
           f"direction of the check=none ring ({main_accel}), median of {max(1, args.runs)} "
           f"runs / it", **{f"{a}_ratio": r for a, r in ratios.items()}, **figures)


if __name__ == "__main__":
    main(sys.argv[1:])
