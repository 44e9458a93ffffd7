"""The cpu_syscall kit guest: SYSCALL/SYSRET and SYSENTER/SYSEXIT from ring 3 (issue 10,
item 3), on each backend. The guest checks from inside; this asserts that every check ran
and passed, and that the vendor-dependent ones match the vendor the guest saw."""

from __future__ import annotations

import pytest

from guestkit import run_guest
from pyxen.domain.domain import Outcome
from pyxen.toolstack.accel import hardware_virtualization

KVM_PVM = ("this host's KVM has no vmx/svm (kvm_pvm): guest ring 3 runs natively and a ring-3 "
           "SYSCALL reaches the guest's LSTAR still at CPL 3 (its `mov %cr0` raises #GP), even "
           "with EFER.SCE clear, and SYSENTER raises #UD")
COMMON = ["syscall_reaches_lstar", "syscall_kernel_cpl0", "syscall_rcx_next_rip",
          "syscall_r11_rflags", "syscall_fmask", "syscall_keeps_rsp", "sysret_ring3_selectors",
          "sysret_rflags_from_r11", "syscall_sce_clear_ud", "sysenter_cs0_gp"]
INTEL = ["compat_syscall_ud_intel", "sysenter_reaches_eip", "sysenter_kernel_cpl0",
         "sysenter_stack", "sysexit_ring3"]
AMD = ["compat_syscall_cstar_amd", "compat_sysretl_selectors", "sysenter64_ud_amd"]


def test_fast_system_calls_from_ring3(guests, accel: str) -> None:
    if accel == "kvm" and not hardware_virtualization():
        pytest.skip(KVM_PVM)
    outcome, report = run_guest("cpu_syscall", accel=accel)
    assert outcome.result.outcome is Outcome.POWEROFF, outcome.result
    report.assert_all_passed()
    amd = report.value("cpu_syscall_vendor") in ("AuthenticAMD", "HygonGenuine")
    expected = {f"cpu_syscall.{name}" for name in COMMON + (AMD if amd else INTEL)}
    assert set(report.passed) == expected
