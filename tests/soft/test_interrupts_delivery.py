"""Event delivery through the guest IDT (pyxen.soft.interrupts) by the book, on a real
Unicorn engine: faults raised while delivering are delivered as themselves (error code, CR2,
the SDM's double-fault table), #TS for a short TSS, software interrupts' faults at the
instruction, and a 32-bit task gate. After a delivery the engine runs the handler from the
state deliver() left, so a malformed hidden segment state would show up as well.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest
from unicorn import UC_ARCH_X86, UC_MODE_64, Uc
from unicorn import x86_const as X

from pyxen.domain.backend import Regs
from pyxen.domain.memory import GuestMemory
from pyxen.hv.guest_access import GuestAccess
from pyxen.hv.pagewalk import PagingState
from pyxen.soft.cpustate import (
    SEG_CS,
    SEG_DS,
    SEG_ES,
    SEG_GDT,
    SEG_IDT,
    SEG_SS,
    SEG_TR,
    Context,
    Descriptor,
    probe_layout,
)
from pyxen.soft.interrupts import (
    BP,
    DF,
    GP,
    NP,
    PF,
    SS,
    TS,
    UD,
    Event,
    TripleFault,
    Unsupported,
    deliver,
)
from pyxen.soft.machine import soft_usable

pytestmark = pytest.mark.skipif(not soft_usable()[0], reason="Unicorn engine not usable")

RAM = 4 << 20
PML4, PDPT, PD, PT = 0x10000, 0x11000, 0x12000, 0x13000  # 4 KiB pages over the first 2 MiB
IDT, GDT, TSS, TSS2 = 0x2000, 0x3000, 0x5000, 0x5800
HANDLERS = 0x40000  # vector v: mov eax, v; hlt (at HANDLERS + 16 * v)
STACK, RSP0, IST1, IST2 = 0x8000, 0x9000, 0xA000, 0xB000
CODE = 0x1000
KCS, KDS, UDS, UCS, TSS_SEL = 0x08, 0x10, 0x1B, 0x23, 0x28
EFER_LME_LMA = 0x500


class Cpu:
    """A real engine's CPU state in long mode (or 32-bit protected mode), with guest RAM."""

    def __init__(self, long_mode: bool = True) -> None:
        self.mem = GuestMemory(RAM, RAM)
        self.uc = Uc(UC_ARCH_X86, UC_MODE_64)
        self.uc.mem_map_ptr(0, RAM, 7, self.mem.host_address)
        self.long_mode = long_mode
        for v in range(256):
            self.mem.write(HANDLERS + 16 * v, bytes([0xB8, v, 0, 0, 0, 0xF4]))
            self.gate(v, HANDLERS + 16 * v)
        self.mem.write(PML4, struct.pack("<Q", PDPT | 3))
        self.mem.write(PDPT, struct.pack("<Q", PD | 3))
        self.mem.write(PD, struct.pack("<Q", PT | 3))
        for i in range(512):
            self.map(i << 12, 3)
        code64 = 0x00AF9A000000FFFF if long_mode else 0x00CF9A000000FFFF
        ucode = 0x00AFFA000000FFFF if long_mode else 0x00CFFA000000FFFF
        gdt = [0, code64, 0x00CF92000000FFFF, 0x00CFF2000000FFFF, ucode]
        self.mem.write(GDT, struct.pack(f"<{len(gdt)}Q", *gdt))
        self.set_tss(TSS_SEL, TSS, 0x67)
        self.ctx = Context(self.uc, probe_layout())
        uc = self.uc
        if long_mode:
            uc.reg_write(X.UC_X86_REG_CR3, PML4)
            uc.reg_write(X.UC_X86_REG_CR4, 0x20 | 0x200)  # PAE, OSFXSR
            uc.msr_write(0xC000_0080, EFER_LME_LMA)
            uc.reg_write(X.UC_X86_REG_CR0, 0x8001_0011)  # PG, WP, ET, PE
        else:
            uc.msr_write(0xC000_0080, 0)
            uc.reg_write(X.UC_X86_REG_CR0, 0x11)
        ctx = self.ctx
        ctx.save()
        if not long_mode:
            ctx.efer = 0
        ctx.seg(SEG_GDT).base, ctx.seg(SEG_GDT).limit = GDT, 0x3F
        ctx.seg(SEG_IDT).base, ctx.seg(SEG_IDT).limit = IDT, 256 * self.gate_size - 1
        self.load(SEG_CS, KCS)
        for seg in (SEG_SS, SEG_DS, SEG_ES):
            self.load(seg, KDS)
        tr = ctx.seg(SEG_TR)
        tr.selector, tr.base, tr.limit = TSS_SEL, TSS, 0x67
        tr.flags = (0xB if long_mode else 0xB) << 8 | 1 << 15
        ctx.recompute_hflags(2)
        self.mem.write(TSS + 4, struct.pack("<Q", RSP0) if long_mode
                       else struct.pack("<II", RSP0, KDS))
        self.mem.write(TSS + 0x24, struct.pack("<2Q", IST1, IST2))
        self.regs = Regs(rip=CODE, rsp=STACK, rflags=0x202)

    @property
    def gate_size(self) -> int:
        return 16 if self.long_mode else 8

    def gate(self, v: int, handler: int, dpl: int = 0, ist: int = 0, kind: int = 0xE,
             present: bool = True, selector: int = KCS) -> None:
        attr = kind | dpl << 5 | (0x80 if present else 0)
        lo = (handler & 0xFFFF) | selector << 16 | ist << 32 | attr << 40 | \
            (handler >> 16 & 0xFFFF) << 48
        raw = struct.pack("<QQ", lo, handler >> 32) if self.long_mode else struct.pack("<Q", lo)
        self.mem.write(IDT + self.gate_size * v, raw)

    def map(self, va: int, flags: int) -> None:
        self.mem.write(PT + 8 * (va >> 12), struct.pack("<Q", (va & ~0xFFF) | flags))

    def set_tss(self, selector: int, base: int, limit: int, busy: bool = False) -> None:
        kind = 0xB if busy else 0x9
        raw = (limit & 0xFFFF) | (base & 0xFF_FFFF) << 16 | (kind | 0x80) << 40 | \
            (limit >> 16 & 0xF) << 48 | (base >> 24 & 0xFF) << 56
        self.mem.write(GDT + (selector & ~7), struct.pack("<Q", raw))

    def load(self, seg: int, selector: int) -> None:
        (raw,) = struct.unpack("<Q", self.mem.read(GDT + (selector & ~7), 8))
        d = Descriptor.parse(raw)
        c = self.ctx.seg(seg)
        c.selector, c.base, c.limit, c.flags = selector, d.base, d.limit, d.flags

    def to_ring3(self) -> None:
        self.load(SEG_CS, UCS)
        self.load(SEG_SS, UDS)
        self.ctx.recompute_hflags(self.regs.rflags)

    def deliver(self, event: Event) -> None:
        ctx = self.ctx
        ps = PagingState(ctx.cr(0), ctx.cr(3), ctx.cr(4), ctx.efer)
        deliver(self.regs, ctx, GuestAccess(self.mem, ps), event)

    def frame(self, n: int) -> list[int]:
        size = 8 if self.long_mode else 4
        raw = self.mem.read(self.regs.rsp, size * n)
        return list(struct.unpack(f"<{n}{'Q' if size == 8 else 'I'}", raw))

    def run_handler(self) -> int:
        """Restore the state into the engine, run the handler to its hlt; the vector it names."""
        self.ctx.restore()
        uc = self.uc
        uc.reg_write(X.UC_X86_REG_RSP, self.regs.rsp)
        uc.reg_write(X.UC_X86_REG_RFLAGS, self.regs.rflags)
        uc.emu_start(self.regs.rip, 0, count=2)
        assert uc.reg_read(X.UC_X86_REG_RSP) == self.regs.rsp
        return uc.reg_read(X.UC_X86_REG_RAX) & 0xFF

    def close(self) -> None:
        self.ctx.close()
        self.uc.mem_unmap(0, RAM)
        self.mem.close()


