"""The cpu_cpuid kit guest: CPUID a guest can plan with (issue 10, item 5), on each backend.

The guest checks from inside; here each check's verdict is one test, so that a backend
that cannot enforce something (the software CPU's CR4 checks, this host's kvm_pvm) is
named for what it lacks instead of hiding the rest.
"""

from __future__ import annotations

import functools

import pytest

from guestkit import Report, run_guest
from pyxen.domain.domain import Outcome
from pyxen.toolstack.accel import hardware_virtualization, machine_factory

KVM_PVM = ("this host's KVM has no vmx/svm (kvm_pvm): it answers CPUID leaf 7 ECX from the "
           "host CPU, not from KVM_SET_CPUID2, and accepts CR4.UMIP")


@functools.cache
def report_on(accel: str) -> Report:
    """One boot of the guest per backend, shared by the tests below."""
    outcome, report = run_guest("cpu_cpuid", accel=accel)
    assert outcome.result.outcome is Outcome.POWEROFF, outcome.result
    assert report.result is not None, f"no RESULT line:\n{report.console[-2000:]}"
    return report


def verdict(report: Report, name: str) -> None:
    full = f"cpu_cpuid.{name}"
    assert full not in report.failed, f"{full}: {report.failed[full]}"
    assert full in report.passed, f"the guest did not run {full}"


def backend_tsc_khz(accel: str) -> int:
    machine = machine_factory(accel)[0]([])
    try:
        machine.create_vcpu(0, 0xE8)
        return machine.tsc_khz
    finally:
        machine.close()


@pytest.mark.parametrize("name", ["max_leaf", "xen_tsc_khz", "leaf15_present", "leaf15_exact",
                                  "leaf15_linux", "leaf16"])
def test_frequency_leaves_agree_with_xens_tsc_leaf(guests, accel: str, name: str) -> None:
    verdict(report_on(accel), name)


def test_frequencies_are_the_backends_tsc(guests, accel: str) -> None:
    report = report_on(accel)
    khz = backend_tsc_khz(accel)
    assert int(report.value("xen_tsc_khz")) == khz
    assert int(report.value("leaf15_tsc_khz")) == khz
    den, num, crystal_hz = map(int, report.value("leaf15").split())
    assert crystal_hz * num == khz * 1000 * den
    assert int(report.value("leaf16").split()[0]) == khz // 1000


def test_tsc_advances_at_that_rate_against_xen_time(guests, accel: str) -> None:
    verdict(report_on(accel), "tsc_rate")


@pytest.mark.parametrize("name", ["no_vmx", "no_svm"])
def test_nested_virtualization_is_not_advertised(guests, accel: str, name: str) -> None:
    verdict(report_on(accel), name)


def test_umip_is_not_advertised(guests, accel: str) -> None:
    if accel == "kvm" and not hardware_virtualization():
        pytest.skip(KVM_PVM)
    verdict(report_on(accel), "no_umip")


@pytest.mark.parametrize("bit", ["vmxe", "umip"])
def test_cr4_bits_cpuid_does_not_offer_raise_gp(guests, accel: str, bit: str) -> None:
    if accel == "kvm" and bit == "umip" and not hardware_virtualization():
        pytest.skip(KVM_PVM)
    verdict(report_on(accel), f"cr4_{bit}_gp")
