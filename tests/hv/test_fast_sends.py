"""FastSends (pyxen.hv.event_channel): the list of IPI ports a vCPU backend may send on
itself (the software CPU's native_send.c), kept right as ports, the ABI and vcpu_info
change, and off while a vCPU polls."""

from __future__ import annotations

import contextlib
import ctypes as C
from types import SimpleNamespace

import pytest

from pyxen.abi import event_channel as E
from pyxen.abi.xen import vcpu_info
from pyxen.domain.memory import GuestMemory
from pyxen.hv import event_fifo
from pyxen.hv.event_channel import (
    ECS_INTERDOMAIN,
    ECS_IPI,
    ECS_UNBOUND,
    ECS_VIRQ,
    EventChannels,
    do_event_channel_op,
)
from pyxen.hv.shared_info import SharedInfo


class Sink:
    """What a machine offers (native.IpiSends' interface), recorded."""

    def __init__(self) -> None:
        self.enabled = False
        self.published: list[tuple[int, list[int], dict[int, int]]] = []
        self.woken = None

    def publish(self, bitmaps: int, vcpu_infos: list[int], targets: dict[int, int]) -> None:
        assert not self.enabled, "the list changed while the backend could use it"
        self.published.append((bitmaps, vcpu_infos, targets))


class FakeVcpu:
    def __init__(self, domain: object, index: int, info: vcpu_info | None) -> None:
        self.domain, self.index, self.vcpu_info = domain, index, info
        self.poll_port: int | None = None
        self.kicks = self.upcalls = 0

    def kick(self) -> None:
        self.kicks += 1

    def raise_upcall(self) -> None:
        self.upcalls += 1


@pytest.fixture
def dom():  # type: ignore[no-untyped-def]
    mem = GuestMemory(16 << 20, 16 << 20, "fast-sends-test")
    sink = Sink()
    d = SimpleNamespace(domid=1, memory=mem, trace=False, sink=sink,
                        machine=SimpleNamespace(exclusive=contextlib.nullcontext,
                                                ipi_sends=lambda: sink))
    d.vcpus = [FakeVcpu(d, 0, vcpu_info()), FakeVcpu(d, 1, vcpu_info()), FakeVcpu(d, 2, None)]
    d.shared_info = SharedInfo(mem, on_move=lambda: None)
    d.evtchn = EventChannels(d, 8191)  # type: ignore[arg-type]
    yield d
    mem.close()


def bind(d, state: int, vcpu: int = 0) -> int:  # type: ignore[no-untyped-def]
    port = d.evtchn.get_free_port()
    chn = d.evtchn.bind(port)
    chn.state, chn.notify_vcpu = state, vcpu
    return port


def listed(d):  # type: ignore[no-untyped-def]
    """d's FastSends with one IPI port listed (for vCPU 1), enabled."""
    bind(d, ECS_IPI, 1)
    d.evtchn.fast.refresh()
    assert d.sink.enabled
    return d.evtchn.fast


def test_the_list_names_ipi_ports_whose_vcpu_has_a_vcpu_info(dom) -> None:  # type: ignore[no-untyped-def]
    ipi0, ipi1 = bind(dom, ECS_IPI, 0), bind(dom, ECS_IPI, 1)
    bind(dom, ECS_IPI, 2)  # vCPU 2 has no vcpu_info: Python's
    for state in (ECS_INTERDOMAIN, ECS_VIRQ, ECS_UNBOUND):
        bind(dom, state, 1)
    dom.evtchn.fast.refresh()
    (bitmaps, infos, targets), = dom.sink.published
    assert targets == {ipi0: 0, ipi1: 1}
    assert bitmaps == C.addressof(dom.shared_info.page)
    assert infos == [C.addressof(dom.vcpus[0].vcpu_info), C.addressof(dom.vcpus[1].vcpu_info), 0]
    assert dom.sink.enabled
    dom.evtchn.fast.refresh()  # nothing changed: not listed again
    assert len(dom.sink.published) == 1


