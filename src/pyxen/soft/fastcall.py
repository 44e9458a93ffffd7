"""SYSCALL and SYSENTER, the fast system-call instructions, on the software CPU.

Unicorn does not execute these two: it reports them to an instruction hook and skips them,
so 64-bit user space would never reach its kernel. The soft vCPU stops the engine after
such an instruction and calls `syscall`/`sysenter` here, which do what the processor does
(Intel SDM vol. 2B, SYSCALL and SYSENTER; AMD APM vol. 3 for the modes where the two vendors
differ): save the return address (and flags), load CS and SS with the fixed flat
descriptors the instruction implies -- not from the GDT -- drop to CPL 0, mask RFLAGS and
jump to the entry point held in the MSRs. SYSRET and SYSEXIT need nothing here: QEMU's own
helpers inside the engine execute them.

The vendors differ, and a guest sees the vendor in CPUID, so `amd` selects the rules:
- Intel: SYSCALL only in 64-bit mode (compat and legacy mode: #UD); SYSENTER in every
  protected mode, 64-bit mode included.
- AMD: SYSCALL in every protected mode (compat mode enters at CSTAR, legacy mode at
  STAR[31:0]); SYSENTER is #UD in long mode.
"""

from __future__ import annotations

from collections.abc import Callable

from pyxen.domain.backend import Regs

from .cpustate import (
    CR0_PE,
    DESC_B,
    DESC_G,
    DESC_L,
    DESC_P,
    DESC_S,
    DESC_TYPE_SHIFT,
    EFER_LMA,
    SEG_CS,
    SEG_SS,
    Context,
)
from .interrupts import GP, RF_IF, RF_RF, RF_VM, UD, Event

MSR_SYSENTER_CS, MSR_SYSENTER_ESP, MSR_SYSENTER_EIP = 0x174, 0x175, 0x176
MSR_STAR, MSR_LSTAR, MSR_CSTAR, MSR_FMASK = 0xC000_0081, 0xC000_0082, 0xC000_0083, 0xC000_0084
EFER_SCE = 1
INSN_LEN = 2  # 0F 05 (SYSCALL), 0F 34 (SYSENTER)
RFLAGS_FIXED = 1 << 1  # always reads as 1
M32 = 0xFFFF_FFFF

# The fixed descriptors the SDM loads (base 0, limit 0xFFFFF pages, DPL 0), in QEMU's
# segment-cache form: code type 11 (execute/read, accessed), data type 3 (read/write,
# accessed). 64-bit code has L=1 and D=0, 32-bit code D=1.
_CODE = DESC_G | DESC_P | DESC_S | 0xB << DESC_TYPE_SHIFT
CODE64_FLAGS = _CODE | DESC_L
CODE32_FLAGS = _CODE | DESC_B
DATA_FLAGS = DESC_G | DESC_B | DESC_P | DESC_S | 0x3 << DESC_TYPE_SHIFT
FLAT_LIMIT = 0xFFFF_FFFF  # 0xFFFFF with G=1, as QEMU's cache holds it (expanded)

MsrReader = Callable[[int], int]


def syscall(regs: Regs, ctx: Context, msr: MsrReader, *, amd: bool = False) -> Event | None:
    """Perform SYSCALL at regs.rip (the instruction's address); return the fault instead,
    with regs and ctx untouched, when the instruction faults."""
    long_mode = bool(ctx.efer & EFER_LMA)
    code64 = long_mode and bool(ctx.seg(SEG_CS).flags & DESC_L)
    if not ctx.efer & EFER_SCE or not ctx.cr(0) & CR0_PE:
        return Event(UD)
    if not code64 and not amd:  # Intel: "IF CS.L != 1 or IA32_EFER.LMA != 1 ... #UD"
        return Event(UD)
    star = msr(MSR_STAR)
    selector = star >> 32 & 0xFFFF
    if long_mode:
        regs.rcx = (regs.rip + INSN_LEN) & (2**64 - 1 if code64 else M32)
        regs.r11 = regs.rflags & ~RF_RF
        regs.rflags = regs.rflags & ~(msr(MSR_FMASK) & M32 | RF_RF) | RFLAGS_FIXED
        regs.rip = msr(MSR_LSTAR if code64 else MSR_CSTAR)
        _load_flat(ctx, selector, CODE64_FLAGS)
    else:  # AMD legacy mode
        regs.rcx = (regs.rip + INSN_LEN) & M32
        regs.rflags = regs.rflags & ~(RF_VM | RF_IF | RF_RF) | RFLAGS_FIXED
        regs.rip = star & M32
        _load_flat(ctx, selector, CODE32_FLAGS)
    ctx.recompute_hflags(regs.rflags)
    return None


def sysenter(regs: Regs, ctx: Context, msr: MsrReader, *, amd: bool = False) -> Event | None:
    """Perform SYSENTER; return the fault instead, with regs and ctx untouched, when the
    instruction faults."""
    long_mode = bool(ctx.efer & EFER_LMA)
    if amd and long_mode:  # AMD APM: SYSENTER is invalid in long mode
        return Event(UD)
    cs = msr(MSR_SYSENTER_CS) & 0xFFFF
    if not ctx.cr(0) & CR0_PE or not cs & 0xFFFC:
        return Event(GP, 0)
    regs.rflags = regs.rflags & ~(RF_VM | RF_IF | RF_RF) | RFLAGS_FIXED
    width = 2**64 - 1 if long_mode else M32
    regs.rsp = msr(MSR_SYSENTER_ESP) & width
    regs.rip = msr(MSR_SYSENTER_EIP) & width
    _load_flat(ctx, cs, CODE64_FLAGS if long_mode else CODE32_FLAGS)
    ctx.recompute_hflags(regs.rflags)
    return None


def _load_flat(ctx: Context, selector: int, code_flags: int) -> None:
    """CS := selector (RPL 0), SS := the next descriptor, both flat at DPL 0: CPL becomes 0."""
    for index, sel, flags in ((SEG_CS, selector & 0xFFFC, code_flags),
                              (SEG_SS, (selector + 8) & 0xFFFC, DATA_FLAGS)):
        seg = ctx.seg(index)
        seg.selector, seg.base, seg.limit, seg.flags = sel, 0, FLAT_LIMIT, flags
