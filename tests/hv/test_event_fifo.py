"""The FIFO event-channel ABI's queue logic (hv/event_fifo.py) against Xen 4.17's
event_fifo.c, on a domain stand-in: real guest memory and shared_info, fake vCPUs.

What the guest would see is read back from its own pages: event words, the control block's
ready bits and heads, and evtchn_upcall_pending."""

from __future__ import annotations

import contextlib
import ctypes as C
from types import SimpleNamespace

import pytest

from pyxen.abi import event_channel as E
from pyxen.abi.errno import EACCES, EINVAL, ENOENT, ENOSPC, ENOSYS, XenError
from pyxen.abi.xen import vcpu_info
from pyxen.domain.memory import PAGE_SHIFT, GuestMemory
from pyxen.hv import event_fifo
from pyxen.hv.event_2l import Evtchn2L
from pyxen.hv.event_channel import ECS_IPI, EventChannels
from pyxen.hv.event_fifo import EvtchnFifo
from pyxen.hv.shared_info import SharedInfo

PENDING, MASKED, LINKED, BUSY = 1 << 31, 1 << 30, 1 << 29, 1 << 28
CB_GFN = [0x100, 0x101]  # control-block frames of vCPU 0 and 1
ARRAY_GFN = 0x200  # first event-array frame


class FakeVcpu:
    def __init__(self, index: int) -> None:
        self.index = index
        self.vcpu_info = vcpu_info()
        self.poll_port: int | None = None
        self.kicks = 0
        self.upcalls = 0

    def kick(self) -> None:
        self.kicks += 1

    def raise_upcall(self) -> None:
        self.upcalls += 1
        self.kick()


@pytest.fixture
def dom():  # type: ignore[no-untyped-def]
    mem = GuestMemory(16 << 20, 16 << 20, "fifo-test")
    d = SimpleNamespace(domid=1, memory=mem, vcpus=[FakeVcpu(0), FakeVcpu(1)],
                        machine=SimpleNamespace(exclusive=contextlib.nullcontext))
    d.shared_info = SharedInfo(mem, on_move=lambda: None)
    d.evtchn = EventChannels(d, 8191)  # type: ignore[arg-type]
    yield d
    mem.close()


def ipi(d, vcpu: int = 0) -> int:  # type: ignore[no-untyped-def]
    port = d.evtchn.get_free_port()
    chn = d.evtchn.bind(port)
    chn.state, chn.notify_vcpu = ECS_IPI, vcpu
    return port


def fifo_on(d, pages: int = 1, vcpus: tuple[int, ...] = (0,)) -> EvtchnFifo:  # type: ignore[no-untyped-def]
    for v in vcpus:
        event_fifo.init_control(d.evtchn, v, CB_GFN[v], 0)
    fifo = d.evtchn.port_ops
    assert isinstance(fifo, EvtchnFifo)
    for i in range(pages):
        fifo.add_page_to_event_array(ARRAY_GFN + i)
    return fifo


def word(d, port: int) -> int:  # type: ignore[no-untyped-def]
    return d.memory.read_u64(ARRAY_GFN * 4096 + 4 * port) & 0xFFFF_FFFF


def set_word(d, port: int, value: int) -> None:  # type: ignore[no-untyped-def]
    d.memory.write(ARRAY_GFN * 4096 + 4 * port, value.to_bytes(4, "little"))


def control(d, vcpu: int = 0) -> E.evtchn_fifo_control_block:  # type: ignore[no-untyped-def]
    return E.evtchn_fifo_control_block.from_buffer_copy(
        d.memory.read(CB_GFN[vcpu] << PAGE_SHIFT, C.sizeof(E.evtchn_fifo_control_block)))


def errno_of(fn, *args) -> int:  # type: ignore[no-untyped-def]
    with pytest.raises(XenError) as e:
        fn(*args)
    return e.value.errno


def test_init_control_checks_in_xens_order_and_failures_stay_2level(dom) -> None:
    ev = dom.evtchn
    assert errno_of(event_fifo.init_control, ev, 2, 0xFFFFFFFFFF, 3) == ENOENT  # vCPU first
    assert errno_of(event_fifo.init_control, ev, 0, CB_GFN[0], 4096 - 72 + 8) == EINVAL
    assert errno_of(event_fifo.init_control, ev, 0, CB_GFN[0], 12) == EINVAL
    assert errno_of(event_fifo.init_control, ev, 0, 0xF0000, 0) == EINVAL  # not RAM
    assert errno_of(event_fifo.init_control, ev, 0, 1 << 60, 0) == EINVAL
    assert isinstance(ev.port_ops, Evtchn2L)
    port = ipi(dom)
    assert errno_of(ev.set_priority, port, 3) == ENOSYS
    event_fifo.init_control(ev, 0, CB_GFN[0], 4096 - 72)  # the last offset that fits
    assert isinstance(ev.port_ops, EvtchnFifo)
    assert errno_of(event_fifo.init_control, ev, 0, CB_GFN[1], 0) == EINVAL  # again


def test_events_link_in_send_order_and_raise_one_upcall(dom) -> None:
    fifo_on(dom)
    a, b, c = ipi(dom), ipi(dom), ipi(dom)
    for port in (c, a, b):
        dom.evtchn.set_pending(0, port)
    cb = control(dom)
    assert cb.head[E.EVTCHN_FIFO_PRIORITY_DEFAULT] == c
    assert cb.ready == 1 << E.EVTCHN_FIFO_PRIORITY_DEFAULT
    assert word(dom, c) == PENDING | LINKED | a
    assert word(dom, a) == PENDING | LINKED | b
    assert word(dom, b) == PENDING | LINKED
    assert dom.vcpus[0].vcpu_info.evtchn_upcall_pending == 1
    # Raising a pending, linked event again changes nothing.
    dom.evtchn.set_pending(0, a)
    assert word(dom, a) == PENDING | LINKED | b


