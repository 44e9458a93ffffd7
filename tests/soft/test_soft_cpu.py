"""The software CPU against the vCPU-backend contract, with tiny 32-bit programs.

The kit guests cover hypercalls, exceptions, ring 3, compat mode and HLT on both backends;
these cover what no kit guest does yet: MMIO, port input, interrupt injection and the
interrupt window, exception error codes, triple faults, kicks and MSR exits.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Iterator

import pytest

from pyxen.domain.backend import Exit, Regs, SpecialRegs
from pyxen.domain.builder import _flat_segments
from pyxen.domain.memory import GuestMemory
from pyxen.soft.machine import SoftMachine, soft_usable

CODE, IDT, GDT, STACK = 0x1000, 0x2000, 0x3000, 0x8000
HANDLER = 0x4000  # handler for vector v at HANDLER + 16 * v: mov al, v; out 0xe9, al; hlt
MSR = 0x4000_0000
PORT = 0xE8

pytestmark = pytest.mark.skipif(not soft_usable()[0], reason="Unicorn engine not usable")


class Cpu:
    """One SoftVcpu in 32-bit flat protected mode, running `code` at CODE."""

    def __init__(self, code: bytes, idt_limit: int = 256 * 8 - 1) -> None:
        self.mem = GuestMemory(16 << 20, 16 << 20)
        self.machine = SoftMachine([MSR])
        self.machine.map_memory(0, 0, 16 << 20, self.mem.host_address)
        self.vcpu = self.machine.create_vcpu(0, PORT)
        self.vcpu.set_cpuid([(0x4000_0000, 0, 0x4000_0005, 0x566E6558, 0x65584D4D, 0x4D4D566E)])
        self.mem.write(CODE, code)
        self.mem.write(GDT, struct.pack("<3Q", 0, 0x00CF9A000000FFFF, 0x00CF92000000FFFF))
        for v in range(256):
            handler = HANDLER + 16 * v
            self.mem.write(handler, bytes([0xB0, v, 0xE6, 0xE9, 0xF4]))
            gate = (handler & 0xFFFF) | 0x08 << 16 | 0x8E << 40 | (handler >> 16) << 48
            self.mem.write(IDT + 8 * v, struct.pack("<Q", gate))
        s = _flat_segments(SpecialRegs())
        s.gdt.base, s.gdt.limit = GDT, 0x17
        s.idt.base, s.idt.limit = IDT, idt_limit
        self.vcpu.set_sregs(s)
        regs = Regs(rip=CODE, rsp=STACK, rflags=0x2)
        self.vcpu.set_initial_regs(regs)

    def run(self) -> Exit:
        return self.vcpu.run()

    def close(self) -> None:
        self.machine.close()
        self.mem.close()


@pytest.fixture
def cpu() -> Iterator[type[Cpu]]:
    made: list[Cpu] = []

    def make(code: bytes, **kw: int) -> Cpu:
        made.append(Cpu(code, **kw))
        return made[-1]

    yield make  # type: ignore[misc]
    for c in made:
        c.close()


def expect_out(c: Cpu, value: int) -> None:
    assert c.run() is Exit.IO_OUT
    assert (c.vcpu.exit_port, c.vcpu.exit_value) == (0xE9, value)


def test_mmio_read_gets_the_vmm_answer_and_writes_are_reported(cpu) -> None:
    c = cpu(bytes.fromhex("a1000000f0" "e6e9" "c70500100 0f044332211".replace(" ", "") + "f4"))
    assert c.run() is Exit.MMIO
    v = c.vcpu
    assert (v.exit_value, v.exit_size, v.exit_is_write) == (0xF000_0000, 4, False)
    v.complete_mmio(0x1234_5678)
    expect_out(c, 0x78)
    assert c.run() is Exit.MMIO
    assert (v.exit_value, v.exit_size, v.exit_is_write) == (0xF000_1000, 4, True)
    v.complete_mmio(0)
    assert c.run() is Exit.HLT


def test_port_input_reads_no_device_inside_the_engine(cpu) -> None:
    """IN is answered in its hook (all ones: no device), without an exit; the register
    instructions after it see the value, and the OUT after them reports exact state."""
    c = cpu(bytes.fromhex("b812345678" "e460" "89c3" "e6e9" "f4"))  # mov; in al; mov ebx,eax
    expect_out(c, 0xFF)
    assert (c.vcpu.regs.rax, c.vcpu.regs.rbx) == (0x785634FF, 0x785634FF)
    assert c.run() is Exit.HLT


def test_out_reports_the_state_at_the_instruction(cpu) -> None:
    """The engine runs register-only instructions past a stop request; the exit must not
    show their effects (they run again, once, after the VMM answers)."""
    c = cpu(bytes.fromhex("b811000000" "e7e8" "40" "40" "e6e9" "f4"))  # out; inc eax x2; out
    assert c.run() is Exit.HYPERCALL
    assert (c.vcpu.regs.rax, c.vcpu.regs.rip) == (0x11, CODE + 7)
    c.vcpu.regs.rax = 0x30
    c.vcpu.regs_changed()
    expect_out(c, 0x32)


def test_hypercall_port_write_exposes_registers_and_takes_rax(cpu) -> None:
    c = cpu(bytes.fromhex("b811000000" "bf07000000" "e7e8" "e6e9" "f4"))
    assert c.run() is Exit.HYPERCALL
    assert (c.vcpu.regs.rax, c.vcpu.regs.rdi) == (0x11, 7)
    assert not c.vcpu.is_64bit() and c.vcpu.cpl() == 0
    c.vcpu.regs.rax = 0x99
    c.vcpu.regs_changed()
    expect_out(c, 0x99)


def test_injected_interrupt_goes_through_the_idt(cpu) -> None:
    c = cpu(bytes.fromhex("fb" "f4" "f4"))  # sti; hlt
    assert c.run() is Exit.HLT
    after_hlt = c.vcpu.regs.rip
    assert c.vcpu.inject_interrupt(0x20)
    assert not c.vcpu.regs.rflags & (1 << 9), "an interrupt gate clears IF"
    expect_out(c, 0x20)
    eip, cs, eflags = struct.unpack("<3I", c.mem.read(STACK - 12, 12))
    assert (eip, cs) == (after_hlt, 0x08) and eflags & (1 << 9)


def test_interrupts_wait_for_if_and_the_window_opens_after_sti(cpu) -> None:
    c = cpu(bytes.fromhex("fa" "f4" "fb" "90" "f4"))  # cli; hlt; sti; nop; hlt
    assert c.run() is Exit.HLT
    assert not c.vcpu.inject_interrupt(0x21)
    c.vcpu.request_interrupt_window(True)
    for _ in range(3):  # KICKED once IF is 1 (and again after the sti shadow, if needed)
        assert c.run() is Exit.KICKED
        if c.vcpu.inject_interrupt(0x21):
            break
    else:
        pytest.fail("the interrupt was never accepted")
    c.vcpu.request_interrupt_window(False)
    expect_out(c, 0x21)


def test_exceptions_reach_the_guest_with_their_error_code(cpu) -> None:
    handler13 = bytes.fromhex("58" "e6e9" "f4")  # pop the error code; out al
    c = cpu(bytes.fromhex("0f0b"))  # ud2
    expect_out(c, 6)
    c = cpu(bytes.fromhex("66b83812" "8ed8"))  # mov ax, 0x1238; mov ds, ax: #GP(0x1238)
    c.mem.write(HANDLER + 16 * 13, handler13)
    expect_out(c, 0x38)


def test_a_fault_without_a_handler_is_a_triple_fault(cpu) -> None:
    c = cpu(bytes.fromhex("0f0b"), idt_limit=0)
    assert c.run() is Exit.SHUTDOWN


def test_kick_from_another_thread_stops_a_spinning_guest(cpu) -> None:
    c = cpu(bytes.fromhex("ebfe"))  # jmp .
    kicker = threading.Timer(0.1, c.vcpu.kick)
    kicker.start()
    assert c.run() is Exit.KICKED
    kicker.join()


def test_xen_msr_reaches_the_vmm_other_msrs_stay_in_the_cpu(cpu) -> None:
    code = bytes.fromhex("b800000040" "0fa2"  # cpuid(0x40000000): the guest finds Xen
                         "b900000040" "b800200000" "31d2" "0f30"  # wrmsr(0x40000000, 0x2000)
                         "b9000100c0" "b878563412" "0f30"  # wrmsr(FS_BASE): the CPU's own
                         "b900000040" "0f32" "f4")  # rdmsr(0x40000000)
    c = cpu(code)
    assert c.run() is Exit.MSR_WRITE
    assert (c.vcpu.exit_msr, c.vcpu.exit_value) == (MSR, 0x2000)
    assert c.vcpu.regs.rbx == 0x566E6558, "CPUID answers from the table pyxen set"
    c.vcpu.complete_msr(True)
    assert c.run() is Exit.MSR_READ
    c.vcpu.complete_msr(False)  # #GP at the rdmsr
    expect_out(c, 13)


def test_string_port_io_is_an_error_naming_the_guest_rip(cpu) -> None:
    c = cpu(bytes.fromhex("bae9000000" "6e"))  # mov edx, 0xe9; outsb
    assert c.run() is Exit.ERROR
    assert "string port I/O" in c.vcpu.exit_error
    assert f"rip={CODE + 5:#x}" in c.vcpu.exit_error


def test_xen_msr_written_without_asking_cpuid_still_reaches_the_vmm(cpu) -> None:
    c = cpu(bytes.fromhex("b900000040" "b800300000" "31d2" "0f30" "f4"))
    assert c.run() is Exit.MSR_WRITE
    assert (c.vcpu.exit_msr, c.vcpu.exit_value) == (MSR, 0x3000)
    c.vcpu.complete_msr(True)
    assert c.run() is Exit.HLT


def test_cr4_bits_cpuid_does_not_offer_raise_gp_and_others_are_written(cpu) -> None:
    """mov to CR4 is checked against the CPUID policy (x86.cr4): VMXE (no VMX in this CPUID)
    faults with #GP(0) at the instruction and leaves CR4 alone; PGE is written."""
    # mov $0x2080,%eax; mov %eax,%cr4 (VMXE|PGE: #GP); out 0xe9 from the #GP handler
    c = cpu(bytes.fromhex("b880200000" "0f22e0" "f4"))
    expect_out(c, 13)
    assert c.vcpu.sregs().cr4 & (1 << 13) == 0
    error, eip = struct.unpack("<2I", c.mem.read(STACK - 16, 8))
    assert (error, eip) == (0, CODE + 5)  # #GP(0) at the mov
    c2 = cpu(bytes.fromhex("b880000000" "0f22e0" "e6e9" "f4"))  # PGE only: allowed
    expect_out(c2, 0x80)
    assert c2.vcpu.sregs().cr4 & 0x80
    assert c2.vcpu.regs.rip == CODE + 10


