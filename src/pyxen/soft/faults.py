"""Correcting the exceptions Unicorn (QEMU 5's TCG) reports, before they are delivered.

Checked against a real engine (tests/soft/test_faults.py), QEMU 5 reports three cases unlike
the SDM:

- a non-canonical *stack* reference (push/pop/call/ret/enter/leave/iret, or a memory operand
  whose segment is SS: based on RSP/RBP, or with an SS prefix) raises #GP(0); the CPU raises
  #SS(0) (SDM vol 3 §6.15, "Interrupt 12");
- ICEBP (INT1, 0xF1) is an invalid opcode; the CPU raises a #DB trap, after the instruction;
- with CR0.TS set, MMX/SSE instructions raise #NM even when CR0.EM is set or (SSE) CR4.OSFXSR
  is clear; the CPU checks those first and raises #UD (SDM vol 3 §13.1, Tables 22-x).

A small hand decoder is enough: these rules need only the prefixes, REX, the opcode map, the
ModRM/SIB bytes and the displacement, never the instruction's operands' meaning, so pyxen
keeps no disassembler dependency for them.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyxen.domain.backend import Regs

from .insn import GPR_NAMES
from .interrupts import DB, GP, NM, SS, UD, Event

CR0_EM, CR0_TS = 1 << 2, 1 << 3
CR4_OSFXSR = 1 << 9
ICEBP = 0xF1
SEGMENT_PREFIXES = {0x26: "es", 0x2E: "cs", 0x36: "ss", 0x3E: "ds", 0x64: "fs", 0x65: "gs"}
LEGACY_PREFIXES = frozenset([0x66, 0x67, 0xF0, 0xF2, 0xF3, *SEGMENT_PREFIXES])
# One-byte opcodes with a ModRM byte (the rest of 0x00-0x3F have none, see _has_modrm).
MODRM_1 = frozenset([0x62, 0x63, 0x69, 0x6B, *range(0x80, 0x90), 0xC0, 0xC1, 0xC4, 0xC5,
                     0xC6, 0xC7, 0xD0, 0xD1, 0xD2, 0xD3, *range(0xD8, 0xE0), 0xF6, 0xF7,
                     0xFE, 0xFF])
NO_MODRM_0F = frozenset([0x05, 0x06, 0x07, 0x08, 0x09, 0x0A, 0x0B, 0x0C, 0x0E, 0x30, 0x31,
                         0x32, 0x33, 0x34, 0x35, 0x36, 0x37, 0x77, 0xA0, 0xA1, 0xA2, 0xA8,
                         0xA9, 0xAA, *range(0x80, 0x90), *range(0xC8, 0xD0)])
# 0F-map opcodes that are SSE (XMM registers) without a mandatory prefix.
SSE_NO_PREFIX = frozenset([*range(0x10, 0x18), *range(0x28, 0x30), *range(0x50, 0x60),
                           0xC2, 0xC6])
M64 = 0xFFFF_FFFF_FFFF_FFFF


@dataclass(frozen=True, slots=True)
class Insn:
    """The parts of an instruction these rules look at."""

    prefixes: bytes
    rex: int
    map: int  # 0: one-byte, 1: 0F, 2: 0F 38, 3: 0F 3A, -1: VEX/EVEX/XOP (not decoded)
    opcode: int
    modrm: int | None
    sib: int | None
    disp: int
    length: int  # up to and including the displacement (immediates are not counted)

    @property
    def segment(self) -> str | None:
        """The last segment override, if any."""
        seg = None
        for p in self.prefixes:
            seg = SEGMENT_PREFIXES.get(p, seg)
        return seg

    @property
    def mandatory(self) -> int | None:
        """The SIMD mandatory prefix (F2/F3 win over 66), if any."""
        for p in reversed(self.prefixes):
            if p in (0xF2, 0xF3):
                return p
        return 0x66 if 0x66 in self.prefixes else None

    @property
    def reg(self) -> int:
        return (self.modrm or 0) >> 3 & 7


def decode(code: bytes, long_mode: bool) -> Insn | None:
    """The prefixes, opcode, ModRM, SIB and displacement at the start of `code` (None if cut)."""
    i, rex = 0, 0
    while i < len(code):
        b = code[i]
        if b in LEGACY_PREFIXES:
            rex = 0  # a REX prefix counts only right before the opcode
        elif long_mode and 0x40 <= b <= 0x4F:
            rex = b
        else:
            break
        i += 1
    prefixes = bytes(p for p in code[:i] if p in LEGACY_PREFIXES)
    if i >= len(code):
        return None
    op, amap = code[i], 0
    after = code[i + 1] if i + 1 < len(code) else 0
    vex = op in (0xC4, 0xC5, 0x62) and (long_mode or after >> 6 == 3)
    if vex or (op == 0x8F and after >> 3 & 7):  # VEX, EVEX, XOP
        return Insn(prefixes, rex, -1, op, None, None, 0, i + 1)
    i += 1
    if op == 0x0F:
        if i >= len(code):
            return None
        op, amap = code[i], 1
        i += 1
        if op in (0x38, 0x3A):
            if i >= len(code):
                return None
            amap, op = (2 if op == 0x38 else 3), code[i]
            i += 1
    if not _has_modrm(amap, op):
        return Insn(prefixes, rex, amap, op, None, None, 0, i)
    if i >= len(code):
        return None
    modrm = code[i]
    i += 1
    mod, rm, sib = modrm >> 6, modrm & 7, None
    addr32 = 0x67 in prefixes if long_mode else 0x67 not in prefixes
    disp_size = 0
    if mod != 3:
        if rm == 4 and (long_mode or addr32):
            if i >= len(code):
                return None
            sib = code[i]
            i += 1
            if mod == 0 and sib & 7 == 5:
                disp_size = 4
        elif mod == 0 and rm == 5:
            disp_size = 4
        disp_size = {1: 1, 2: 4}.get(mod, disp_size)
    if i + disp_size > len(code):
        return None
    disp = int.from_bytes(code[i : i + disp_size], "little", signed=True)
    return Insn(prefixes, rex, amap, op, modrm, sib, disp, i + disp_size)


def _has_modrm(amap: int, op: int) -> bool:
    if amap in (2, 3):
        return True
    if amap == 1:
        return op not in NO_MODRM_0F
    return (op < 0x40 and op & 7 < 4) or op in MODRM_1


def refine(event: Event, rip: int, code: bytes, long_mode: bool, cs64: bool,
           cr0: int, cr4: int, regs: Regs | None = None) -> tuple[Event, int]:
    """The event the CPU would raise where Unicorn reported `event` at `rip`, and the rip to
    deliver it at. `code`: up to 16 bytes at rip. `regs` (the registers at the instruction)
    lets the stack rule tell a non-canonical stack address from a non-canonical target or
    data address; without them an instruction whose only memory reference is the stack is
    taken to have faulted on it, and a `ret`/`call`/`iret` or a data operand keeps #GP."""
    if event.software or event.external:
        return event, rip
    if event.vector == UD:
        return _icebp(event, rip, code, cs64)
    if event.vector == NM and cr0 & CR0_TS:
        return _simd_unavailable(event, rip, code, cs64, cr0, cr4)
    if event.vector == GP and event.error == 0 and long_mode and cs64:
        insn = decode(code, True)
        if insn is not None and _stack_fault(insn, regs):
            return Event(SS, 0), rip
    return event, rip