def test_an_unlinked_tail_means_an_empty_queue(dom) -> None:
    fifo_on(dom)
    a, b = ipi(dom), ipi(dom)
    dom.evtchn.set_pending(0, a)
    set_word(dom, a, 0)  # the guest consumed it: unlinked, not pending
    dom.evtchn.set_pending(0, b)
    assert control(dom).head[7] == b  # written again: the tail was no longer linked
    assert word(dom, a) == 0


def test_priorities_use_separate_queues(dom) -> None:
    fifo_on(dom)
    lo, hi = ipi(dom), ipi(dom)
    dom.evtchn.set_priority(lo, 10)
    dom.evtchn.set_priority(hi, 2)
    dom.evtchn.set_pending(0, lo)
    dom.evtchn.set_pending(0, hi)
    cb = control(dom)
    assert cb.ready == (1 << 10) | (1 << 2)
    assert (cb.head[10], cb.head[2]) == (lo, hi)
    assert errno_of(dom.evtchn.set_priority, lo, 16) == EINVAL
    assert errno_of(dom.evtchn.set_priority, 5000, 1) == EINVAL  # not a valid port
    free = dom.evtchn.get_free_port()
    assert errno_of(dom.evtchn.set_priority, free, 1) == EACCES


def test_masked_events_wait_for_unmask(dom) -> None:
    fifo_on(dom)
    port = ipi(dom)
    set_word(dom, port, MASKED)
    dom.evtchn.set_pending(0, port)
    assert word(dom, port) == PENDING | MASKED
    assert control(dom).ready == 0
    assert dom.vcpus[0].vcpu_info.evtchn_upcall_pending == 0
    dom.evtchn.unmask(port)
    assert word(dom, port) == PENDING | LINKED
    assert control(dom).head[7] == port
    assert dom.vcpus[0].vcpu_info.evtchn_upcall_pending == 1


def test_pending_2level_events_survive_the_switch(dom) -> None:
    early = ipi(dom)
    dom.evtchn.set_pending(0, early)  # 2-level: a bit in shared_info
    fifo = fifo_on(dom, pages=0)
    assert not dom.evtchn.is_pending(early)  # no event word yet
    dom.vcpus[0].vcpu_info.evtchn_upcall_pending = 0
    fifo.add_page_to_event_array(ARRAY_GFN)
    assert word(dom, early) == PENDING | LINKED
    assert control(dom).head[7] == early
    assert dom.vcpus[0].vcpu_info.evtchn_upcall_pending == 1


def test_a_vcpu_without_control_block_gets_no_links(dom) -> None:
    fifo_on(dom)
    port = ipi(dom, vcpu=1)
    dom.evtchn.set_pending(1, port)
    assert word(dom, port) == PENDING
    assert dom.vcpus[1].vcpu_info.evtchn_upcall_pending == 0


def test_set_link_gives_up_on_a_word_the_guest_unlinked(dom) -> None:
    fifo = fifo_on(dom)
    address = fifo.word(5)
    assert address is not None
    set_word(dom, 5, PENDING)
    assert fifo._set_link(address, 9) is False  # not LINKED: the queue is empty
    assert word(dom, 5) == PENDING
    set_word(dom, 5, PENDING | LINKED | BUSY | 3)
    assert fifo._set_link(address, 9) is True
    assert word(dom, 5) == PENDING | LINKED | 9  # BUSY cleared with the new link


def test_port_limits_follow_the_abi(dom) -> None:
    ev = dom.evtchn
    while True:
        try:
            chn = ev.bind(port := ev.get_free_port())
        except XenError as e:
            assert e.errno == ENOSPC
            break
        chn.state = ECS_IPI
    assert port == 4095  # the 2-level ABI: 4096 ports
    fifo_on(dom, pages=5)
    port = ev.get_free_port()
    assert port == 4096
    # A closed port still linked in a queue is not handed out again.
    p = ipi(dom)
    ev.set_pending(0, p)
    ev.close(p)
    assert word(dom, p) == LINKED  # close cleared PENDING only
    assert ev.get_free_port() != p
    set_word(dom, p, 0)  # the guest unlinked it
    assert ev.get_free_port() == p


def test_expand_array_is_bounded(dom) -> None:
    fifo = fifo_on(dom, pages=0)
    assert errno_of(fifo.add_page_to_event_array, 0xF0000) == EINVAL
    for _ in range(event_fifo.MAX_EVENT_ARRAY_PAGES):
        fifo.add_page_to_event_array(ARRAY_GFN)
    assert errno_of(fifo.add_page_to_event_array, ARRAY_GFN) == ENOSPC


def test_pollers_are_woken_once_per_new_event(dom) -> None:
    fifo_on(dom)
    port = ipi(dom)
    v = dom.vcpus[0]
    v.poll_port = port
    dom.evtchn.set_pending(0, port)
    assert v.poll_port is None and v.kicks >= 1
    assert dom.evtchn.is_pending(port)


def test_pyxens_writes_are_dirty_logged(dom) -> None:
    fifo_on(dom)
    port = ipi(dom)
    dom.memory.host_dirty = set()
    dom.evtchn.set_pending(0, port)
    assert {ARRAY_GFN, CB_GFN[0]} <= dom.memory.take_host_dirty()


def test_reset_returns_to_2level(dom) -> None:
    fifo_on(dom)
    ipi(dom)
    dom.evtchn.reset()
    assert isinstance(dom.evtchn.port_ops, Evtchn2L)
    assert dom.evtchn.max_port == 4095
