"""Dirty logging on the software CPU: the frames the guest writes between two fetches.

The guests are tiny 32-bit programs on the machines of test_soft_cpu. Each port write that
ends a step is followed by a jump, so that the rest of its translation block (which runs
once before the port write becomes an exit) stores nothing.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterator

import pytest

from pyxen.domain.backend import Exit, Regs
from pyxen.soft.machine import soft_usable

from .test_soft_cpu import CODE, STACK, Cpu, expect_out

pytestmark = pytest.mark.skipif(not soft_usable()[0], reason="Unicorn engine not usable")

STACK_GFN = (STACK - 4) >> 12  # where the pushes below the initial stack pointer land
OUT = "e6e9" "eb00"  # out 0xe9, al; jmp $+2


def store(gpa: int) -> str:
    return "a3" + struct.pack("<I", gpa).hex()  # mov [gpa], eax


def load(gpa: int) -> str:
    return "a1" + struct.pack("<I", gpa).hex()  # mov eax, [gpa]


@pytest.fixture
def cpu() -> Iterator[type[Cpu]]:
    made: list[Cpu] = []

    def make(code: str) -> Cpu:
        made.append(Cpu(bytes.fromhex(code)))
        return made[-1]

    yield make  # type: ignore[misc]
    for c in made:
        c.close()


def test_nothing_is_reported_while_logging_is_off(cpu) -> None:
    c = cpu(store(0x5000) + OUT + "f4")
    expect_out(c, 0)
    assert c.machine.fetch_dirty() == set()
    assert c.run() is Exit.HLT


def test_stores_are_reported_once_and_loads_never(cpu) -> None:
    c = cpu(store(0x5000) + OUT + load(0x6000) + OUT + store(0x9000) + OUT
            + "50" + OUT + "f4")  # ... push eax: the CPU's own store to the stack
    m = c.machine
    m.set_dirty_logging(True)
    assert m.fetch_dirty() == set()
    c.vcpu.regs.rax = 0x1234_5678
    c.vcpu.regs_changed()
    expect_out(c, 0x78)
    assert m.fetch_dirty() == {0x5}
    assert m.fetch_dirty() == set(), "a fetch starts a new record"
    expect_out(c, 0)  # the load
    assert m.fetch_dirty() == set()
    expect_out(c, 0)
    assert m.fetch_dirty() == {0x9}
    expect_out(c, 0)
    assert m.fetch_dirty() == {STACK_GFN}
    assert c.run() is Exit.HLT
    assert c.mem.read(0x5000, 4) == struct.pack("<I", 0x1234_5678), "the store went through"


def test_frames_pushed_by_interrupt_and_exception_delivery_are_reported(cpu) -> None:
    c = cpu("fb" "f4" "0f0b")  # sti; hlt; ud2
    m = c.machine
    m.set_dirty_logging(True)
    assert c.run() is Exit.HLT
    assert m.fetch_dirty() == set()
    assert c.vcpu.inject_interrupt(0x20)  # pushes eflags, cs, eip below STACK
    assert m.fetch_dirty() == {STACK_GFN}
    expect_out(c, 0x20)
    assert m.fetch_dirty() == set()

    c = cpu("0f0b")  # ud2: #UD, delivered through the IDT
    c.machine.set_dirty_logging(True)
    expect_out(c, 6)
    assert c.machine.fetch_dirty() == {STACK_GFN}


def test_a_store_across_a_page_reports_both_frames_even_when_apart(cpu) -> None:
    """Virtual 0x6000 maps to frame 0xc: the store's tail lands in 0xc, not in 0x6."""
    c = cpu(store(0x5FFE) + OUT + "f4")
    pd, pt = 0x10000, 0x11000
    c.mem.write(pd, struct.pack("<I", pt | 3))
    c.mem.write(pt, b"".join(struct.pack("<I", ((0xC if i == 6 else i) << 12) | 3)
                             for i in range(1024)))
    s = c.vcpu.sregs()
    s.cr3, s.cr0 = pd, s.cr0 | 1 << 31
    c.vcpu.set_sregs(s)
    c.machine.set_dirty_logging(True)
    c.vcpu.regs.rax = 0xAABB_CCDD
    c.vcpu.regs_changed()
    expect_out(c, 0xDD)
    assert c.machine.fetch_dirty() == {0x5, 0xC}
    assert c.mem.read(0x5FFE, 2) + c.mem.read(0xC000, 2) == bytes.fromhex("ddccbbaa")


def test_switching_logging_off_empties_the_record_and_the_guest_runs_on(cpu) -> None:
    c = cpu(store(0x5000) + OUT + store(0x6000) + OUT + store(0x7000) + OUT + "f4")
    m = c.machine
    m.set_dirty_logging(True)
    expect_out(c, 0)
    m.set_dirty_logging(False)
    assert m.fetch_dirty() == set()
    c.vcpu.regs.rax = 0x55
    c.vcpu.regs_changed()
    expect_out(c, 0x55)
    assert m.fetch_dirty() == set()
    assert c.mem.read(0x6000, 4) == struct.pack("<I", 0x55), "RAM is writable again"
    m.set_dirty_logging(True)  # on again: an empty record, then the new writes
    assert m.fetch_dirty() == set()
    expect_out(c, 0x55)
    assert m.fetch_dirty() == {0x7}
    assert c.run() is Exit.HLT


def test_two_vcpus_running_in_their_threads_are_both_reported(cpu) -> None:
    """Each vCPU stores to its own page and exits, in a loop; fetches happen meanwhile."""
    loop = store(0x5000) + "e6e9" "ebf7"  # 1: mov [0x5000], eax; out 0xe9, al; jmp 1b
    c = cpu(loop)
    m = c.machine
    second = CODE + 0x100
    c.mem.write(second, bytes.fromhex(store(0xA000) + "e6e9" "ebf7"))
    v1 = m.create_vcpu(1, c.vcpu.hypercall_port)
    v1.set_cpuid([])
    v1.set_sregs(c.vcpu.sregs())
    v1.set_initial_regs(Regs(rip=second, rsp=STACK - 0x100, rflags=2))
    vcpus = [c.vcpu, v1]
    exits = [0, 0]
    unexpected: list[Exit] = []
    stop = threading.Event()
    progress = threading.Condition()

    def drive(i: int) -> None:
        while not stop.is_set():
            exit_ = vcpus[i].run()
            if exit_ is Exit.IO_OUT:
                with progress:
                    exits[i] += 1
                    progress.notify_all()
            elif exit_ is not Exit.KICKED:  # KICKED: a fetch made it leave guest code
                unexpected.append(exit_)
                return

    m.set_dirty_logging(True)
    threads = [threading.Thread(target=drive, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    try:
        for _ in range(3):
            with progress:
                seen = list(exits)
                # Two more exits each: the second one's store came after the last fetch.
                assert progress.wait_for(lambda s=seen: all(e >= n + 2 for e, n
                                                            in zip(exits, s, strict=True)), 30)
            assert m.fetch_dirty() == {0x5, 0xA}
    finally:
        stop.set()
        for t in threads:
            while t.is_alive():
                for v in vcpus:
                    v.kick()
                t.join(0.05)
    assert not unexpected
    m.set_dirty_logging(False)
    assert m.fetch_dirty() == set()
