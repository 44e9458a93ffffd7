"""The exit loop's wake-up rules (pyxen.domain.vcpu), on stand-in domains and backends.

- A vCPU thread that kicks a sibling sleeping in a halt tells its own backend (`woke`), so
  the software CPU can let the woken vCPU go first.
- An interrupt window for the callback vector names evtchn_upcall_pending, the level it
  follows, so a backend may skip the window once the guest has cleared it.
"""

from __future__ import annotations

import ctypes as C
import threading
from types import SimpleNamespace

from pyxen.abi.xen import vcpu_info
from pyxen.domain import vcpu as core
from pyxen.domain.vcpu import Vcpu
from pyxen.threads import Wake


class Backend:
    def __init__(self) -> None:
        self.kicks = 0
        self.woken: list[object] = []
        self.windows: list[tuple[bool, int | None]] = []

    def kick(self) -> None:
        self.kicks += 1

    def woke(self, other: object) -> None:
        self.woken.append(other)

    def inject_interrupt(self, vector: int) -> bool:
        return False  # interrupts off: a window is wanted

    def request_interrupt_window(self, wanted: bool, level: int | None = None) -> None:
        self.windows.append((wanted, level))


def _vcpu(domain: object, index: int) -> SimpleNamespace:
    return SimpleNamespace(domain=domain, index=index, sleeping=False, wake=Wake(),
                           backend=Backend())


def _on_vcpu_thread(vcpu: object, work) -> None:  # type: ignore[no-untyped-def]
    """Run `work` on a thread whose exit loop is `vcpu`'s, as Vcpu.run_loop marks it."""
    def body() -> None:
        core._THIS_THREAD.vcpu = vcpu
        work()

    t = threading.Thread(target=body)
    t.start()
    t.join()


def test_a_vcpu_that_kicks_a_sleeping_sibling_tells_its_backend() -> None:
    domain = SimpleNamespace()
    waker, sleeper = _vcpu(domain, 0), _vcpu(domain, 1)
    sleeper.sleeping = True
    _on_vcpu_thread(waker, lambda: Vcpu.kick(sleeper))  # type: ignore[arg-type]
    assert waker.backend.woken == [sleeper.backend]
    assert sleeper.wake.is_set() and sleeper.backend.kicks == 1


def test_no_hand_off_for_a_running_vcpu_another_domain_or_a_non_vcpu_thread() -> None:
    domain = SimpleNamespace()
    waker, running = _vcpu(domain, 0), _vcpu(domain, 1)
    _on_vcpu_thread(waker, lambda: Vcpu.kick(running))  # type: ignore[arg-type]
    stranger = _vcpu(SimpleNamespace(), 0)
    sleeper = _vcpu(domain, 1)
    sleeper.sleeping = True
    _on_vcpu_thread(stranger, lambda: Vcpu.kick(sleeper))  # type: ignore[arg-type]
    Vcpu.kick(sleeper)  # type: ignore[arg-type]  # the timer thread, a backend's thread...
    assert waker.backend.woken == [] and stranger.backend.woken == []
    assert running.backend.kicks == 1 and sleeper.backend.kicks == 2


def _interrupting(upcall_pending: int, irr: int) -> tuple[SimpleNamespace, vcpu_info]:
    info = vcpu_info()
    info.evtchn_upcall_pending = upcall_pending
    v = SimpleNamespace(domain=SimpleNamespace(callback_vector=0xF3), upcall_vector=0,
                        vcpu_info=info, _window_requested=False, backend=Backend(),
                        lapic=SimpleNamespace(irr=irr, pending_vector=lambda: 0x40))
    v.next_interrupt = lambda: Vcpu.next_interrupt(v)  # type: ignore[arg-type]
    v._window_level = lambda from_lapic: Vcpu._window_level(v, from_lapic)  # type: ignore[arg-type]
    return v, info


def test_a_window_for_the_callback_vector_follows_evtchn_upcall_pending() -> None:
    v, info = _interrupting(upcall_pending=1, irr=0)
    Vcpu.deliver_interrupts(v)  # type: ignore[arg-type]
    level = C.addressof(info) + vcpu_info.evtchn_upcall_pending.offset
    assert v.backend.windows == [(True, level)]


def test_a_window_with_the_lapic_waiting_too_is_not_tied_to_the_level() -> None:
    v, _ = _interrupting(upcall_pending=1, irr=1 << 0x40)
    Vcpu.deliver_interrupts(v)  # type: ignore[arg-type]
    assert v.backend.windows == [(True, None)]


def test_a_moved_vcpu_info_kicks_and_relists_native_sends() -> None:
    """A backend's list of IPI ports holds vcpu_info addresses: a move must stop a running
    engine and make the list stale (FastSends.invalidate)."""
    held: list[str] = []

    class Fast:
        def invalidate(self) -> None:
            held.append("hold")

    v = SimpleNamespace(_vcpu_info=object(), backend=Backend(),
                        domain=SimpleNamespace(evtchn=SimpleNamespace(fast=Fast())))
    Vcpu.vcpu_info_moved(v)  # type: ignore[arg-type]
    assert v._vcpu_info is None and v.backend.kicks == 1 and held == ["hold"]
