"""The hypervisor proper: hypercall page and dispatch, one module per hypercall family."""

from __future__ import annotations

from . import (
    console_io,
    event_channel,
    grant_table,
    hvm,
    memory,
    multicall,
    sched,
    vcpu,
    version,
)
from .hypercall import HypercallTable

FAMILIES = (version, console_io, sched, hvm, memory, vcpu, event_channel, grant_table,
            multicall)


def hypercall_table() -> HypercallTable:
    """Every hypercall pyxen implements; all other numbers are -ENOSYS."""
    table = HypercallTable()
    for family in FAMILIES:
        family.register(table)
    return table
