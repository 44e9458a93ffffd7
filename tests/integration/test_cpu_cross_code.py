"""The cpu_cross_code kit guest: code one vCPU patches while another runs it, the way
Linux's text_poke_bp changes a static key (int3 first, the new first byte last).

On the software CPU each vCPU's engine keeps its own translated code, which another
engine's stores do not invalidate: vCPU 1 re-ran an int3 that vCPU 0 had already removed,
its #BP handler backed up over it (as Linux's kprobe_int3_handler does), and the two went
round forever -- Debian's Linux hung at boot so, about one boot in eight under load.
SoftVcpu._ran_stale_int now drops such a translation and runs what memory holds.
"""

from __future__ import annotations

import pytest

from guestkit import run_guest
from pyxen.toolstack.accel import hardware_virtualization

CHECKS = ["int3_taken", "removed_int3_not_rerun", "call_results"]


@pytest.fixture(scope="module")
def reports() -> dict:
    return {}


@pytest.mark.parametrize("check", CHECKS)
def test_cpu_cross_code(guests, accel: str, check: str, reports: dict) -> None:
    if accel == "kvm" and not hardware_virtualization():
        pytest.skip("kvm_pvm fails to emulate int3 in guest ring 0 (KVM internal error)")
    if accel not in reports:
        outcome, report = run_guest("cpu_cross_code", vcpus=2, accel=accel)
        reports[accel] = (outcome.result.outcome, report)
    outcome, report = reports[accel]
    full = f"cpu_cross_code.{check}"
    report.assert_check_passed(full, outcome)
