"""PV console ring throughput: bytes/s of a guest writing its console ring flat out, against
the same bytes through console_io in the same run.

The kit's console_ring guest (`bench_kib=N`) writes N KiB into the ring in 1 KiB writes
(each notifies, as hvc_xen does per write), waits until pyxen has drained it all, then
writes the same N KiB with HYPERVISOR_console_io, and reports both times from its own
pvclock. The ring is served as xenconsoled serves it, rate limit included (30 notifications
per 200 ms, then one per period): a guest that floods its ring is held back by design, and
this figure shows by how much. ratio = ring bytes/s / console_io bytes/s.
"""

from __future__ import annotations

from benchmarks.common import median, report
from pyxen.domain.domain import DomainConfig
from pyxen.toolstack.accel import available_accels, machine_factory
from pyxen.toolstack.demo_cmd import guest_image
from pyxen.toolstack.embedded import run_image

KIB = 128
ROUNDS = 3


def one_run(accel: str) -> tuple[float, float]:
    """(ring bytes/s, console_io bytes/s) from one guest run."""
    outcome = run_image(guest_image("console_ring"),
                        DomainConfig(name="console-bench", cmdline=f"bench_kib={KIB}"),
                        timeout=300, console=lambda data: None,
                        machine_factory=machine_factory(accel)[0])
    info = {}
    for line in outcome.console.decode(errors="replace").splitlines():
        if line.startswith("INFO "):
            _, key, value = (line.split(" ", 2) + [""])[:3]
            info[key] = value
    if "ring_ns" not in info or "io_ns" not in info:
        raise RuntimeError(f"console_ring on {accel} reported no times: "
                           f"{outcome.result.outcome.value} {outcome.result.detail}")
    size = int(info["bench_bytes"])
    return size / (int(info["ring_ns"]) / 1e9), size / (int(info["io_ns"]) / 1e9)


def main() -> None:
    figures: dict[str, float | str] = {}
    ratio = 0.0
    for accel in [a for a in ("soft", "kvm") if a in available_accels()]:
        runs = [one_run(accel) for _ in range(ROUNDS)]
        ring, io = median([r for r, _ in runs]), median([i for _, i in runs])
        print(f"{accel}: ring {ring / 1024:.1f} KiB/s, console_io {io / 1024:.1f} KiB/s, "
              f"ring/console_io {ring / io:.3f} (medians of {ROUNDS} runs of {KIB} KiB)")
        figures[f"{accel}_ring_kib_s"] = ring / 1024
        figures[f"{accel}_console_io_kib_s"] = io / 1024
        if not ratio:
            ratio = ring / io
    report("console", ratio, "the same bytes through console_io in the same guest run",
           **figures)


if __name__ == "__main__":
    main()
