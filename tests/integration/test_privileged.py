"""The privileged and platform hypercalls (sysctl, domctl, platform_op, physdev_op, mmuext_op,
dm_op, hypfs_op, xenpmu_op, xsm_op, argo_op) answer as Xen 4.17 answers an HVM/PVH domU and
dom0. The kit guest `privileged` asserts the results from inside; here the host checks that it
passed on each backend, both ways, and that what dom0 was told matches the host and the domain.
"""

from __future__ import annotations

import os

import pytest

from guestkit import run_guest
from pyxen.abi import domctl as D
from pyxen.abi.xen import HYPERVISOR_physdev_op, HYPERVISOR_sysctl
from pyxen.domain.domain import Outcome
from pyxen.hv import hypercall_table

MEMORY_MIB = 64


def test_domu_gets_xens_answers(guests, accel: str) -> None:
    outcome, report = run_guest("privileged", memory_mib=MEMORY_MIB, accel=accel)
    report.assert_all_passed()
    assert outcome.result.outcome is Outcome.POWEROFF, outcome.result
    # The XTF case of issue 9: a wrong interface version is -EACCES, before XSM's -EPERM.
    assert "privileged.sysctl_old_version" in report.passed
    assert "privileged.sysctl_physinfo" in report.passed
    assert "nr_cpus" not in report.info  # a domU learns nothing about the host


def test_dom0_gets_real_host_and_domain_facts(guests, accel: str) -> None:
    outcome, report = run_guest("privileged", domid=0, privileged=True, memory_mib=MEMORY_MIB,
                                accel=accel)
    report.assert_all_passed()
    assert outcome.result.outcome is Outcome.POWEROFF, outcome.result
    assert int(report.value("nr_cpus")) == os.cpu_count()
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") >> 12
    assert int(report.value("total_pages")) == total
    assert report.value("domains") == "1"  # embedded mode: dom0 is the only domain
    flags = int(report.value("dominfo_flags"), 16)
    assert flags & D.XEN_DOMINF_hvm_guest and flags & D.XEN_DOMINF_running
    # Never shut down: Xen's shutdown code field holds its "invalid" ~0u, truncated.
    assert flags >> D.XEN_DOMINF_shutdownshift == 0xFFFF
    tot, max_pages = (int(x) for x in report.value("dominfo_pages").split())
    assert 0 < tot <= max_pages == MEMORY_MIB << 8


@pytest.mark.parametrize(("nr", "args", "text"), [
    (HYPERVISOR_physdev_op, (13, 0x1000), "physdev_op(PHYSDEVOP_map_pirq, 0x1000)"),
    (HYPERVISOR_sysctl, (0x2000, 0, 0, 0, 0), "sysctl(0x2000)"),
])
def test_trace_names_the_calls(nr: int, args: tuple[int, ...], text: str) -> None:
    assert hypercall_table().describe(nr, args).startswith(text)

