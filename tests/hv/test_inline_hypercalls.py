"""Which hypercalls may run inside a vCPU backend's engine (HypercallTable.inline)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from pyxen.abi import event_channel as E
from pyxen.abi import hvm as H
from pyxen.abi.xen import (
    HYPERVISOR_event_channel_op,
    HYPERVISOR_hvm_op,
    HYPERVISOR_memory_op,
    HYPERVISOR_sched_op,
    HYPERVISOR_xen_version,
)
from pyxen.hv import hypercall_table


def test_only_calls_that_complete_at_once_run_inline() -> None:
    table = hypercall_table()
    assert table.may_run_inline(HYPERVISOR_xen_version, (0, 0, 0, 0, 0))
    assert table.may_run_inline(HYPERVISOR_event_channel_op, (E.EVTCHNOP_send, 0, 0, 0, 0))
    assert table.may_run_inline(HYPERVISOR_hvm_op, (H.HVMOP_get_param, 0, 0, 0, 0))
    # These block, change the memory layout, or allocate: always a normal exit.
    assert not table.may_run_inline(HYPERVISOR_sched_op, (1, 0, 0, 0, 0))  # SCHEDOP_block
    assert not table.may_run_inline(HYPERVISOR_memory_op, (1, 0, 0, 0, 0))  # decrease_res.
    assert not table.may_run_inline(HYPERVISOR_event_channel_op,
                                    (E.EVTCHNOP_alloc_unbound, 0, 0, 0, 0))
    assert not table.may_run_inline(HYPERVISOR_hvm_op, (H.HVMOP_set_param, 0, 0, 0, 0))


def test_answers_given_natively_are_what_the_handlers_return() -> None:
    """HypercallTable.always (answered by the software CPU's C hook without dispatching)
    must agree with the handlers, whatever the other arguments and the caller's privilege."""
    table = hypercall_table()
    assert (HYPERVISOR_xen_version, 0) in table.always  # XENVER_version: the null hypercall
    for privileged in (False, True):
        vcpu = SimpleNamespace(domain=SimpleNamespace(privileged=privileged))
        for (nr, subop), result in table.always.items():
            for rest in ((0, 0, 0, 0), (0xFFFF_8000_DEAD_0000, 7, 1 << 63, 3)):
                assert table.call(vcpu, nr, (subop, *rest)) == result  # type: ignore[arg-type]


def test_an_answer_must_not_depend_on_the_callers_width() -> None:
    table = hypercall_table()
    for bad in (-1, 1 << 31):
        with pytest.raises(ValueError, match="non-negative int32"):
            table.answer_always(HYPERVISOR_xen_version, 99, bad)
