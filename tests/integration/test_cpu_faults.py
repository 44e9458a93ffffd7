"""The cpu_faults and cpu_triple kit guests: faults within faults and a triple fault
(issue 10, items 1 and 6), on each backend.

The guest checks from inside; here each check is one test, run as its own boot
(`only=GROUP`) so that one check that brings the domain down cannot hide the others, and a
backend that cannot do something is named for what it lacks.
"""

from __future__ import annotations

import functools
import subprocess
import sys
import time

import pytest

from guestkit import Report, image, run_guest
from pyxen.domain.domain import Outcome
from pyxen.toolstack.accel import hardware_virtualization

# check → the guest's group that runs it (guests/cpu_faults.c, only=GROUP)
GROUPS = {
    "pf_chain": "pf_chain",
    "pf_while_delivering": "pf_while_delivering",
    "double_fault_ist": "double_fault",
    "double_fault_cr2": "double_fault",
    "int_gate_dpl_intn": "int_gate_dpl",
    "int_gate_dpl_int3": "int_gate_dpl",
    "ts_short_tss": "ts_short_tss",
    "icebp": "icebp",
    "ss_rbp": "ss_noncanonical",
    "ss_push": "ss_noncanonical",
}

# What this host's kvm_pvm (no vmx/svm: guest ring 0 is emulated) was seen to do instead.
KVM_PVM = {
    "pf_while_delivering": "kvm_pvm delivers a #PF raised while pushing a benign "
                           "exception's frame as #DF, not serially as #PF",
    "double_fault_cr2": "kvm_pvm leaves CR2 at the first #PF's address when the second #PF "
                        "becomes a #DF",
    "int_gate_dpl_intn": "kvm_pvm delivers `int n` from ring 3 as #UD",
    "int_gate_dpl_int3": "kvm_pvm delivers int3 from ring 3 through a DPL-0 gate as #BP",
    "ts_short_tss": "kvm_pvm reads an IST pointer past the TSS limit instead of raising #TS",
    "icebp": "kvm_pvm fails to emulate ICEBP in ring 0 (KVM internal error)",
}


@functools.cache
def group_report(accel: str, group: str) -> tuple[Outcome, Report]:
    """One boot per (backend, group), shared by the checks of that group."""
    outcome, report = run_guest("cpu_faults", cmdline=f"only={group}", accel=accel)
    return outcome.result.outcome, report


@pytest.mark.parametrize("check", list(GROUPS))
def test_cpu_faults_check(guests, accel: str, check: str) -> None:
    if accel == "kvm" and check in KVM_PVM and not hardware_virtualization():
        pytest.skip(KVM_PVM[check])
    outcome, report = group_report(accel, GROUPS[check])
    full = f"cpu_faults.{check}"
    report.assert_check_passed(full, outcome)


def test_repeated_page_faults_are_each_a_page_fault(guests, accel: str) -> None:
    """Five #PF in a row, each with its own error code (write, write, write, read, write):
    none of them turned into a #DF."""
    _, report = group_report(accel, "pf_chain")
    assert report.value("cpu_faults_pf_errors") == "0x2,0x2,0x2,0x0,0x2"


TRIPLE_TIMEOUT = 120.0


def test_a_triple_fault_ends_the_domain_as_a_crash_at_once(guests, accel: str) -> None:
    """The guest loads an empty IDT and faults: the domain crashes by itself (exit status 3
    of `pyxen run`), long before the generous timeout."""
    start = time.monotonic()
    outcome, report = run_guest("cpu_triple", timeout=TRIPLE_TIMEOUT, accel=accel)
    elapsed = time.monotonic() - start
    assert report.info.get("cpu_triple_armed") == ["1"], report.console[-1500:]
    assert outcome.result.outcome is Outcome.CRASH, outcome.result
    assert "triple fault" in outcome.result.detail, outcome.result
    assert elapsed < TRIPLE_TIMEOUT / 2, f"the domain ended only after {elapsed:.0f} s"
    assert "still_running" not in report.console


def test_pyxen_run_reports_a_triple_fault_as_exit_status_3(guests, accel: str) -> None:
    """What a user sees: `pyxen run` ends by itself with the crash status and says why."""
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pyxen.cli", "run", str(image("cpu_triple")),
                           "--accel", accel, "--timeout", str(int(TRIPLE_TIMEOUT))],
                          capture_output=True, text=True, timeout=TRIPLE_TIMEOUT + 60)
    assert done.returncode == 3, (done.returncode, done.stderr[-1500:])
    assert "triple fault" in done.stderr
    assert time.monotonic() - start < TRIPLE_TIMEOUT / 2