def software_length(vector: int, last_byte: int) -> int:
    """The length of the `int3`/`into`/`int n` that raised software interrupt `vector`, from
    the byte before the address Unicorn reports (it gives only the address after it).
    `int3` (CC) reports 3 and `into` (CE) 4, while `int n` (CD n) ends with n itself, so the
    two never mix: CD CC reports 0xCC, CD 03 ends in 03. Prefixes before CD are not counted."""
    return 1 if (vector, last_byte) in ((3, 0xCC), (4, 0xCE)) else 2


def _icebp(event: Event, rip: int, code: bytes, cs64: bool) -> tuple[Event, int]:
    insn = decode(code, cs64)
    if insn is None or insn.map != 0 or insn.opcode != ICEBP:
        return event, rip
    return Event(DB, length=insn.length), (rip + insn.length) & M64


def _simd_unavailable(event: Event, rip: int, code: bytes, cs64: bool, cr0: int,
                      cr4: int) -> tuple[Event, int]:
    insn = decode(code, cs64)
    if insn is None or insn.map <= 0:
        return event, rip  # x87 (D8-DF, WAIT) keeps #NM; VEX is not decoded here
    if insn.map == 1 and insn.opcode == 0xAE:
        if insn.modrm is None or insn.modrm >> 6 == 3 or insn.reg not in (2, 3):
            return event, rip  # FXSAVE/FXRSTOR/XSAVE*: #NM is right; LDMXCSR/STMXCSR are SSE
        sse = True
    elif insn.map == 1 and insn.opcode == 0xC7:
        return event, rip  # XRSTORS/XSAVEC/XSAVES
    else:
        sse = insn.mandatory is not None or (insn.map == 1 and insn.opcode in SSE_NO_PREFIX)
    if cr0 & CR0_EM or (sse and not cr4 & CR4_OSFXSR):
        return Event(UD), rip
    return event, rip


