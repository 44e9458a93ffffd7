"""The cpu_vmcall kit guest: hypercalls through VMCALL and VMMCALL (issue 10, item 4), as
Linux issues them since the XSA-466 fixes. Xen 4.17 takes both as hypercalls for an HVM/PVH
guest: the same dispatch and registers as the hypercall page, -EPERM from ring 3."""

from __future__ import annotations

import pytest

from guestkit import run_guest
from pyxen.domain.domain import Outcome
from pyxen.kvm.xen import host_intercepts_hypercalls

CHECKS = [f"cpu_vmcall.{insn}_{check}" for insn in ("vmcall", "vmmcall")
          for check in ("xen_version", "preserves_registers", "console_write",
                        "unknown_subop", "unknown_hypercall", "from_ring3_eperm")]


def test_hypercalls_through_vmcall_and_vmmcall(guests, accel: str) -> None:
    if accel == "kvm":
        ok, why = host_intercepts_hypercalls()
        if not ok:
            pytest.skip(f"this host's KVM cannot intercept vmcall/vmmcall ({why}); "
                        "a guest's vCPU would hang in KVM_RUN")
    outcome, report = run_guest("cpu_vmcall", accel=accel)
    assert outcome.result.outcome is Outcome.POWEROFF, outcome.result
    report.assert_all_passed()
    assert set(report.passed) == set(CHECKS)
    for insn in ("vmcall", "vmmcall"):
        assert f"INFO cpu_vmcall_console_{insn} ok" in report.console
