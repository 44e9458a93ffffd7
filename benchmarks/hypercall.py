"""Null hypercall round trip: pyxen against a bare port-I/O exit handled by C.

Both VMMs boot the same guest (guests/bench/bench_hypercall.S) with the same hypercall page,
so they execute identical guest instructions; only the exit handling differs: pyxen decodes
Xen's calling convention and dispatches xen_version(XENVER_version) in Python, the C loop
sets rax = 0 and re-enters. The per-call cost is the slope between a short and a long run
(boot and teardown cancel out); medians over interleaved rounds.
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


def time_pyxen(image: Path, where: int, n: int) -> float:
    started: list[float] = []

    def prepare(domain) -> None:  # type: ignore[no-untyped-def]
        domain.memory.write(where, struct.pack("<Q", n))
        started.append(time.perf_counter())

    outcome = run_image(image, DomainConfig(name="bench", memory_mib=16), prepare=prepare,
                        timeout=120)
    elapsed = time.perf_counter() - started[0]
    if outcome.result.outcome is not Outcome.POWEROFF:
        raise RuntimeError(f"bench guest ended with {outcome.result}")
    return elapsed


def main() -> None:
    image = guest_image("bench_hypercall")
    binary, page = build_reference()
    entry = parse_pvh_image(image).entry
    where = iterations_address(image)
    ref_us, pyxen_us = [], []
    for _ in range(ROUNDS):
        ref = [time_reference(binary, image, entry, where, n, page) for n in (SHORT, LONG)]
        ours = [time_pyxen(image, where, n) for n in (SHORT, LONG)]
        ref_us.append((ref[1] - ref[0]) / (LONG - SHORT) * 1e6)
        pyxen_us.append((ours[1] - ours[0]) / (LONG - SHORT) * 1e6)
    ref_m, pyxen_m = median(ref_us), median(pyxen_us)
    ratio = pyxen_m / ref_m
    print(f"null hypercall (xen_version) round trip, {ROUNDS} rounds, slope {SHORT}..{LONG} calls")
    print(f"  C reference, bare port-I/O exit: median {ref_m:.2f} us")
    print(f"  pyxen, xen_version hypercall:    median {pyxen_m:.2f} us")
    print(f"  ratio pyxen / reference:         {ratio:.3f}  (target <= 1.3)")
    report("hypercall", ratio, "C KVM loop, bare port-I/O exit, same guest code",
           pyxen_us=pyxen_m, reference_us=ref_m)