# --- non-canonical stack references -------------------------------------------------------------
def _canonical(va: int) -> bool:
    return (va & M64) >> 47 in (0, 0x1FFFF)


def _stack_fault(insn: Insn, regs: Regs | None) -> bool:
    """Whether the first non-canonical reference of `insn` is an SS one."""
    refs = _references(insn, regs)
    if regs is None:
        # Without registers: only when every reference the instruction makes is SS-based.
        return bool(refs) and all(ss for ss, _, _ in refs) and not _has_target(insn)
    for ss, address, size in refs:
        if address is None:  # a data reference whose address is unknown: assume it faulted
            return False
        if not (_canonical(address) and _canonical(address + size - 1)):
            return ss
    return False


def _has_target(insn: Insn) -> bool:
    """Instructions that also load a new rip, which may be the non-canonical address."""
    if insn.map == 0:
        return insn.opcode in (0xC2, 0xC3, 0xCA, 0xCB, 0xCF, 0xE8) or (
            insn.opcode == 0xFF and insn.reg in (2, 3))
    return False


def _references(insn: Insn, regs: Regs | None) -> list[tuple[bool, int | None, int]]:
    """The instruction's memory references in the order it makes them:
    (SS-based, linear address if known, size)."""
    size = 2 if 0x66 in insn.prefixes else 8
    rsp = regs.rsp if regs is not None else 0
    push = [(True, rsp - size, size)]
    pop = [(True, rsp, size)]
    mem = _memory_operand(insn, regs)
    op, m = insn.opcode, insn.map
    if m == 0:
        if 0x50 <= op <= 0x57 or op in (0x68, 0x6A, 0x9C, 0xE8):
            return push
        if 0x58 <= op <= 0x5F or op in (0x9D, 0xC2, 0xC3):
            return pop
        if op in (0xCA, 0xCB):
            return [(True, rsp, 16)]
        if op == 0xCF:
            return [(True, rsp, 40 if insn.rex & 8 else 20)]
        if op == 0xC8:  # enter: push rbp, then the new frame
            return push
        if op == 0xC9:  # leave: rsp = rbp, then pop
            return [(True, regs.rbp if regs is not None else 0, size)]
        if op == 0x8F and insn.reg == 0:  # pop r/m: the stack first
            return pop + mem
        if op == 0xFF and insn.reg in (2, 6):  # call/push r/m: the operand first
            return mem + push
        if op == 0xFF and insn.reg == 3:  # call far m
            return mem + [(True, rsp - 16, 16)]
    if m == 1 and op in (0xA0, 0xA8):
        return push
    if m == 1 and op in (0xA1, 0xA9):
        return pop
    return mem


def _memory_operand(insn: Insn, regs: Regs | None) -> list[tuple[bool, int | None, int]]:
    if insn.modrm is None or insn.modrm >> 6 == 3 or insn.map < 0:
        return []
    if 0x67 in insn.prefixes:
        return []  # a 32-bit effective address is always canonical
    mod, rm = insn.modrm >> 6, insn.modrm & 7
    base: int | None
    index: int | None = None
    scale = 1
    if rm == 4:
        sib = insn.sib or 0
        base = None if (mod == 0 and sib & 7 == 5) else (sib & 7) | (insn.rex & 1) << 3
        index = (sib >> 3 & 7) | (insn.rex & 2) << 2
        index = None if index == 4 else index
        scale = 1 << (sib >> 6)
    elif mod == 0 and rm == 5:
        base = None  # rip-relative
    else:
        base = rm | (insn.rex & 1) << 3
    seg = insn.segment
    ss = seg == "ss" or (seg is None and base in (4, 5))
    if regs is None or seg in ("fs", "gs") or (mod == 0 and rm == 5):
        return [(ss, None, 1)]
    address = insn.disp
    if base is not None:
        address += getattr(regs, GPR_NAMES[base])
    if index is not None:
        address += getattr(regs, GPR_NAMES[index]) * scale
    return [(ss, address & M64, 1)]
