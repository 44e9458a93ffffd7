"""Guest memory layout changes reach running vCPUs whole (issue 10, item 7).

A frame released from the middle of a run of RAM is one `GuestMemory.commit()` but several
backend calls (unmap the run's slot, map its two halves). The rule checked here: no vCPU ever
sees the state between those calls -- a range that stays RAM is never unmapped for it -- and a
change has reached every running vCPU when the hypercall that made it returns."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from pyxen.domain.domain import Domain, DomainConfig
from pyxen.domain.memory import (
    GuestMemory,
    LayoutChange,
    current_layout_change,
    layout_change,
)
from pyxen.hv import hypercall_table
from pyxen.kvm.gate import RunGate
from pyxen.soft.memory import PhysicalRam

VICTIM = 0x400  # a frame in the middle of the first run of RAM
KEPT = (0, VICTIM - 1, VICTIM + 1, 0x7FF)  # frames that stay RAM throughout (8 MiB domain)


# --- the change bracket -----------------------------------------------------------------------
def test_layout_change_nests_and_ends_once() -> None:
    done: list[str] = []
    assert current_layout_change() is None
    with layout_change() as outer:
        with layout_change() as inner:
            assert inner is outer is current_layout_change()
            assert outer.at_end("a", lambda: done.append("a"))
            assert not outer.at_end("a", lambda: done.append("again"))
        assert done == []  # the inner bracket does not end the change
    assert done == ["a"]
    assert current_layout_change() is None


def test_every_end_runs_even_if_one_fails() -> None:
    """A backend that paused its vCPUs must resume them whatever another backend did."""
    change, done = LayoutChange(), []

    def fail() -> None:
        raise RuntimeError("backend A")

    change.at_end("a", fail)
    change.at_end("b", lambda: done.append("b"))
    with pytest.raises(RuntimeError, match="backend A"):
        change.finish()
    assert done == ["b"]


def test_commit_is_one_change() -> None:
    mem = GuestMemory(8 << 20, 8 << 20)
    seen: list[LayoutChange | None] = []
    mem.on_layout_change = lambda runs: seen.append(current_layout_change())
    try:
        mem.release(VICTIM)
        mem.commit()
    finally:
        mem.close()
    assert len(seen) == 1 and seen[0] is not None
    assert current_layout_change() is None


# --- the soft backend's published layout ---------------------------------------------------------
def test_pending_slots_are_not_visible_until_published() -> None:
    ram = PhysicalRam()
    ram.add(0, 0, 0x10000, 0x7000_0000)
    assert ram.views() == frozenset() and ram.generation == 0
    layout = ram.publish()
    ram.remove(0)
    ram.add(1, 0, 0x4000, 0x7000_0000)
    assert ram.layout is layout and ram.views() == {(0, 0x10000, 0x7000_0000, False)}
    ram.publish()
    assert ram.generation == layout.generation + 1
    assert ram.views() == {(0, 0x4000, 0x7000_0000, False)}


def test_readonly_frames_outlive_the_layout_until_settled() -> None:
    """An engine still mapping the old layout keeps its read-only page refused."""
    ram = PhysicalRam()
    refused = ram.readonly_frames  # the set every engine's write hook holds
    ram.add(3, 0x9000, 0x1000, 0x7000_9000, readonly=True)
    ram.publish()
    ram.settle()
    assert refused == {9}
    ram.remove(3)
    ram.publish()
    assert refused == {9}
    ram.settle()
    assert refused == set() and ram.readonly_frames is refused


def small_domain(machine: object) -> Iterator[Domain]:
    """An 8 MiB domain on `machine`, closed afterwards."""
    d = Domain(DomainConfig(name="layout", memory_mib=8), machine, hypercall_table(),
               lambda data: None)
    yield d
    d.machine.close()
    d.memory.close()


@pytest.fixture
def soft_domain() -> Iterator[Domain]:
    from pyxen.soft.machine import SoftMachine, soft_usable

    ok, why = soft_usable()
    if not ok:
        pytest.skip(f"the soft backend is not usable here: {why}")
    yield from small_domain(SoftMachine([]))


def covered(views: frozenset[tuple[int, int, int, bool]], gfn: int) -> bool:
    return any(g <= gfn << 12 < g + s for g, s, _, _ in views)


def test_soft_engines_never_see_kept_ram_unmapped(soft_domain: Domain) -> None:
    """Split and merge the run of RAM hundreds of times while another thread reads the
    layout as an engine does: every layout it sees maps every kept frame, and a layout's
    generation names one content."""
    ram = soft_domain.machine.ram  # type: ignore[attr-defined]
    stop = threading.Event()
    bad: list[str] = []
    by_generation: dict[int, frozenset[tuple[int, int, int, bool]]] = {}

    def engine() -> None:
        last = -1
        while not stop.is_set():
            with ram.lock:
                layout = ram.layout
            if layout.generation < last:
                bad.append(f"generation went back {last} -> {layout.generation}")
            last = layout.generation
            if by_generation.setdefault(layout.generation, layout.views) != layout.views:
                bad.append(f"generation {layout.generation} has two contents")
            bad.extend(f"gen {layout.generation}: frame {f:#x} unmapped" for f in KEPT
                       if not covered(layout.views, f))

    reader = threading.Thread(target=engine)
    reader.start()
    try:
        for _ in range(300):
            with soft_domain.memory_lock:
                soft_domain.memory.release(VICTIM)
                soft_domain.memory.commit()
            assert not covered(ram.views(), VICTIM)  # published when commit() returns
            with soft_domain.memory_lock:
                soft_domain.memory.populate(VICTIM)
                soft_domain.memory.commit()
            assert covered(ram.views(), VICTIM)
    finally:
        stop.set()
        reader.join()
    assert not bad, bad[:5]


class FakeEngine:
    """A soft vCPU running guest code until kicked, as SoftVcpu reports it (in_guest,
    guest_epoch under the dirty log's lock); it then re-syncs the way _sync_ram does."""

    def __init__(self, machine: object) -> None:
        self.machine = machine
        self.thread_id: int | None = None
        self.in_guest = False
        self.guest_epoch = 0
        self.kicked = threading.Event()
        self.left_at_generation: int | None = None
        self.synced: list[tuple[int, frozenset[int]]] = []
        self.thread = threading.Thread(target=self._run)
        self.entered = threading.Event()

    def kick(self) -> None:
        self.kicked.set()

    def _run(self) -> None:
        self.thread_id = threading.get_ident()
        log, ram = self.machine.log, self.machine.ram  # type: ignore[attr-defined]
        with log.cond:
            self.in_guest = True
        self.entered.set()
        self.kicked.wait(10)
        time.sleep(0.05)  # an engine takes a while to stop: the publisher must wait
        self.left_at_generation = ram.generation
        with log.cond:
            self.in_guest = False
            self.guest_epoch += 1
            log.cond.notify_all()
        with ram.lock:  # _sync_ram
            self.synced.append((ram.layout.generation, frozenset(ram.readonly_frames)))


def test_soft_change_waits_for_running_engines(soft_domain: Domain) -> None:
    machine = soft_domain.machine
    engine = FakeEngine(machine)
    machine.vcpus.append(engine)  # type: ignore[attr-defined]
    engine.thread.start()
    assert engine.entered.wait(10)
    before = machine.ram.generation  # type: ignore[attr-defined]
    with soft_domain.memory_lock:
        soft_domain.memory.release(VICTIM)
        soft_domain.memory.commit()
    assert engine.kicked.is_set()
    assert engine.left_at_generation == before + 1  # out of guest code before commit returned
    engine.thread.join(10)
    machine.vcpus.remove(engine)  # type: ignore[attr-defined]
    assert engine.synced and engine.synced[0][0] == before + 1


# --- the KVM backend's gate --------------------------------------------------------------------
def test_gate_keeps_vcpus_out_while_closed() -> None:
    gate = RunGate()
    inside = threading.Event()
    kicks: list[float] = []
    leave = threading.Event()

    def vcpu() -> None:
        gate.enter()
        inside.set()
        leave.wait(10)
        gate.leave()

    t = threading.Thread(target=vcpu)
    t.start()
    assert inside.wait(10)

    def kick() -> None:
        kicks.append(time.monotonic())
        leave.set()

    gate.close(kick)  # returns only once the vCPU left
    assert kicks and gate._inside == 0
    t.join(10)
    assert_waits_until_opened(gate)


def assert_waits_until_opened(gate: RunGate) -> None:
    """A vCPU arriving at the closed gate enters only once it is opened."""
    entered = threading.Event()

    def vcpu() -> None:
        gate.enter()
        entered.set()
        gate.leave()

    t = threading.Thread(target=vcpu)
    t.start()
    assert not entered.wait(0.1)  # waits at the closed gate
    gate.open()
    assert entered.wait(10)
    t.join(10)


def test_gate_nests() -> None:
    gate = RunGate()
    gate.close(lambda: None)
    gate.close(lambda: None)
    gate.open()
    assert_waits_until_opened(gate)  # one change still in progress


@pytest.fixture
def kvm_domain() -> Iterator[Domain]:
    from pyxen.kvm.vm import KvmMachine, kvm_usable

    ok, why = kvm_usable()
    if not ok:
        pytest.skip(f"KVM is not usable here: {why}")
    yield from small_domain(KvmMachine([]))


def test_kvm_slots_are_rebuilt_with_no_vcpu_inside(kvm_domain: Domain) -> None:
    """While a split run's slots are deleted and re-created, no vCPU is in KVM_RUN: one
    that was is kicked out first, and it gets back in only once the change is whole."""
    machine = kvm_domain.machine
    gate: RunGate = machine.gate  # type: ignore[attr-defined]
    states: list[tuple[int, int]] = []
    set_region = machine._set_region  # type: ignore[attr-defined]

    def recording(slot: int) -> None:
        states.append((gate._closed, gate._inside))
        set_region(slot)

    machine._set_region = recording  # type: ignore[attr-defined]
    kicked, back_in = threading.Event(), threading.Event()

    class Inside:
        thread_id = None

        def kick(self) -> None:
            kicked.set()

    def vcpu() -> None:
        gate.enter()
        kicked.wait(10)
        gate.leave()
        gate.enter()  # the domain's loop calls run() again at once
        back_in.set()
        gate.leave()

    machine.vcpus.append(Inside())  # type: ignore[attr-defined]
    t = threading.Thread(target=vcpu)
    t.start()
    while not gate._inside:
        time.sleep(0.001)
    with kvm_domain.memory_lock:
        kvm_domain.memory.release(VICTIM)
        kvm_domain.memory.commit()
    t.join(10)
    machine.vcpus.clear()  # type: ignore[attr-defined]
    assert kicked.is_set() and back_in.is_set()
    assert len(states) == 2 and all(s == (1, 0) for s in states), states
    assert gate._closed == 0
