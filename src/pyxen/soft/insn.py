"""Decoding the few instructions the soft CPU completes itself: port I/O, RDMSR/WRMSR and
the VMCALL/VMMCALL hypercall instructions (see vcpu.py for how the engine stops at them),
and where the instruction a single step runs ends (Capstone)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import capstone

PREFIXES = frozenset([0x66, 0x67, 0xF2, 0xF3, 0xF0, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65])
WRMSR, RDMSR = b"\x0f\x30", b"\x0f\x32"
HYPERCALL_INSNS = (b"\x0f\x01\xc1", b"\x0f\x01\xd9")  # VMCALL (Intel), VMMCALL (AMD)


@dataclass(frozen=True, slots=True)
class PortIo:
    is_out: bool
    port: int | None  # None: the port is in DX
    size: int
    length: int
    string: bool


def _prefixes(code: bytes, long_mode: bool) -> tuple[int, int, bool]:
    """Where the opcode starts, the REX byte right before it (0 if none), and whether an
    operand-size prefix (66) was seen."""
    i, rex, opsize = 0, 0, False
    while i < len(code) and (code[i] in PREFIXES or (long_mode and 0x40 <= code[i] <= 0x4F)):
        rex = code[i] if 0x40 <= code[i] <= 0x4F else 0
        opsize = opsize or code[i] == 0x66
        i += 1
    return i, rex, opsize


def decode_port_io(code: bytes, long_mode: bool, default32: bool) -> PortIo | None:
    """The port-I/O instruction at the start of `code`, or None if it is not one."""
    i, _, opsize = _prefixes(code, long_mode)
    opsize16 = default32 if opsize else not default32
    if i >= len(code):
        return None
    op = code[i]
    wide = 2 if opsize16 else 4
    if op in (0xE4, 0xE5, 0xE6, 0xE7) and i + 1 < len(code):
        return PortIo(op >= 0xE6, code[i + 1], 1 if op & 1 == 0 else wide, i + 2, False)
    if op in (0xEC, 0xED, 0xEE, 0xEF):
        return PortIo(op >= 0xEE, None, 1 if op & 1 == 0 else wide, i + 1, False)
    if op in (0x6C, 0x6D, 0x6E, 0x6F):
        return PortIo(op >= 0x6E, None, 1 if op & 1 == 0 else wide, i + 1, True)
    return None


# Register numbers (ModRM/REX order) -> pyxen.domain.backend.Regs field names.
GPR_NAMES = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
             "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")


@dataclass(frozen=True, slots=True)
class MovToCr:
    cr: int
    gpr: int  # source register number (GPR_NAMES)
    length: int


def decode_mov_to_cr(code: bytes, long_mode: bool) -> MovToCr | None:
    """`mov %reg,%crN` (0F 22 /r) at the start of `code`, or None."""
    i, rex, _ = _prefixes(code, long_mode)
    if code[i : i + 2] != b"\x0f\x22" or i + 2 >= len(code):
        return None
    modrm = code[i + 2]
    return MovToCr(cr=(modrm >> 3 & 7) | (8 if rex & 4 else 0),
                   gpr=(modrm & 7) | (8 if rex & 1 else 0), length=i + 3)


# Instructions after which execution does not simply go on at the next address.
_BRANCHES = (capstone.CS_GRP_JUMP, capstone.CS_GRP_CALL, capstone.CS_GRP_RET,
             capstone.CS_GRP_IRET, capstone.CS_GRP_INT, capstone.CS_GRP_BRANCH_RELATIVE)


@cache
def _decoder(bits: int) -> capstone.Cs:
    mode = {64: capstone.CS_MODE_64, 32: capstone.CS_MODE_32, 16: capstone.CS_MODE_16}[bits]
    cs = capstone.Cs(capstone.CS_ARCH_X86, mode)
    cs.detail = True  # for the instruction groups
    return cs


def straight_line_end(code: bytes, address: int, bits: int) -> int | None:
    """The address right after the instruction at the start of `code` (at `address`, in
    `bits`-bit code) if execution continues there; None for a branch or undecodable bytes."""
    insn = next(_decoder(bits).disasm(code, address, 1), None)
    if insn is None or any(insn.group(g) for g in _BRANCHES):
        return None
    return address + insn.size


def plain_store(code: bytes, address: int, bits: int) -> tuple[int, int] | None:
    """(length, bytes stored) of the `mov` to memory at the start of `code`, an instruction
    whose only effect besides moving rip on is that one store; None for anything else."""
    insn = next(_decoder(bits).disasm(code, address, 1), None)
    if insn is None or insn.mnemonic != "mov" or len(insn.operands) != 2:
        return None
    dest = insn.operands[0]
    if dest.type != capstone.x86.X86_OP_MEM:
        return None
    return insn.size, dest.size
