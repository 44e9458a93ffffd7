"""pyxen.soft.faults.refine against what a real Unicorn engine reports.

Each case first runs the instruction on the engine, in long mode with paging, and checks
that Unicorn reports what pyxen expects it to get wrong (so a fixed Unicorn shows up here),
then checks what refine() makes of it.
"""

from __future__ import annotations

import struct

import pytest
from unicorn import (
    UC_ARCH_X86,
    UC_ERR_INSN_INVALID,
    UC_HOOK_INTR,
    UC_MODE_32,
    UC_MODE_64,
    Uc,
    UcError,
)
from unicorn import x86_const as X

from pyxen.domain.backend import Regs
from pyxen.soft.cpustate import Context, probe_layout
from pyxen.soft.faults import decode, refine, software_length
from pyxen.soft.interrupts import (
    BP,
    DB,
    ERROR_CODE_VECTORS,
    GP,
    NM,
    SS,
    UD,
    Event,
)
from pyxen.soft.machine import soft_usable

pytestmark = pytest.mark.skipif(not soft_usable()[0], reason="Unicorn engine not usable")

CODE = 0x1000
NONCANON = 0x8000_0000_0000_0000
CR0_BASE, CR0_EM, CR0_TS = 0x8001_0011, 1 << 2, 1 << 3
CR4_BASE, CR4_OSFXSR = 0x20 | 0x200, 1 << 9
REG = {"rax": X.UC_X86_REG_RAX, "rbp": X.UC_X86_REG_RBP, "rsp": X.UC_X86_REG_RSP,
       "r13": X.UC_X86_REG_R13}


def engine_event(code: bytes, cr0: int = CR0_BASE, cr4: int = CR4_BASE,
                 **values: int) -> tuple[Event, int, Regs]:
    """Run `code` once on a long-mode engine; the event it reports as the soft vCPU builds
    it, the rip, and the registers at the instruction."""
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, 0x200000)
    uc.mem_write(0x10000, struct.pack("<Q", 0x11003))
    uc.mem_write(0x11000, struct.pack("<Q", 0x12003))
    uc.mem_write(0x12000, struct.pack("<Q", 0x83))  # one 2 MiB identity page
    uc.mem_write(CODE, code)
    uc.reg_write(X.UC_X86_REG_CR3, 0x10000)
    uc.reg_write(X.UC_X86_REG_CR4, cr4)
    uc.reg_write(X.UC_X86_REG_CR0, cr0)
    regs = {"rsp": 0x8000, "rbp": 0x7000, "rax": 0x6000} | values
    for name, value in regs.items():
        uc.reg_write(REG[name], value)
    ctx = Context(uc, probe_layout())
    got: list[tuple[Event, int]] = []

    def on_interrupt(u: Uc, intno: int, _: object) -> None:
        ctx.save()
        error, is_int, next_eip = ctx.pending_exception()
        if is_int:
            got.append((Event(intno, software=True), next_eip))
        else:
            err = error if intno in ERROR_CODE_VECTORS else None
            got.append((Event(intno, err), u.reg_read(X.UC_X86_REG_RIP)))
        u.emu_stop()

    uc.hook_add(UC_HOOK_INTR, on_interrupt)
    try:
        uc.emu_start(CODE, CODE + len(code), count=1)
    except UcError as e:
        assert e.errno == UC_ERR_INSN_INVALID, e
        got.append((Event(UD), uc.reg_read(X.UC_X86_REG_RIP)))
    finally:
        ctx.close()
    assert got, "the engine raised nothing"
    return got[0][0], got[0][1], Regs(rip=CODE, **regs)


def refined(code: bytes, cr0: int = CR0_BASE, cr4: int = CR4_BASE, with_regs: bool = True,
            **values: int) -> tuple[Event, Event, int]:
    event, rip, regs = engine_event(code, cr0, cr4, **values)
    assert rip == CODE
    new, new_rip = refine(event, rip, code, True, True, cr0, cr4,
                          regs if with_regs else None)
    return event, new, new_rip


