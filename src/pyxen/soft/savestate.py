"""The software CPU's registers in CpuState's neutral encoding, and back.

Unicorn's register API reaches the x87 stack, MXCSR, XMM/YMM, the debug registers and, through
QEMU's own RDMSR/WRMSR helpers, the MSRs; XCR0 and the interrupt shadow are not in it and go
through the saved context (cpustate.py). The FXSAVE64 image is built field by field as the
SDM lays it out (vol. 1, table 10-2): QEMU's own FXSAVE (what a guest sees on this engine)
writes the same fields, FOP excepted, which it leaves untouched in memory.
"""

from __future__ import annotations

import struct

from unicorn import Uc
from unicorn import x86_const as X

from pyxen.domain.backend import SpecialRegs
from pyxen.domain.cpu_state import (
    CPU_MSRS,
    DEBUG_REGS,
    FXSAVE_BYTES,
    MSR_SPEC_CTRL,
    MSR_TSC_ADJUST,
    CpuState,
)

FP_REGS = tuple(getattr(X, f"UC_X86_REG_FP{i}") for i in range(8))  # physical R0-R7
YMM_REGS = tuple(getattr(X, f"UC_X86_REG_YMM{i}") for i in range(16))
DEBUG_REG_IDS = {name: getattr(X, f"UC_X86_REG_{name.upper()}") for name in DEBUG_REGS}
# QEMU 5's CPU model keeps these (helper_rdmsr/wrmsr); TSC_ADJUST and SPEC_CTRL read as 0
# there and writes to them vanish (its CPUID offers neither).
SOFT_MSRS = tuple(index for index in CPU_MSRS if index not in (MSR_TSC_ADJUST, MSR_SPEC_CTRL))
QEMU_MXCSR_MASK = 0xFFFF  # what QEMU's FXSAVE stores as MXCSR_MASK
HEADER = struct.Struct("<HHBxHQQII")  # FCW FSW FTW(abridged) - FOP FIP FDP MXCSR MXCSR_MASK
ST_SLOT, ST_AT, XMM_AT = 16, 32, 160
M128 = (1 << 128) - 1
TAG_EMPTY = 3
TSS16_AVAILABLE, TSS_AVAILABLE, TSS_BUSY = 1, 9, 2  # descriptor types, and the busy bit
CR0_PE, CR0_NW, CR0_CD, CR0_PG = 1, 1 << 29, 1 << 30, 1 << 31
CR0_RESERVED = ~0xE005_003F & (2**64 - 1)  # PE MP EM TS ET NE WP AM NW CD PG
EFER_SCE, EFER_LME, EFER_LMA, EFER_NXE = 1, 1 << 8, 1 << 10, 1 << 11
CR4_PAE = 1 << 5


def read_vector_state(uc: Uc) -> tuple[bytes, bytes]:
    """(the FXSAVE64 image, YMM0-15's upper halves) of the engine's x87/SSE/AVX registers."""
    fsw, tags = uc.reg_read(X.UC_X86_REG_FPSW), uc.reg_read(X.UC_X86_REG_FPTAG)
    top = fsw >> 11 & 7
    abridged = sum(1 << i for i in range(8) if (tags >> (2 * i)) & 3 != TAG_EMPTY)
    header = HEADER.pack(uc.reg_read(X.UC_X86_REG_FPCW), fsw, abridged,
                         uc.reg_read(X.UC_X86_REG_FOP) & 0x7FF, uc.reg_read(X.UC_X86_REG_FIP),
                         uc.reg_read(X.UC_X86_REG_FDP), uc.reg_read(X.UC_X86_REG_MXCSR),
                         QEMU_MXCSR_MASK)
    stack = b"".join(_fp80(uc, (top + i) & 7).ljust(ST_SLOT, b"\0") for i in range(8))
    ymm = [uc.reg_read(reg) for reg in YMM_REGS]
    xmm = b"".join((y & M128).to_bytes(16, "little") for y in ymm)
    image = (header + stack + xmm).ljust(FXSAVE_BYTES, b"\0")
    return image, b"".join((y >> 128).to_bytes(16, "little") for y in ymm)


def _fp80(uc: Uc, physical: int) -> bytes:
    mantissa, exponent = uc.reg_read(FP_REGS[physical])
    return mantissa.to_bytes(8, "little") + exponent.to_bytes(2, "little")


