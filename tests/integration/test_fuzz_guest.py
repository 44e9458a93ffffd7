"""The fuzzing guest (guests/fuzz.c) against the whole hypervisor, on each vCPU backend.

It makes a million hypercalls with random and boundary arguments on the software CPU (two
seeds of half a million, side by side; fewer on KVM, where this host emulates guest ring 0
slowly) and scribbles on its rings. Checked from outside, each in a `pyxen run` process of
its own:
- no Python exception escapes anywhere: no traceback, no "internal error", no VMM error
  (a handler's exception other than a Xen error code ends the domain with one);
- the guest survives and still works afterwards (its own TESTs) and powers off (exit 0);
- the VMM's memory stays bounded: the process's peak RSS is within guest RAM + the soft
  CPU's translation buffer + a fixed allowance, however many calls were made.

A failure prints the seed; `pyxen run guests/build/fuzz.elf --memory 64 --xenstore
--cmdline "seed=S calls=N trace"` replays it call by call.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from guestkit import image
from pyxen.soft.vcpu import TCG_BUFFER_BYTES

# Calls per backend in the default suite: the "a million in a CI run" on the
# software CPU (~5 000 calls/s a process here), as two seeds side by side (the machine has
# two cores); kvm_pvm runs the guest's own ring-0 code at ~2 M instructions/s, ~300 calls/s.
# Fixed seeds: a failure here is a regression, reproducible as it is. New seeds are for the
# long runs (README, "Fuzzing"); a seed that finds something becomes a test of its own.
RUNS = {"soft": {1: 500_000, 4: 500_000}, "kvm": {2: 10_000}}
MEMORY_MIB = 64
# Python, Unicorn, Capstone and pyxen's own state, measured at 60-70 MiB on a short run.
ALLOWANCE_MIB = 160


def start_fuzzer(accel: str, seed: int, calls: int, logs: Path) -> tuple[subprocess.Popen, Path]:
    """`pyxen run` the fuzzer, its output in files under `logs`."""
    cmd = [sys.executable, "-m", "pyxen.cli", "run", str(image("fuzz")), "--accel", accel,
           "--memory", str(MEMORY_MIB), "--xenstore", "--timeout", "1500",
           "--cmdline", f"seed={seed} calls={calls} report={max(calls // 4, 1)}"]
    stem = logs / f"fuzz-{seed}"
    with open(f"{stem}.out", "wb") as out, open(f"{stem}.err", "wb") as err:
        return subprocess.Popen(cmd, stdout=out, stderr=err), stem


def finish(proc: subprocess.Popen, stem: Path) -> tuple[int, str, str, int]:
    """Wait for it: (exit status, stdout, stderr, peak RSS in KiB)."""
    _, wait_status, usage = os.wait4(proc.pid, 0)  # its own rusage: peak RSS
    proc.returncode = os.waitstatus_to_exitcode(wait_status)
    return (proc.returncode, Path(f"{stem}.out").read_text(errors="replace"),
            Path(f"{stem}.err").read_text(errors="replace"), usage.ru_maxrss)


def test_the_fuzzing_guest_cannot_hurt_the_hypervisor(guests, accel: str, tmp_path: Path) -> None:
    running = {seed: start_fuzzer(accel, seed, calls, tmp_path)
               for seed, calls in RUNS[accel].items()}
    for seed, (proc, stem) in running.items():
        check_run(accel, seed, RUNS[accel][seed], *finish(proc, stem))


def check_run(accel: str, seed: int, calls: int, status: int, out: str, err: str,
              rss_kib: int) -> None:
    context = f"seed={seed} calls={calls} accel={accel}; stderr:\n{err[-3000:]}"
    assert "Traceback" not in err and "internal error" not in err, context
    assert status == 0, f"exit status {status}, {context}\nconsole tail:\n{out[-2000:]}"
    done = re.search(r"INFO fuzz_calls (\d+)", out)
    mutations = re.search(r"INFO fuzz_mutations (\d+)", out)
    assert done and mutations, f"no count in the report; {context}"
    assert int(done[1]) >= calls
    assert "TEST fuzz.survived PASS" in out
    failed = re.findall(r"TEST (\S+) FAIL(.*)", out)
    assert not failed, f"checks after the storm failed: {failed}; {context}"
    assert re.search(r"RESULT (\d+) 0\b", out), context
    bound_kib = (MEMORY_MIB + TCG_BUFFER_BYTES // 2**20 + ALLOWANCE_MIB) * 1024
    assert rss_kib <= bound_kib, f"peak RSS {rss_kib} KiB > {bound_kib} KiB; {context}"