@pytest.mark.parametrize("with_regs", [True, False])
@pytest.mark.parametrize(("asm", "code", "values"), [
    ("push %rax", "50", {"rsp": NONCANON}),
    ("pop %rax", "58", {"rsp": NONCANON}),
    ("pushfq", "9c", {"rsp": NONCANON}),
    ("leave", "c9", {"rbp": NONCANON}),
    ("mov (%rbp),%rax", "488b4500", {"rbp": NONCANON}),
    ("mov 8(%rsp),%rax", "488b442408", {"rsp": NONCANON}),
    ("mov %ss:(%rax),%rax", "36488b00", {"rax": NONCANON}),
    ("mov (%rbp,%rax,1),%rcx", "488b4c0500", {"rbp": NONCANON - 0x6000}),
])
def test_a_non_canonical_stack_reference_is_ss_not_gp(asm: str, code: str, values: dict,
                                                        with_regs: bool) -> None:
    before, after, rip = refined(bytes.fromhex(code), with_regs=with_regs, **values)
    assert before == Event(GP, 0), f"{asm}: Unicorn now reports {before}"
    assert (after, rip) == (Event(SS, 0), CODE), asm


@pytest.mark.parametrize(("asm", "code", "values"), [
    ("mov (%rax),%rax", "488b00", {"rax": NONCANON}),
    ("mov (%r13),%rax", "498b4500", {"r13": NONCANON}),  # r13 is not rbp: DS
    ("mov %fs:(%rbp),%rax", "64488b4500", {"rbp": NONCANON}),
    ("push (%rax)", "ff30", {"rax": NONCANON}),  # the operand, not the stack, is bad
])
def test_other_general_protection_faults_stay_gp(asm: str, code: str, values: dict) -> None:
    before, after, _ = refined(bytes.fromhex(code), **values)
    assert before == Event(GP, 0), f"{asm}: Unicorn now reports {before}"
    assert after == Event(GP, 0), asm


@pytest.mark.parametrize(("asm", "code"), [
    ("ret", "c3"), ("call *%rax", "ffd0"), ("movaps (%rbp),%xmm0 (misaligned)", "0f284501"),
])
def test_a_gp_whose_stack_references_are_canonical_stays_gp(asm: str, code: str) -> None:
    """A ret/call to a non-canonical target, or SSE's alignment #GP(0) on an RBP-based
    operand: with the registers at hand the stack is seen to be fine. (Unicorn itself
    raises neither at the instruction: it reports a ret's #GP at the target, and does not
    check SSE alignment.)"""
    regs = Regs(rip=CODE, rsp=0x8000, rbp=0x7000, rax=NONCANON)
    after, rip = refine(Event(GP, 0), CODE, bytes.fromhex(code), True, True, CR0_BASE,
                        CR4_BASE, regs)
    assert (after, rip) == (Event(GP, 0), CODE), asm


def test_without_registers_a_ret_or_call_keeps_gp() -> None:
    for code in (b"\xc3", b"\xe8\0\0\0\0", b"\xff\xd0"):
        assert refine(Event(GP, 0), CODE, code, True, True, CR0_BASE, CR4_BASE)[0] == \
            Event(GP, 0)


def test_outside_64bit_code_nothing_is_non_canonical() -> None:
    event = Event(GP, 0)
    assert refine(event, CODE, b"\x50", True, False, CR0_BASE, CR4_BASE)[0] == event
    assert refine(event, CODE, b"\x50", False, False, CR0_BASE, CR4_BASE)[0] == event


def test_icebp_is_a_debug_trap_after_the_instruction() -> None:
    before, after, rip = refined(b"\xf1")
    assert before == Event(UD), f"Unicorn now reports {before} for ICEBP"
    assert after == Event(DB, length=1) and rip == CODE + 1


def test_other_invalid_opcodes_stay_ud() -> None:
    before, after, rip = refined(b"\x0f\x0b")  # ud2
    assert (before, after, rip) == (Event(UD), Event(UD), CODE)