def test_a_hypercall_the_domain_runs_inline_never_leaves_the_engine(cpu) -> None:
    """inline_hypercall runs inside the OUT hook: the result lands in rax and the guest goes
    on (its next OUT is the first exit); declining (None) makes it a normal exit."""
    code = bytes.fromhex("b811000000" "e7e8" "e6e9" "f4")  # mov $0x11,%eax; hypercall; out al
    c = cpu(code)
    seen: list[int] = []

    def inline() -> bool:
        seen.append(c.vcpu.regs.rax)
        c.vcpu.regs.rax = 0x42
        c.vcpu.regs_changed()
        return True

    c.vcpu.inline_hypercall = inline
    expect_out(c, 0x42)
    assert seen == [0x11]
    declined = cpu(code)
    declined.vcpu.inline_hypercall = lambda: None
    assert declined.run() is Exit.HYPERCALL
    assert declined.vcpu.regs.rip == CODE + 7  # after the OUT, as after any exit


def test_an_inline_hypercall_with_work_left_stops_the_engine_after_it(cpu) -> None:
    """False: the hypercall is done (rax set) but an event is due: run() returns KICKED,
    so the vCPU loop can deliver it. (The engine stops at its next memory access or block
    end: here the load right after the call.)"""
    c = cpu(bytes.fromhex("b811000000" "e7e8" "8b1c24" "e6e9" "f4"))  # ...; mov (%esp),%ebx

    def inline() -> bool:
        c.vcpu.regs.rax = 0x43
        c.vcpu.regs_changed()
        return False

    c.vcpu.inline_hypercall = inline
    assert c.run() is Exit.KICKED
    assert (c.vcpu.regs.rax, c.vcpu.regs.rip) == (0x43, CODE + 7)
    expect_out(c, 0x43)