def write_vector_state(uc: Uc, image: bytes, ymmh: bytes) -> None:
    """Load an FXSAVE64 image and YMM upper halves, as FXRSTOR (MXCSR_MASK is ignored)."""
    fcw, fsw, abridged, fop, fip, fdp, mxcsr, _ = HEADER.unpack_from(image)
    uc.reg_write(X.UC_X86_REG_FPCW, fcw)
    uc.reg_write(X.UC_X86_REG_FPSW, fsw)  # TOP included
    uc.reg_write(X.UC_X86_REG_FPTAG, sum(TAG_EMPTY << (2 * i) for i in range(8)
                                         if not abridged >> i & 1))
    top = fsw >> 11 & 7
    for i in range(8):
        raw = image[ST_AT + ST_SLOT * i : ST_AT + ST_SLOT * i + 10]
        uc.reg_write(FP_REGS[(top + i) & 7], (int.from_bytes(raw[:8], "little"),
                                              int.from_bytes(raw[8:], "little")))
    uc.reg_write(X.UC_X86_REG_FOP, fop & 0x7FF)
    uc.reg_write(X.UC_X86_REG_FIP, fip)
    uc.reg_write(X.UC_X86_REG_FDP, fdp)
    uc.reg_write(X.UC_X86_REG_MXCSR, mxcsr)
    for i, reg in enumerate(YMM_REGS):
        low = int.from_bytes(image[XMM_AT + 16 * i : XMM_AT + 16 * i + 16], "little")
        high = int.from_bytes(ymmh[16 * i : 16 * i + 16], "little")
        uc.reg_write(reg, high << 128 | low)


def read_msrs(uc: Uc) -> dict[int, int]:
    return {index: uc.msr_read(index) for index in SOFT_MSRS}


def write_msrs(uc: Uc, msrs: dict[int, int]) -> None:
    for index, value in msrs.items():
        if index in SOFT_MSRS:
            uc.msr_write(index, value)


def read_debugregs(uc: Uc) -> dict[str, int]:
    return {name: uc.reg_read(reg) for name, reg in DEBUG_REG_IDS.items()}


def write_debugregs(uc: Uc, values: dict[str, int]) -> None:
    """The values only: QEMU arms the breakpoints DR7 enables when the guest writes DR7
    (cpu_x86_update_dr7), which Unicorn's register API does not do."""
    for name, reg in DEBUG_REG_IDS.items():
        uc.reg_write(reg, values[name])


def mark_tr_busy(sregs: SpecialRegs) -> None:
    """A loaded TR's type is a busy TSS (the CPU's LTR sets it; VMX refuses another at
    entry); QEMU's LTR marks the descriptor in the GDT busy but keeps the available type in
    its cache, where the guest cannot see it."""
    if sregs.tr.present and sregs.tr.type in (TSS16_AVAILABLE, TSS_AVAILABLE):
        sregs.tr.type |= TSS_BUSY


def misfit(state: CpuState, cr4_valid: int) -> str | None:
    """Why this engine cannot hold `state` (it would run it otherwise, unlike KVM, which
    checks control registers itself), or None."""
    s = state.sregs
    if s.cr4 & ~cr4_valid:
        return f"CR4 {s.cr4:#x} sets bits this vCPU's CPUID does not offer"
    if s.cr0 & CR0_RESERVED or (s.cr0 & CR0_PG and not s.cr0 & CR0_PE) \
            or (s.cr0 & CR0_NW and not s.cr0 & CR0_CD):
        return f"CR0 {s.cr0:#x} is not a value the CPU accepts"
    if s.efer & ~(EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE):
        return f"EFER {s.efer:#x} sets bits this CPU does not have"
    if s.efer & EFER_LME and s.cr0 & CR0_PG and not (s.efer & EFER_LMA and s.cr4 & CR4_PAE):
        return "paging with EFER.LME needs CR4.PAE, and sets EFER.LMA"
    if state.nmi_pending or state.nmi_masked:
        return "NMI state (the software CPU has no NMIs)"
    for index, value in state.msrs.items():
        if index not in SOFT_MSRS and value:
            return f"MSR {index:#x} ({CPU_MSRS[index]}) = {value:#x}, which this CPU does not keep"
    return None
