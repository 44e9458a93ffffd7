"""The fuzzing guest (guests/fuzz.c) against the whole hypervisor, on each vCPU backend.

It makes a million hypercalls with random and boundary arguments on the software CPU (fewer
on KVM, where this host emulates guest ring 0 slowly) and scribbles on its rings. Checked
from outside, in a `pyxen run` process of its own:
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
# software CPU (~7 000 calls/s here); kvm_pvm runs the guest's own ring-0 code at ~2 M
# instructions/s, ~300 calls/s.
CALLS = {"soft": 1_000_000, "kvm": 10_000}
# Fixed seeds: a failure here is a regression, reproducible as it is. New seeds are for the
# long runs (README, "Fuzzing"); a seed that finds something becomes a test of its own.
SEEDS = {"soft": 1, "kvm": 2}
MEMORY_MIB = 64
# Python, Unicorn, Capstone and pyxen's own state, measured at 60-70 MiB on a short run.
ALLOWANCE_MIB = 160


def run_fuzzer(accel: str, seed: int, calls: int, logs: Path) -> tuple[int, str, str, int]:
    """`pyxen run` the fuzzer; (exit status, stdout, stderr, peak RSS in KiB)."""
    cmd = [sys.executable, "-m", "pyxen.cli", "run", str(image("fuzz")), "--accel", accel,
           "--memory", str(MEMORY_MIB), "--xenstore", "--timeout", "1500",
           "--cmdline", f"seed={seed} calls={calls} report={max(calls // 4, 1)}"]
    out_path, err_path = logs / "fuzz.out", logs / "fuzz.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        _, wait_status, usage = os.wait4(proc.pid, 0)  # its own rusage: peak RSS
        proc.returncode = os.waitstatus_to_exitcode(wait_status)
    return (proc.returncode, out_path.read_text(errors="replace"),
            err_path.read_text(errors="replace"), usage.ru_maxrss)


def test_the_fuzzing_guest_cannot_hurt_the_hypervisor(guests, accel: str, tmp_path: Path) -> None:
    seed = SEEDS[accel]
    calls = CALLS[accel]
    status, out, err, rss_kib = run_fuzzer(accel, seed, calls, tmp_path)
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