def test_a_kick_seen_after_a_halt_does_not_stop_the_next_run(cpu) -> None:
    """The kick that woke a halted vCPU is spent once its loop has looked at everything
    (kicks_seen): the next run enters the engine and delivers, instead of reporting KICKED
    first."""
    c = cpu(bytes.fromhex("fb" "f4" "f4"))  # sti; hlt
    assert c.run() is Exit.HLT
    c.vcpu.kick()
    assert c.run() is Exit.KICKED  # a kick not declared seen stops the next run
    c.vcpu.kick()
    c.vcpu.kicks_seen()
    assert c.vcpu.inject_interrupt(0x22)
    expect_out(c, 0x22)


def _second_vcpu(c: Cpu) -> object:
    """Another vCPU of c's machine, halting at once (code at CODE + 0x800: hlt)."""
    c.mem.write(CODE + 0x800, b"\xf4")
    other = c.machine.create_vcpu(1, PORT)
    other.set_cpuid([])
    s = _flat_segments(SpecialRegs())
    s.gdt.base, s.gdt.limit = GDT, 0x17
    s.idt.base, s.idt.limit = IDT, 256 * 8 - 1
    other.set_sregs(s)
    other.set_initial_regs(Regs(rip=CODE + 0x800, rsp=STACK - 0x400, rflags=0x2))
    return other


