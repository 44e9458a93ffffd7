"""Null hypercall round trip: pyxen (on each vCPU backend) against a bare port-I/O exit
handled by C.

Every VMM boots the same guest (guests/bench/bench_hypercall.S) with the same hypercall page,
so they execute identical guest instructions; only the exit handling differs: pyxen decodes
Xen's calling convention and dispatches xen_version(XENVER_version) in Python, the C loop
sets rax = 0 and re-enters KVM. pyxen runs on KVM (the headline ratio) and on the software
CPU (its exit is a Unicorn stop/start instead of KVM_RUN). The per-call cost is the slope
between a short and a long run (boot and teardown cancel out); medians over interleaved
rounds.
"""

from __future__ import annotations

import struct
import subprocess
import time
from pathlib import Path

from elftools.elf.elffile import ELFFile

from benchmarks.common import median, report
from pyxen.domain.domain import DomainConfig, Outcome
from pyxen.domain.loader import parse_pvh_image
from pyxen.hv.hypercall import hypercall_page
from pyxen.toolstack.accel import MachineFactory, available_accels, machine_factory
from pyxen.toolstack.demo_cmd import guest_image
from pyxen.toolstack.embedded import run_image

HERE = Path(__file__).parent
BUILD = HERE / "build"
SHORT, LONG = 2_000, 40_000
ROUNDS = 7


def build_reference() -> tuple[Path, Path]:
    BUILD.mkdir(exist_ok=True)
    binary = BUILD / "hypercall_ref"
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(binary), str(HERE / "hypercall_ref.c")],
                   check=True)
    page = BUILD / "hypercall_page.bin"
    page.write_bytes(hypercall_page())
    return binary, page


def iterations_address(image: Path) -> int:
    with image.open("rb") as f:
        symtab = ELFFile(f).get_section_by_name(".symtab")
        return symtab.get_symbol_by_name("iterations")[0]["st_value"]


def time_reference(binary: Path, image: Path, entry: int, where: int, n: int, page: Path) -> float:
    out = subprocess.run([str(binary), str(image), hex(entry), hex(where), str(n), str(page)],
                         check=True, capture_output=True, text=True).stdout
    return int(out) / 1e9


def time_pyxen(image: Path, where: int, n: int, factory: MachineFactory) -> float:
    """Seconds from the start of the domain to its poweroff, with `iterations` = n."""
    started: list[float] = []

    def prepare(domain) -> None:  # type: ignore[no-untyped-def]
        domain.memory.write(where, struct.pack("<Q", n))
        started.append(time.perf_counter())

    outcome = run_image(image, DomainConfig(name="bench", memory_mib=16), prepare=prepare,
                        timeout=300, machine_factory=factory)
    elapsed = time.perf_counter() - started[0]
    if outcome.result.outcome is not Outcome.POWEROFF:
        raise RuntimeError(f"bench guest ended with {outcome.result}")
    return elapsed


def slope_us(times: list[float], short: int, long: int) -> float:
    """Microseconds per iteration: the slope between a short and a long run."""
    return (times[1] - times[0]) / (long - short) * 1e6


def main() -> None:
    image = guest_image("bench_hypercall")
    entry = parse_pvh_image(image).entry
    where = iterations_address(image)
    accels = available_accels()
    has_kvm = "kvm" in accels
    binary, page = build_reference() if has_kvm else (None, None)
    ref_us: list[float] = []
    ours: dict[str, list[float]] = {a: [] for a in accels}
    for _ in range(ROUNDS):
        if binary and page:
            ref = [time_reference(binary, image, entry, where, n, page) for n in (SHORT, LONG)]
            ref_us.append(slope_us(ref, SHORT, LONG))
        for accel in accels:
            factory = machine_factory(accel)[0]
            runs = [time_pyxen(image, where, n, factory) for n in (SHORT, LONG)]
            ours[accel].append(slope_us(runs, SHORT, LONG))
    medians = {a: median(v) for a, v in ours.items()}
    ref_m = median(ref_us) if ref_us else float("nan")
    print(f"null hypercall (xen_version) round trip, {ROUNDS} rounds, slope {SHORT}..{LONG} calls")
    print(f"  C reference, bare port-I/O exit on KVM: median {ref_m:.2f} us")
    for accel, m in medians.items():
        print(f"  pyxen on {accel + ',':5} xen_version:      median {m:.2f} us"
              f"  (ratio to reference {m / ref_m:.3f})")
    ratio = medians.get("kvm", float("nan")) / ref_m
    figures = {f"pyxen_{a}_us" if a != "kvm" else "pyxen_us": m for a, m in medians.items()}
    if "soft" in medians:
        figures["soft_ratio"] = medians["soft"] / ref_m
    print(f"  ratio pyxen(kvm) / reference:           {ratio:.3f}  (target <= 1.3)")
    report("hypercall", ratio, "C KVM loop, bare port-I/O exit, same guest code",
           reference_us=ref_m, **figures)