@pytest.fixture
def cpu() -> Iterator[type[Cpu]]:
    made: list[Cpu] = []

    def make(**kw: bool) -> Cpu:
        made.append(Cpu(**kw))
        return made[-1]

    yield make  # type: ignore[misc]
    for c in made:
        c.close()


def test_a_plain_exception_lands_on_its_handler_with_its_frame(cpu) -> None:
    c = cpu()
    c.deliver(Event(GP, 0x18))
    assert c.regs.rip == HANDLERS + 16 * GP and c.regs.rsp == STACK - 48
    assert c.frame(6) == [0x18, CODE, KCS, 0x202, STACK, KDS]
    assert not c.regs.rflags & 0x200
    assert c.run_handler() == GP


def test_a_page_fault_while_delivering_a_benign_exception_is_delivered_with_cr2(cpu) -> None:
    c = cpu()
    c.gate(UD, HANDLERS + 16 * UD, ist=1)
    c.map(IST1 - 0x1000, 0)  # the IST stack's page is not present
    c.deliver(Event(UD))
    assert c.regs.rip == HANDLERS + 16 * PF
    assert c.ctx.cr(2) == IST1 - 8  # the first push: SS
    assert c.frame(2) == [0x2, CODE]  # not present, write, supervisor; at the #UD's rip
    assert c.run_handler() == PF


