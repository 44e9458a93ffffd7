"""The software CPU's engine (QEMU inside Unicorn) keeps a record of the exception it is
raising, to turn a fault within a fault into #DF and a fault after #DF into a triple fault.
pyxen delivers every exception itself and resets that record, but a record left stale (by
an access the engine abandoned to pyxen, say) made the guest's next exception a "triple
fault", which the engine reports as an SVM shutdown exit; pyxen delivered that exit's
number (0x17f) to the guest as a vector, and Linux died of "segment-related general
protection fault: 0bfb" (the IDT entry 0x17f). Now the instruction runs again with nothing
recorded.

The test leaves a #DF recorded in flight after the guest's first page fault was delivered:
its next page fault meets the stale record, and the guest's own checks must pass anyway
(before the fix, the cpu_faults guest crashed there)."""

from __future__ import annotations

import pytest

from conftest import AVAILABLE
from guestkit import run_guest
from pyxen.domain.domain import Outcome
from pyxen.soft.cpustate import EXCP_VMEXIT_SHUTDOWN
from pyxen.soft.vcpu import SoftVcpu

DF, PF = 8, 14


def test_a_stale_double_fault_record_is_no_triple_fault(guests, monkeypatch) -> None:
    if "soft" not in AVAILABLE:
        pytest.skip("the software CPU is not available")
    seen: list[int] = []
    left: list[int] = []
    on_interrupt, emulate = SoftVcpu._on_interrupt, SoftVcpu._emulate

    def noting(self: SoftVcpu, uc, intno: int, data):  # type: ignore[no-untyped-def]
        seen.append(intno)
        return on_interrupt(self, uc, intno, data)

    def with_a_stale_record(self: SoftVcpu):  # type: ignore[no-untyped-def]
        if PF in seen and not left:
            ctx = self._state()
            ctx.old_exception = DF
            ctx.restore()
            left.append(DF)
        return emulate(self)

    monkeypatch.setattr(SoftVcpu, "_on_interrupt", noting)
    monkeypatch.setattr(SoftVcpu, "_emulate", with_a_stale_record)
    outcome, report = run_guest("cpu_faults", accel="soft")
    assert EXCP_VMEXIT_SHUTDOWN in seen  # the engine met the stale record
    assert outcome.result.outcome is Outcome.POWEROFF, outcome.result
    report.assert_all_passed()