@pytest.mark.parametrize(("asm", "code", "cr0", "cr4", "expect"), [
    ("pxor %mm0,%mm0, EM", "0fefc0", CR0_EM, CR4_OSFXSR, UD),
    ("emms, EM", "0f77", CR0_EM, CR4_OSFXSR, UD),
    ("xorps %xmm0,%xmm0, EM", "0f57c0", CR0_EM, CR4_OSFXSR, UD),
    ("pxor %xmm0,%xmm0, EM", "660fefc0", CR0_EM, CR4_OSFXSR, UD),
    ("xorps %xmm0,%xmm0, no OSFXSR", "0f57c0", 0, 0, UD),
    ("addsd %xmm1,%xmm0, no OSFXSR", "f20f58c1", 0, 0, UD),
    ("pxor %mm0,%mm0, no OSFXSR", "0fefc0", 0, 0, NM),  # MMX does not need OSFXSR
    ("xorps %xmm0,%xmm0", "0f57c0", 0, CR4_OSFXSR, NM),
    ("fnop, EM", "d9d0", CR0_EM, CR4_OSFXSR, NM),  # x87 with EM: #NM is right
    ("fxsave (%rax), EM", "0fae00", CR0_EM, CR4_OSFXSR, NM),
])
def test_simd_with_em_or_without_osfxsr_is_ud_before_nm(asm: str, code: str, cr0: int,
                                                         cr4: int, expect: int) -> None:
    before, after, rip = refined(bytes.fromhex(code), cr0=CR0_BASE | CR0_TS | cr0,
                                 cr4=(CR4_BASE & ~CR4_OSFXSR) | cr4)
    assert before == Event(NM), f"{asm}: Unicorn now reports {before}"
    assert after == Event(expect) and rip == CODE, asm


def test_software_interrupts_pass_unchanged() -> None:
    event, rip, regs = engine_event(b"\xcc")
    assert (event, rip) == (Event(BP, software=True), CODE + 1)
    assert refine(event, rip, b"", True, True, CR0_BASE, CR4_BASE, regs) == (event, rip)


@pytest.mark.parametrize(("code", "length", "long_mode"), [
    ("488b442408", 5, True), ("f30f1005", 8, True), ("8b0424", 3, True),
    ("660f3a0fc1", 5, True), ("f1", 1, True), ("67f1", 2, True), ("8b05", 6, False),
])
def test_decode_finds_prefixes_modrm_sib_and_displacement(code: str, length: int,
                                                          long_mode: bool) -> None:
    raw = bytes.fromhex(code) + b"\0" * 8
    insn = decode(raw, long_mode)
    assert insn is not None and insn.length == length


def test_decode_of_a_cut_instruction_is_none() -> None:
    assert decode(bytes.fromhex("488b44"), True) is None


@pytest.mark.parametrize(("code", "vector", "length"), [
    ("cc", 3, 1), ("cd03", 3, 2), ("cdcc", 0xCC, 2), ("ce", 4, 1), ("cd04", 4, 2),
    ("cdce", 0xCE, 2), ("cd80", 0x80, 2),
])
def test_software_interrupt_length_from_the_byte_before_the_next_rip(code: str, vector: int,
                                                                    length: int) -> None:
    raw = bytes.fromhex(code)
    uc = Uc(UC_ARCH_X86, UC_MODE_32)  # into exists outside 64-bit mode only
    uc.mem_map(0x1000, 0x1000)
    uc.mem_write(0x1000, raw)
    uc.reg_write(X.UC_X86_REG_EFLAGS, 0x802)  # OF, so that into raises #OF
    seen: list[tuple[int, int]] = []

    def on_interrupt(u: Uc, intno: int, _: object) -> None:
        seen.append((intno, u.reg_read(X.UC_X86_REG_EIP)))
        u.emu_stop()

    uc.hook_add(UC_HOOK_INTR, on_interrupt)
    uc.emu_start(0x1000, 0x1000 + len(raw), count=1)
    (intno, after), = seen
    assert (intno, after) == (vector, 0x1000 + len(raw))  # the address after the instruction
    assert software_length(intno, uc.mem_read(after - 1, 1)[0]) == length
