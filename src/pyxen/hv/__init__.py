"""The hypervisor proper: hypercall page and dispatch, one module per hypercall family."""

from __future__ import annotations

from . import (
    argo,
    console_io,
    dm,
    domctl,
    event_channel,
    grant_table,
    hvm,
    hypfs,
    memory,
    mmuext,
    multicall,
    physdev,
    platform_op,
    sched,
    sysctl,
    vcpu,
    version,
    xenpmu,
    xsm,
)
from .hypercall import HypercallTable

FAMILIES = (version, console_io, sched, hvm, memory, vcpu, event_channel, grant_table,
            multicall,
            # The privileged and platform calls: Xen's answers to a domU, a few sub-ops for dom0.
            sysctl, domctl, platform_op, physdev, mmuext, xsm, dm, hypfs, argo, xenpmu)


def hypercall_table() -> HypercallTable:
    """Every hypercall pyxen implements; all other numbers are -ENOSYS."""
    table = HypercallTable()
    for family in FAMILIES:
        family.register(table)
    return table
