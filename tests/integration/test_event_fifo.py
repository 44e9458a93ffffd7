"""FIFO event channels (issue 9): guests/evtchn_fifo.c switches from the 2-level ABI to the
FIFO ABI and consumes its own queues, on every vCPU backend, with one and two vCPUs.

The guest asserts Xen 4.17's results from inside (init_control/expand_array/set_priority
errors, the port limits of each ABI, priorities, first-in first-out order, masking, IPIs,
VIRQ_TIMER, SCHEDOP_poll, EVTCHNOP_reset back to 2-level); here the host checks that all
passed and that the limits it reports are the ones pyxen was configured with."""

from __future__ import annotations

import pytest

from guestkit import GUEST_TIMEOUT, run_guest
from pyxen.domain.domain import Outcome

MAX_PORT = 4351  # max_event_channels: past 2-level's 4096 ports, so FIFO ports go beyond


@pytest.mark.parametrize("vcpus", [1, 2])
def test_fifo_guest_passes(guests, accel: str, vcpus: int) -> None:
    outcome, report = run_guest("evtchn_fifo", cmdline=f"max_port={MAX_PORT}", vcpus=vcpus,
                                max_event_channels=MAX_PORT, accel=accel, timeout=120)
    report.assert_all_passed()
    assert outcome.result.outcome is Outcome.POWEROFF, outcome.result
    assert report.value("max_port_2l") == "4095"  # EVTCHN_2L_NR_CHANNELS - 1
    assert report.value("max_port_fifo") == str(MAX_PORT)
    assert int(report.value("high_port")) >= 4096
    if vcpus == 2:
        assert "fifo.ap_ipi_delivered" in report.passed


def test_fifo_guest_with_xl_default_limit(guests) -> None:
    """xl's default max_event_channels (1023) bounds both ABIs."""
    outcome, report = run_guest("evtchn_fifo", accel="auto", timeout=GUEST_TIMEOUT)
    report.assert_all_passed()
    assert report.value("max_port_2l") == "1023"
    assert report.value("max_port_fifo") == "1023"
