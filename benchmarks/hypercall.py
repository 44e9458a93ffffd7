"""Null hypercall round trip: pyxen (on each vCPU backend) against a bare port-I/O exit
handled by C on the same engine.

Every VMM boots the same guest (guests/bench/bench_hypercall.S) with the same hypercall page,
so they execute identical guest instructions; only the exit handling differs: pyxen decodes
Xen's calling convention and dispatches xen_version(XENVER_version) in Python on KVM, and
answers it in its native OUT hook on the software CPU (pyxen.soft.native; also shown: the
Python path there, with PYXEN_SOFT_NATIVE=0); the C references set rax = 0 and go on. pyxen
on KVM is measured against hypercall_ref.c (a C KVM
loop re-entering KVM_RUN; the headline ratio); pyxen on the software CPU against
unicorn_ref.c (the same guest on libunicorn, the engine pyxen drives, answered in a C OUT
hook without leaving the engine; also shown: the same with the engine stopped and re-entered
at every hypercall). The per-call cost is the slope between a short and a long run (boot and
teardown cancel out); medians over interleaved rounds.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import time
from pathlib import Path
from unittest import mock

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
# The software CPU answers the null hypercall in its native hook (pyxen.soft.native), as the
# libunicorn reference does: ~0.1 us a call, so the slope needs millions of calls to stand
# out of the noise of starting a domain.
SOFT_SHORT, SOFT_LONG = 100_000, 4_000_000
PYTHON_HYPERCALLS = {"PYXEN_SOFT_NATIVE": "0"}  # the software CPU without its native hook
ROUNDS = 7


UNICORN_MODES = ("hook", "stop")  # unicorn_ref.c: answer in the hook / leave the engine


def gcc() -> str:
    """The C compiler the references are built with at run time."""
    path = shutil.which("gcc")
    if path is None:
        raise SystemExit("python -m benchmarks: the C reference programs are built at run "
                         "time with gcc, which is not installed (Debian: apt-get install gcc)")
    return path


def write_hypercall_page() -> Path:
    """pyxen's own hypercall page, for the C references to give the guest."""
    BUILD.mkdir(exist_ok=True)
    page = BUILD / "hypercall_page.bin"
    page.write_bytes(hypercall_page())
    return page


def build_reference() -> tuple[Path, Path]:
    BUILD.mkdir(exist_ok=True)
    binary = BUILD / "hypercall_ref"
    subprocess.run([gcc(), "-O2", "-Wall", "-o", str(binary), str(HERE / "hypercall_ref.c")],
                   check=True)
    return binary, write_hypercall_page()


def build_unicorn_reference() -> tuple[Path, Path]:
    """unicorn_ref.c, linked against the libunicorn the `unicorn` package ships (the engine
    the software CPU runs), with that package's x86.h."""
    import unicorn

    package = Path(unicorn.__file__).parent
    lib = package / "lib"
    BUILD.mkdir(exist_ok=True)
    binary = BUILD / "unicorn_ref"
    subprocess.run([gcc(), "-O2", "-Wall", f"-I{package / 'include'}", "-o", str(binary),
                    str(HERE / "unicorn_ref.c"), str(lib / "libunicorn.so.2"),
                    f"-Wl,-rpath,{lib}"], check=True)
    return binary, write_hypercall_page()


def symbol_address(image: Path, name: str) -> int:
    with image.open("rb") as f:
        symtab = ELFFile(f).get_section_by_name(".symtab")
        return symtab.get_symbol_by_name(name)[0]["st_value"]


def iterations_address(image: Path) -> int:
    return symbol_address(image, "iterations")


def time_reference(binary: Path, image: Path, entry: int, where: int, n: int, page: Path) -> float:
    out = subprocess.run([str(binary), str(image), hex(entry), hex(where), str(n), str(page)],
                         check=True, capture_output=True, text=True).stdout
    return int(out) / 1e9