def test_a_frame_across_two_pages_faults_at_the_first_push_into_the_missing_one(cpu) -> None:
    c = cpu()
    c.mem.write(TSS + 0x24, struct.pack("<Q", IST1 + 0x10))  # SS, RSP above IST1; the rest below
    c.gate(UD, HANDLERS + 16 * UD, ist=1)
    c.map(IST1 - 0x1000, 0)
    c.deliver(Event(UD))
    assert c.regs.rip == HANDLERS + 16 * PF and c.ctx.cr(2) == IST1 - 8
    assert c.mem.read(IST1, 16) == b"\0" * 16  # nothing of the failed frame was written


def test_a_write_protected_stack_gives_error_code_present_and_write(cpu) -> None:
    c = cpu()
    c.gate(UD, HANDLERS + 16 * UD, ist=1)
    c.map(IST1 - 0x1000, 1)  # present, read-only (CR0.WP is set)
    c.deliver(Event(UD))
    assert c.regs.rip == HANDLERS + 16 * PF and c.frame(1) == [0x3]


def test_a_page_fault_while_delivering_a_page_fault_is_a_double_fault(cpu) -> None:
    c = cpu()
    c.gate(PF, HANDLERS + 16 * PF, ist=1)
    c.gate(DF, HANDLERS + 16 * DF, ist=2)
    c.map(IST1 - 0x1000, 0)
    c.ctx.set_cr(2, 0x1234)
    c.deliver(Event(PF, 0))
    assert c.regs.rip == HANDLERS + 16 * DF and c.regs.rsp == IST2 - 48
    assert c.frame(3) == [0, CODE, KCS]
    assert c.ctx.cr(2) == IST1 - 8  # CR2 names the second fault, as hardware loads it
    assert c.run_handler() == DF


def test_a_contributory_fault_after_a_contributory_one_is_a_double_fault(cpu) -> None:
    c = cpu()
    c.gate(GP, HANDLERS + 16 * GP, present=False)
    c.deliver(Event(GP, 0))
    assert c.regs.rip == HANDLERS + 16 * DF


def test_a_page_fault_after_a_contributory_fault_is_delivered_serially(cpu) -> None:
    c = cpu()
    c.gate(GP, HANDLERS + 16 * GP, ist=1)
    c.map(IST1 - 0x1000, 0)
    c.deliver(Event(GP, 0))
    assert c.regs.rip == HANDLERS + 16 * PF


def test_a_fault_while_delivering_a_double_fault_is_a_triple_fault(cpu) -> None:
    c = cpu()
    c.gate(PF, HANDLERS + 16 * PF, ist=1)
    c.gate(DF, HANDLERS + 16 * DF, ist=1)
    c.map(IST1 - 0x1000, 0)
    with pytest.raises(TripleFault):
        c.deliver(Event(PF, 2))


def test_an_external_interrupt_past_the_idt_limit_is_a_gp_with_ext(cpu) -> None:
    c = cpu()
    c.ctx.seg(SEG_IDT).limit = 0x40 * 16 - 1
    c.deliver(Event(0x40, external=True))
    assert c.regs.rip == HANDLERS + 16 * GP and c.frame(2) == [0x40 * 8 + 2 + 1, CODE]


@pytest.mark.parametrize(("vector", "length"), [(BP, 1), (0x21, 2), (4, 1)])
def test_a_software_interrupt_through_a_privileged_gate_faults_at_the_instruction(
        cpu, vector: int, length: int) -> None:
    c = cpu()
    c.to_ring3()
    c.regs.rip = CODE + length  # the engine reports the address after `int`
    c.regs.rsp = 0x7000
    c.deliver(Event(vector, software=True, length=length))
    assert c.regs.rip == HANDLERS + 16 * GP and c.regs.rsp == RSP0 - 48
    assert c.frame(6) == [vector * 8 + 2, CODE, UCS, 0x202, 0x7000, UDS]
    assert c.run_handler() == GP


