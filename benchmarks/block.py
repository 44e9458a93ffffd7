"""PV block device: sequential write and read MB/s and 4 KiB random-read IOPS from a guest.

The kit's blkfront guest (guests/blkfront.c, `bench=1`) under a `pyxen daemon` of the
benchmark's own, its disk a `--mib` MiB file: it writes the whole disk, reads it back
(128 KiB requests, indirect, up to the ring's 32 slots in flight), then makes `--randread`
4 KiB reads at random aligned offsets with 32 in flight, timed with its own clock. Per vCPU
backend.

Reference, measured in the same run on the same machine: the host itself on a file of the
same size in the same directory, through the same page cache: sequential pwrite and pread
of 128 KiB chunks, and 4 KiB preads at random aligned offsets (one at a time: the host has
no ring to fill). Ratios are guest / host; the headline is the sequential read ratio on the
main backend (kvm where it exists).

    python -m benchmarks block
    python -m benchmarks.block --accel kvm --mib 256
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.common import report
from benchmarks.host import Daemon, wait_for
from benchmarks.pair import info
from pyxen.toolstack.accel import available_accels
from pyxen.toolstack.guestkit import guest_image

MIB = 64
RANDREAD = 20000
CHUNK = 128 * 1024
TIMEOUT_S = 900.0


def host_reference(path: Path, size: int, randread: int) -> dict[str, float]:
    """The host's MB/s writing and reading `path` sequentially and its 4 KiB random-read
    IOPS (MB = 10^6 bytes)."""
    chunk = bytes(range(256)) * (CHUNK // 256)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, size)
        t0 = time.perf_counter()
        for offset in range(0, size, CHUNK):
            os.pwrite(fd, chunk, offset)
        t1 = time.perf_counter()
        for offset in range(0, size, CHUNK):
            os.pread(fd, CHUNK, offset)
        t2 = time.perf_counter()
        rng = random.Random(1)
        pages = size // 4096
        for _ in range(randread):
            os.pread(fd, 4096, rng.randrange(pages) * 4096)
        t3 = time.perf_counter()
    finally:
        os.close(fd)
    return {"write_mbps": size / (t1 - t0) / 1e6, "read_mbps": size / (t2 - t1) / 1e6,
            "randread_iops": randread / (t3 - t2)}


def guest_run(accel: str, disk: Path, randread: int, state: Path) -> dict[str, float]:
    daemon = Daemon(state)
    try:
        cfg = state / "blk.cfg"
        cfg.write_text("\n".join((
            'name = "blk"', 'type = "pvh"', f'kernel = "{guest_image("blkfront")}"',
            "memory = 64", f'accel = "{accel}"',
            f'extra = "bench=1 randread={randread} console=hvc0"',
            f"disk = ['{disk},raw,xvda,rw']")) + "\n")
        daemon.create(cfg)
        found = wait_for("the blkfront guest to finish",
                         lambda: info(state / "console" / "guest-blk.log"), TIMEOUT_S, 0.1)
    finally:
        daemon.stop()
    return {key: float(found[key]) for key in ("write_mbps", "read_mbps", "randread_iops")}


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.block",
                                description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--mib", type=int, default=MIB, help=f"disk size in MiB (default {MIB})")
    p.add_argument("--randread", type=int, default=RANDREAD,
                   help=f"4 KiB random reads (default {RANDREAD})")
    p.add_argument("--accel", choices=("kvm", "soft"), action="append",
                   help="a vCPU backend to measure (default: every one this machine has)")
    args = p.parse_args(list(argv or []))
    size = args.mib << 20
    figures: dict[str, float | str] = {}
    ratios: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="pyxen-bench-block-") as tmp:
        disk = Path(tmp) / "disk.img"
        host = host_reference(Path(tmp) / "host.img", size, args.randread)
        print(f"host: write {host['write_mbps']:.0f} MB/s, read {host['read_mbps']:.0f} MB/s, "
              f"4 KiB random read {host['randread_iops']:.0f} IOPS ({args.mib} MiB file)",
              flush=True)
        figures.update({f"host_{k}": v for k, v in host.items()})
        for accel in args.accel or available_accels():
            with open(disk, "wb") as f:
                f.truncate(size)
            state = Path(tmp) / f"state-{accel}"
            state.mkdir()
            guest = guest_run(accel, disk, args.randread, state)
            r = {k: guest[k] / host[k] for k in guest}
            print(f"{accel}: write {guest['write_mbps']:.0f} MB/s ({r['write_mbps']:.2f} x host), "
                  f"read {guest['read_mbps']:.0f} MB/s ({r['read_mbps']:.2f} x), "
                  f"random read {guest['randread_iops']:.0f} IOPS ({r['randread_iops']:.2f} x)",
                  flush=True)
            figures.update({f"{accel}_{k}": v for k, v in guest.items()})
            figures.update({f"{accel}_{k}_ratio": v for k, v in r.items()})
            ratios[accel] = r["read_mbps"]
    main_accel = "kvm" if "kvm" in ratios else next(iter(ratios))
    report("block", ratios[main_accel],
           f"the host's own pread/pwrite on a same-size file in the same run; ratio = guest "
           f"sequential read MB/s ({main_accel}) / host's", **figures)


if __name__ == "__main__":
    main(sys.argv[1:])
