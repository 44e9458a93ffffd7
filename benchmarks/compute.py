"""Guest ring-0 compute: instructions per second on each vCPU backend against the host.

The guest (guests/bench/bench_compute.S) runs a fixed 5-instruction integer loop in ring 0;
benchmarks/compute_ref.c runs the same loop natively, built by gcc in the same run. Guest
speed is the slope between a short and a long run (boot and teardown cancel out), with run
lengths per backend so that each long run takes about a second (KVM on hosts without
VMX/SVM emulates ring-0 code and is ~100x slower than the software CPU there).
"""

from __future__ import annotations

import subprocess

from benchmarks.common import median, report
from benchmarks.hypercall import BUILD, HERE, iterations_address, slope_us, time_pyxen
from pyxen.toolstack.accel import available_accels, machine_factory
from pyxen.toolstack.demo_cmd import guest_image

INSNS_PER_ITERATION = 5
ROUNDS = 5
# (short, long) iterations per backend; the native loop runs NATIVE iterations.
RUNS = {"kvm": (20_000, 200_000), "soft": (2_000_000, 40_000_000)}
NATIVE = 200_000_000


def build_native() -> str:
    BUILD.mkdir(exist_ok=True)
    binary = BUILD / "compute_ref"
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(binary), str(HERE / "compute_ref.c")],
                   check=True)
    return str(binary)


def native_mips(binary: str) -> float:
    ns = int(subprocess.run([binary, str(NATIVE)], check=True, capture_output=True,
                            text=True).stdout)
    return NATIVE * INSNS_PER_ITERATION / ns * 1e3


def main() -> None:
    image = guest_image("bench_compute")
    where = iterations_address(image)
    binary = build_native()
    accels = available_accels()
    native: list[float] = []
    guest: dict[str, list[float]] = {a: [] for a in accels}
    for _ in range(ROUNDS):
        native.append(native_mips(binary))
        for accel in accels:
            short, long = RUNS[accel]
            factory = machine_factory(accel)[0]
            runs = [time_pyxen(image, where, n, factory) for n in (short, long)]
            guest[accel].append(INSNS_PER_ITERATION / slope_us(runs, short, long))
    native_m = median(native)
    medians = {a: median(v) for a, v in guest.items()}
    print(f"guest ring-0 compute, {ROUNDS} rounds, {INSNS_PER_ITERATION}-instruction loop")
    print(f"  native (host, gcc):   median {native_m:9.1f} M instructions/s")
    for accel, m in medians.items():
        print(f"  pyxen on {accel + ':':5}       median {m:9.1f} M instructions/s"
              f"  (ratio to native {m / native_m:.4f})")
    best = max(medians, key=lambda a: medians[a]) if medians else "none"
    ratio = medians.get(best, 0.0) / native_m
    print(f"  fastest backend here: {best}, ratio to native {ratio:.4f}")
    report("compute", ratio, "the same loop run natively on the host (gcc)",
           native_mips=native_m, best=best,
           **{f"{a}_mips": m for a, m in medians.items()},
           **{f"{a}_ratio": m / native_m for a, m in medians.items()})