def test_a_software_interrupt_to_a_missing_gate_is_np_at_the_instruction(cpu) -> None:
    c = cpu()
    c.gate(0x30, HANDLERS, dpl=3, present=False)
    c.regs.rip = CODE + 2
    c.deliver(Event(0x30, software=True, length=2))
    assert c.regs.rip == HANDLERS + 16 * NP and c.frame(2) == [0x30 * 8 + 2, CODE]


def test_a_software_interrupt_through_a_user_gate_is_a_trap_after_it(cpu) -> None:
    c = cpu()
    c.to_ring3()
    c.gate(0x80, HANDLERS + 16 * 0x80, dpl=3)
    c.regs.rip, c.regs.rsp = CODE + 2, 0x7000
    c.deliver(Event(0x80, software=True, length=2))
    assert c.regs.rip == HANDLERS + 16 * 0x80
    assert c.frame(5) == [CODE + 2, UCS, 0x202, 0x7000, UDS]
    assert c.ctx.hflags & 3 == 0


def test_a_tss_too_short_for_the_ist_gives_ts_with_the_tss_selector(cpu) -> None:
    c = cpu()
    c.ctx.seg(SEG_TR).limit = 0x23  # RSP0-2 fit, IST1 does not
    c.gate(UD, HANDLERS + 16 * UD, ist=1)
    c.deliver(Event(UD))
    assert c.regs.rip == HANDLERS + 16 * TS
    assert c.frame(2) == [TSS_SEL | 1, CODE]  # EXT: it happened delivering an exception
    assert c.run_handler() == TS


def test_a_tss_too_short_for_rsp0_gives_ts_at_the_int_instruction(cpu) -> None:
    c = cpu()
    c.to_ring3()
    c.ctx.seg(SEG_TR).limit = 0x8  # RSP0 is at 4..11
    c.gate(0x80, HANDLERS + 16 * 0x80, dpl=3)
    c.gate(TS, HANDLERS + 16 * TS, selector=UCS & ~3)  # a ring-3 handler: no TSS read
    c.regs.rip, c.regs.rsp = CODE + 2, 0x7000
    c.deliver(Event(0x80, software=True, length=2))
    assert c.regs.rip == HANDLERS + 16 * TS and c.regs.rsp == 0x7000 - 48
    assert c.frame(3) == [TSS_SEL, CODE, UCS]  # no EXT: raised by the int instruction


def test_a_tss_too_short_for_every_stack_ends_in_a_triple_fault(cpu) -> None:
    c = cpu()
    c.to_ring3()
    c.ctx.seg(SEG_TR).limit = 0x8
    c.gate(0x80, HANDLERS + 16 * 0x80, dpl=3)
    with pytest.raises(TripleFault):  # #TS and #DF need RSP0 as well
        c.deliver(Event(0x80, software=True, length=2))


def test_a_non_canonical_new_stack_is_ss(cpu) -> None:
    c = cpu()
    c.mem.write(TSS + 0x24, struct.pack("<Q", 0x8000_0000_0000_0000))
    c.gate(UD, HANDLERS + 16 * UD, ist=1)
    c.deliver(Event(UD))
    assert c.regs.rip == HANDLERS + 16 * SS and c.frame(2) == [1, CODE]


def test_a_failed_attempt_leaves_no_trace_in_the_state(cpu) -> None:
    c = cpu()
    c.to_ring3()
    c.gate(0x80, HANDLERS + 16 * 0x80, dpl=3)
    c.map(RSP0 - 0x1000, 0)  # the ring-0 stack is missing: #PF, then #DF also needs it
    c.gate(DF, HANDLERS + 16 * DF, ist=2)
    c.regs.rip, c.regs.rsp = CODE + 2, 0x7000
    c.deliver(Event(0x80, software=True, length=2))
    # int 0x80 (benign) → #PF (serially, on RSP0: fails) → #DF on IST2
    assert c.regs.rip == HANDLERS + 16 * DF and c.ctx.cr(2) == RSP0 - 8
    assert c.frame(6) == [0, CODE, UCS, 0x202, 0x7000, UDS]


# --- 32-bit protected mode -----------------------------------------------------------------------
def test_32bit_ring3_interrupt_switches_to_ss0_esp0(cpu) -> None:
    c = cpu(long_mode=False)
    c.to_ring3()
    c.gate(0x80, HANDLERS + 16 * 0x80, dpl=3)
    c.regs.rip, c.regs.rsp = CODE + 2, 0x7000
    c.deliver(Event(0x80, software=True, length=2))
    assert c.regs.rip == HANDLERS + 16 * 0x80 and c.regs.rsp == RSP0 - 20
    assert c.frame(5) == [CODE + 2, UCS, 0x202, 0x7000, UDS]
    assert c.ctx.seg(SEG_SS).selector == KDS
    assert c.run_handler() == 0x80


