"""The 2-level event-channel ABI (Xen's event_2l.c): the port operations on shared_info's
evtchn_pending / evtchn_mask bitmaps and each vCPU's evtchn_pending_sel.

Every domain starts here; EVTCHNOP_init_control switches it to the FIFO ABI (event_fifo.py)
and EVTCHNOP_reset switches it back. Bits change only through atomic instructions
(hv.atomic), so the guest may clear them concurrently.
"""

from __future__ import annotations

import ctypes as C
from typing import TYPE_CHECKING

from pyxen.abi.event_channel import EVTCHN_2L_NR_CHANNELS
from pyxen.abi.xen import shared_info

from . import atomic

if TYPE_CHECKING:
    from pyxen.domain.vcpu import Vcpu

    from .event_channel import Channel, EventChannels

PENDING = shared_info.evtchn_pending.offset
MASK = shared_info.evtchn_mask.offset


def mark_events_pending(v: Vcpu) -> None:
    """vcpu_mark_events_pending: raise the vCPU's upcall if it was not already raised."""
    info = v.vcpu_info
    if info is None:
        return
    if atomic.exchange_byte(C.addressof(info), 1) == 0:  # evtchn_upcall_pending is byte 0
        v.raise_upcall()
    else:
        v.kick()


class Evtchn2L:
    """evtchn_port_ops_2l."""

    name = "2-level"
    max_evtchns = EVTCHN_2L_NR_CHANNELS
    set_priority = None  # the 2-level ABI has no priorities: EVTCHNOP_set_priority → -ENOSYS

    def __init__(self, ev: EventChannels) -> None:
        self.ev = ev

    def _bitmaps(self) -> int:
        return C.addressof(self.ev.domain.shared_info.page)

    def init(self, chn: Channel) -> None:
        """Nothing to set up per port in 2-level mode."""

    def set_pending(self, v: Vcpu, port: int) -> None:
        """evtchn_2l_set_pending: the strict order Xen uses, with atomic guest-memory ops
        made while no vCPU runs guest code where that matters (machine.exclusive, always the
        innermost lock: the software CPU's locked instructions are not atomic)."""
        base = self._bitmaps()
        word, bit = divmod(port, 64)
        with self.ev.domain.machine.exclusive():
            if atomic.test_and_set_bit(base + PENDING + 8 * word, bit):
                return  # already pending: nothing new to signal
            if not atomic.test_bit(base + MASK + 8 * word, bit):
                info = v.vcpu_info
                if info is not None and not atomic.test_and_set_bit(
                        C.addressof(info) + type(info).evtchn_pending_sel.offset, word):
                    mark_events_pending(v)
        self.ev.check_pollers(port)

    def clear_pending(self, port: int) -> None:
        word, bit = divmod(port, 64)
        with self.ev.domain.machine.exclusive():
            atomic.test_and_clear_bit(self._bitmaps() + PENDING + 8 * word, bit)

    def unmask(self, port: int) -> None:
        """evtchn_2l_unmask: an unmask that finds the port pending raises the upcall again."""
        base = self._bitmaps()
        word, bit = divmod(port, 64)
        v = self.ev.domain.vcpus[self.ev.ports[port].notify_vcpu]
        info = v.vcpu_info
        with self.ev.domain.machine.exclusive():
            if (atomic.test_and_clear_bit(base + MASK + 8 * word, bit)
                    and atomic.test_bit(base + PENDING + 8 * word, bit)
                    and info is not None
                    and not atomic.test_and_set_bit(
                        C.addressof(info) + type(info).evtchn_pending_sel.offset, word)):
                mark_events_pending(v)

    def is_pending(self, port: int) -> bool:
        word, bit = divmod(port, 64)
        return atomic.test_bit(self._bitmaps() + PENDING + 8 * word, bit)

    def is_masked(self, port: int) -> bool:
        word, bit = divmod(port, 64)
        return atomic.test_bit(self._bitmaps() + MASK + 8 * word, bit)

    def is_busy(self, port: int) -> bool:
        return False