def time_unicorn_reference(binary: Path, image: Path, n: int, page: Path,
                           mode: str = "hook") -> float:
    """Seconds unicorn_ref takes from its first uc_emu_start to the shutdown hypercall."""
    entry = parse_pvh_image(image).entry
    args = [image, hex(entry), hex(iterations_address(image)), str(n), page,
            hex(symbol_address(image, "hypercall_page")), mode]
    out = subprocess.run([str(binary), *map(str, args)], check=True, capture_output=True,
                         text=True).stdout
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
    uc_binary, uc_page = build_unicorn_reference() if "soft" in accels else (None, None)
    ref_us: list[float] = []
    uc_us: dict[str, list[float]] = {m: [] for m in UNICORN_MODES}
    ours: dict[str, list[float]] = {a: [] for a in accels}
    soft_python: list[float] = []
    for _ in range(ROUNDS):
        if binary and page:
            ref = [time_reference(binary, image, entry, where, n, page) for n in (SHORT, LONG)]
            ref_us.append(slope_us(ref, SHORT, LONG))
        if uc_binary and uc_page:
            for mode in UNICORN_MODES:
                runs = [time_unicorn_reference(uc_binary, image, n, uc_page, mode)
                        for n in (SOFT_SHORT, SOFT_LONG)]
                uc_us[mode].append(slope_us(runs, SOFT_SHORT, SOFT_LONG))
        for accel in accels:
            factory = machine_factory(accel)[0]
            short, long = (SOFT_SHORT, SOFT_LONG) if accel == "soft" else (SHORT, LONG)
            runs = [time_pyxen(image, where, n, factory) for n in (short, long)]
            ours[accel].append(slope_us(runs, short, long))
        if "soft" in accels:
            with mock.patch.dict(os.environ, PYTHON_HYPERCALLS):
                runs = [time_pyxen(image, where, n, machine_factory("soft")[0])
                        for n in (SHORT, LONG)]
            soft_python.append(slope_us(runs, SHORT, LONG))
    medians = {a: median(v) for a, v in ours.items()}
    nan = float("nan")
    ref_m = median(ref_us) if ref_us else nan
    uc_m = {m: median(v) if v else nan for m, v in uc_us.items()}
    refs = {"kvm": ref_m, "soft": uc_m["hook"]}
    print(f"null hypercall (xen_version) round trip, {ROUNDS} rounds, slope {SHORT}..{LONG} "
          f"calls ({SOFT_SHORT}..{SOFT_LONG} on libunicorn and the software CPU)")
    print(f"  C reference, bare port-I/O exit on KVM:             median {ref_m:8.3f} us")
    print(f"  C reference, libunicorn, answered in its OUT hook:  median {uc_m['hook']:8.3f} us")
    print(f"  C reference, libunicorn, engine stopped/re-entered: median {uc_m['stop']:8.3f} us")
    for accel, m in medians.items():
        print(f"  pyxen on {accel + ',':5} xen_version:                   median {m:8.3f} us"
              f"  (ratio to its reference {m / refs[accel]:.3f})")
    if soft_python:
        print(f"  pyxen on soft, Python path (PYXEN_SOFT_NATIVE=0):   median "
              f"{median(soft_python):8.3f} us")
    ratio = medians.get("kvm", nan) / ref_m
    figures = {f"pyxen_{a}_us" if a != "kvm" else "pyxen_us": m for a, m in medians.items()}
    figures["unicorn_reference_us"] = uc_m["hook"]
    figures["unicorn_stop_reference_us"] = uc_m["stop"]
    if soft_python:
        figures["pyxen_soft_python_us"] = median(soft_python)
    if "soft" in medians:
        figures["soft_ratio"] = medians["soft"] / ref_m
        figures["soft_unicorn_ratio"] = medians["soft"] / uc_m["hook"]
    print(f"  ratio pyxen(kvm) / KVM reference:                    {ratio:.3f}  (target <= 1.3)")
    if "soft" in medians:
        print(f"  soft null hypercall = {figures['soft_unicorn_ratio']:.2f}× the C libunicorn "
              f"reference  (target <= 1.5)")
    report("hypercall", ratio, "C KVM loop, bare port-I/O exit, same guest code",
           reference_us=ref_m, **figures)