def test_32bit_tss_too_short_for_ss0_esp0_gives_ts(cpu) -> None:
    c = cpu(long_mode=False)
    c.to_ring3()
    c.ctx.seg(SEG_TR).limit = 0x8  # ESP0 fits, SS0 (8..9) does not
    c.gate(0x80, HANDLERS + 16 * 0x80, dpl=3)
    c.regs.rip, c.regs.rsp = CODE + 2, 0x7000
    with pytest.raises(TripleFault):  # #TS needs SS0:ESP0 as well, #DF too
        c.deliver(Event(0x80, software=True, length=2))


def test_32bit_tss_short_for_ring0_stack_ts_delivered_to_a_ring3_handler(cpu) -> None:
    """#TS(TSS) itself is delivered when its handler needs no stack switch."""
    c = cpu(long_mode=False)
    c.ctx.seg(SEG_TR).limit = 0x8
    c.to_ring3()
    # A conforming ring-0 code segment keeps CPL 3: no TSS read for #TS.
    c.mem.write(GDT + 0x30, struct.pack("<Q", 0x00CF9E000000FFFF))
    c.gate(TS, HANDLERS + 16 * TS, selector=0x30)
    c.gate(0x80, HANDLERS + 16 * 0x80, dpl=3)
    c.regs.rip, c.regs.rsp = CODE + 2, 0x7000
    c.deliver(Event(0x80, software=True, length=2))
    assert c.regs.rip == HANDLERS + 16 * TS and c.regs.rsp == 0x7000 - 16
    assert c.frame(4) == [TSS_SEL, CODE, UCS, 0x202]  # error, EIP at the int, CS, EFLAGS


def test_32bit_double_fault_through_a_task_gate_switches_task(cpu) -> None:
    c = cpu(long_mode=False)
    df_sel, df_esp, df_cr3 = 0x38, 0x6F00, PML4  # CR3 is loaded only with paging on
    c.set_tss(df_sel, TSS2, 0x67)
    tss2 = struct.pack("<I24xIII8I6II", 0, df_cr3, HANDLERS + 16 * DF, 0x2,
                       0, 0, 0, 0, df_esp, 0, 0, 0, KDS, KCS, KDS, KDS, KDS, KDS, 0)
    c.mem.write(TSS2, tss2)
    c.gate(DF, 0, kind=0x5, selector=df_sel)
    c.gate(GP, HANDLERS + 16 * GP, present=False)  # #GP → #NP → #DF
    c.regs.rax, c.regs.rsp = 0x1111, 0x7000
    c.deliver(Event(GP, 0))
    ctx = c.ctx
    assert ctx.seg(SEG_TR).selector == df_sel
    assert ctx.seg(SEG_TR).flags >> 8 & 0xF == 0xB  # busy
    assert c.mem.read(GDT + df_sel + 5, 1)[0] & 0xF == 0xB  # in the GDT too
    assert c.regs.rip == HANDLERS + 16 * DF and c.regs.rsp == df_esp - 4
    assert c.frame(1) == [0] and c.regs.rflags & 0x4000  # error code; NT set
    assert c.regs.rax == 0 and ctx.cr(0) & 8  # the new task's registers; CR0.TS
    assert struct.unpack("<H", c.mem.read(TSS2, 2))[0] == TSS_SEL  # back link
    eip, eflags, eax = struct.unpack("<3I", c.mem.read(TSS + 0x20, 12))
    assert (eip, eflags, eax) == (CODE, 0x202, 0x1111)  # the old task was saved
    assert c.run_handler() == DF


def test_32bit_task_gate_to_a_busy_tss_is_gp(cpu) -> None:
    c = cpu(long_mode=False)
    c.set_tss(0x38, TSS2, 0x67, busy=True)
    c.gate(0x41, 0, kind=0x5, selector=0x38)
    c.deliver(Event(0x41, external=True))
    assert c.regs.rip == HANDLERS + 16 * GP and c.frame(1) == [0x38 | 1]


def test_virtual_8086_mode_is_refused_clearly(cpu) -> None:
    c = cpu(long_mode=False)
    c.regs.rflags |= 1 << 17
    with pytest.raises(Unsupported, match="virtual-8086"):
        c.deliver(Event(0x20, external=True))