def test_a_change_disables_the_list_until_python_lists_again(dom) -> None:  # type: ignore[no-untyped-def]
    fast = listed(dom)
    with fast.hold():
        assert not dom.sink.enabled
        fast.refresh()  # a send Python makes meanwhile: no list from a state in the making
        assert len(dom.sink.published) == 1 and not dom.sink.enabled
    assert not dom.sink.enabled  # stale: off until the next send in Python lists again
    fast.refresh()
    assert dom.sink.enabled and len(dom.sink.published) == 2


def test_polling_turns_it_off_without_a_new_list(dom) -> None:  # type: ignore[no-untyped-def]
    fast = listed(dom)
    with fast.polling():
        assert not dom.sink.enabled
        with fast.polling():  # two vCPUs polling
            pass
        assert not dom.sink.enabled
    assert dom.sink.enabled and len(dom.sink.published) == 1


def test_the_fifo_abi_lists_nothing(dom) -> None:  # type: ignore[no-untyped-def]
    bind(dom, ECS_IPI, 1)
    with dom.evtchn.fast.hold():
        event_fifo.init_control(dom.evtchn, 0, 0x100, 0)
    dom.evtchn.fast.refresh()
    assert dom.sink.published[-1][2] == {}


def test_operations_that_change_ports_hold_it_and_a_send_lists_again(dom) -> None:  # type: ignore[no-untyped-def]
    """Through do_event_channel_op, as a guest's calls arrive: bind_ipi holds the list,
    EVTCHNOP_send (made in Python) lists it again, close holds it."""
    v = dom.vcpus[0]
    arg = 0x1000
    seen: list[bool] = []
    real_bind = dom.evtchn.bind

    def bind_watching(port: int):  # type: ignore[no-untyped-def]
        seen.append(dom.sink.enabled)
        return real_bind(port)

    dom.evtchn.bind = bind_watching
    v.guest = lambda: SimpleNamespace(
        read_struct=lambda cls, va: cls.from_buffer_copy(dom.memory.read(va, C.sizeof(cls))),
        write_struct=lambda va, value: dom.memory.write(va, bytes(value)))
    dom.memory.write(arg, bytes(E.evtchn_bind_ipi(vcpu=1)))
    do_event_channel_op(v, E.EVTCHNOP_bind_ipi, arg)
    port = E.evtchn_bind_ipi.from_buffer_copy(dom.memory.read(arg, 8)).port
    assert seen == [False] and not dom.sink.enabled
    dom.memory.write(arg, bytes(E.evtchn_send(port=port)))
    assert do_event_channel_op(v, E.EVTCHNOP_send, arg) == 0
    assert dom.sink.enabled and dom.sink.published[-1][2] == {port: 1}
    assert dom.vcpus[1].upcalls == 1  # the send itself was Python's, as before
    dom.memory.write(arg, bytes(E.evtchn_close(port=port)))
    do_event_channel_op(v, E.EVTCHNOP_close, arg)
    assert not dom.sink.enabled


def test_the_backend_call_raises_or_kicks(dom) -> None:  # type: ignore[no-untyped-def]
    dom.sink.woken(1, True)
    dom.sink.woken(0, False)
    assert (dom.vcpus[1].upcalls, dom.vcpus[1].kicks) == (1, 0)
    assert (dom.vcpus[0].upcalls, dom.vcpus[0].kicks) == (0, 1)


def test_no_list_under_trace() -> None:
    sink = Sink()
    d = SimpleNamespace(trace=True, machine=SimpleNamespace(ipi_sends=lambda: sink))
    ev = EventChannels(d, 8191)  # type: ignore[arg-type]
    assert ev.fast.sink is None and sink.woken is None


def test_a_failure_after_a_native_send_ends_the_domain(dom) -> None:  # type: ignore[no-untyped-def]
    errors: list[str] = []
    dom.vmm_error = errors.append

    def broken() -> None:
        raise RuntimeError("bug")

    dom.vcpus[1].raise_upcall = broken
    dom.sink.woken(1, True)  # from C: must not raise
    assert errors and "vCPU1" in errors[0] and "bug" in errors[0]


def test_a_moved_vcpu_info_disables_the_list_until_python_lists_again(dom) -> None:  # type: ignore[no-untyped-def]
    fast = listed(dom)
    fast.invalidate()
    assert not dom.sink.enabled
    fast.refresh()
    assert dom.sink.enabled and len(dom.sink.published) == 2