def test_a_vcpu_that_woke_another_lets_it_enter_its_engine_first(cpu, monkeypatch) -> None:
    """woke(): once the waker's engine stops, it waits for the woken vCPU to be in its own
    before its thread does anything else (here without a time limit that matters)."""
    from pyxen.soft import vcpu as soft_vcpu

    monkeypatch.setattr(soft_vcpu, "YIELD_S", 30.0)
    c = cpu(bytes.fromhex("f4"))  # hlt
    woken = _second_vcpu(c)
    entered: list[float] = []
    real_enter = woken._enter_guest

    def enter() -> None:
        entered.append(time.monotonic())
        real_enter()

    woken._enter_guest = enter  # type: ignore[method-assign]
    c.vcpu.woke(woken)
    thread = threading.Thread(target=lambda: (time.sleep(0.2), woken.run()))
    thread.start()
    assert c.run() is Exit.HLT
    returned = time.monotonic()
    thread.join()
    assert entered and entered[0] <= returned


def test_a_yield_to_a_vcpu_that_never_runs_is_bounded(cpu, monkeypatch) -> None:
    from pyxen.soft import vcpu as soft_vcpu

    monkeypatch.setattr(soft_vcpu, "YIELD_S", 0.2)
    c = cpu(bytes.fromhex("fb" "f4" "f4"))  # sti; hlt
    c.vcpu.woke(_second_vcpu(c))
    start = time.monotonic()
    assert c.run() is Exit.HLT
    assert 0.2 <= time.monotonic() - start < 20  # waited for it, then gave up
    start = time.monotonic()
    assert c.vcpu.inject_interrupt(0x23)
    expect_out(c, 0x23)  # a yield is once per wake-up: no wait this time
    assert time.monotonic() - start < 0.2
