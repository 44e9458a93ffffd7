"""Interrupt and exception delivery through the guest's IDT, as the CPU does it.

Unicorn reports every exception and `int n` to a hook instead of delivering it, and has no
way to inject an external interrupt, so the soft CPU delivers them here: the gate from the
IDT (64-bit gates with IST, 32-bit and 16-bit protected-mode gates, the real-mode IVT), the
privilege checks, the stack switch through the TSS when the CPL changes, the frame push,
IF/TF/NT/RF clearing, and the new CS/SS loaded into the engine's hidden segment state. A
fault while delivering an exception becomes #DF; a fault while delivering #DF is a triple
fault (the caller reports Exit.SHUTDOWN).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pyxen.abi.errno import XenError
from pyxen.domain.backend import Regs
from pyxen.hv.guest_access import GuestAccess

from .cpustate import (
    CR0_PE,
    DESC_B,
    DESC_DPL_SHIFT,
    DESC_L,
    EFER_LMA,
    SEG_CS,
    SEG_GDT,
    SEG_IDT,
    SEG_LDT,
    SEG_SS,
    SEG_TR,
    Context,
    Descriptor,
    SegmentCache,
)

DE, DB, BP, OF, UD, DF, TS, NP, SS, GP, PF = 0, 1, 3, 4, 6, 8, 10, 11, 12, 13, 14
ERROR_CODE_VECTORS = frozenset([8, 10, 11, 12, 13, 14, 17, 21, 29, 30])
RF_IF, RF_TF, RF_NT, RF_RF, RF_VM, RF_AC = 1 << 9, 1 << 8, 1 << 14, 1 << 16, 1 << 17, 1 << 18


@dataclass(frozen=True, slots=True)
class Event:
    """What to deliver: an exception, a software `int`, or an external interrupt."""

    vector: int
    error: int | None = None
    software: bool = False  # int n / int3 / into: the gate's DPL is checked against CPL
    external: bool = False  # an injected interrupt (sets EXT in error codes it causes)


class Fault(Exception):
    """An exception raised while delivering another one."""

    def __init__(self, vector: int, error: int | None = 0) -> None:
        super().__init__(vector, error)
        self.vector, self.error = vector, error


class TripleFault(Exception):
    """Delivery of a double fault failed: the CPU shuts down."""


class Unsupported(Exception):
    """A delivery the soft CPU does not implement (task gates, virtual-8086 mode)."""


def deliver(regs: Regs, ctx: Context, acc: GuestAccess, event: Event) -> None:
    """Deliver `event`; regs and ctx (saved) are updated, the caller restores ctx."""
    try:
        _deliver_once(regs, ctx, acc, event)
    except Fault as f:
        if event.vector == DF and not event.software:
            raise TripleFault from f
        is_exception = event.vector < 32 and not event.software and not event.external
        nested = Event(DF, 0) if is_exception else Event(f.vector, f.error)
        deliver(regs, ctx, acc, nested)


def _deliver_once(regs: Regs, ctx: Context, acc: GuestAccess, ev: Event) -> None:
    if not ctx.cr(0) & CR0_PE:
        _deliver_real(regs, ctx, acc, ev)
    elif regs.rflags & RF_VM:
        raise Unsupported("interrupt in virtual-8086 mode")
    else:
        _deliver_protected(regs, ctx, acc, ev, long_mode=bool(ctx.efer & EFER_LMA))


def _read(acc: GuestAccess, va: int, fmt: str) -> tuple[int, ...]:
    try:
        return struct.unpack(fmt, acc.read(va, struct.calcsize(fmt)))
    except XenError as e:
        raise Fault(PF, 0) from e


def _push(acc: GuestAccess, va: int, data: bytes) -> None:
    try:
        acc.write(va, data)
    except XenError as e:
        raise Fault(PF, 2) from e


def _descriptor(ctx: Context, acc: GuestAccess, selector: int) -> Descriptor:
    if selector & ~3 == 0:
        raise Fault(GP, 0)
    table = ctx.seg(SEG_LDT if selector & 4 else SEG_GDT)
    index = selector & ~7
    if index + 7 > table.limit:
        raise Fault(GP, selector & ~3)
    return Descriptor.parse(_read(acc, table.base + index, "<Q")[0])


def _load(cache: SegmentCache, selector: int, desc: Descriptor) -> None:
    cache.selector, cache.base, cache.limit, cache.flags = selector, desc.base, desc.limit, \
        desc.flags | (1 << 8)  # accessed


def _deliver_protected(regs: Regs, ctx: Context, acc: GuestAccess, ev: Event,
                       long_mode: bool) -> None:
    ext = 1 if ev.external else 0
    gate_size = 16 if long_mode else 8
    idt = ctx.seg(SEG_IDT)
    if ev.vector * gate_size + gate_size - 1 > idt.limit:
        raise Fault(GP, ev.vector * 8 + 2 + ext)
    if long_mode:
        lo, hi = _read(acc, idt.base + ev.vector * 16, "<QQ")
        offset = (lo & 0xFFFF) | (lo >> 48) << 16 | (hi & 0xFFFF_FFFF) << 32
    else:
        (lo,) = _read(acc, idt.base + ev.vector * 8, "<Q")
        offset = (lo & 0xFFFF) | (lo >> 48) << 16
    selector, ist, attr = lo >> 16 & 0xFFFF, lo >> 32 & 7, lo >> 40 & 0xFF
    gate_type, gate_dpl = attr & 0xF, attr >> 5 & 3
    valid = (0xE, 0xF) if long_mode else (0x6, 0x7, 0xE, 0xF)
    if gate_type == 0x5 and not long_mode:
        raise Unsupported("task gate in the IDT")
    if gate_type not in valid:
        raise Fault(GP, ev.vector * 8 + 2 + ext)
    cpl = ctx.hflags & 3
    if ev.software and gate_dpl < cpl:
        raise Fault(GP, ev.vector * 8 + 2)
    if not attr & 0x80:
        raise Fault(NP, ev.vector * 8 + 2 + ext)
    cs = _descriptor(ctx, acc, selector)
    if not cs.is_code or cs.dpl > cpl or (long_mode and (not cs.flags & DESC_L
                                                         or cs.flags & DESC_B)):
        raise Fault(GP, (selector & ~3) + ext)
    if not cs.present:
        raise Fault(NP, (selector & ~3) + ext)
    new_cpl = cpl if cs.type & 4 else cs.dpl  # conforming code keeps the CPL
    old_ss, old_rsp = ctx.seg(SEG_SS).selector, regs.rsp
    frame = [regs.rflags, ctx.seg(SEG_CS).selector, regs.rip]
    frame += [] if ev.error is None else [ev.error]
    tss = ctx.seg(SEG_TR)
    if long_mode:
        rsp = old_rsp
        if ist:
            rsp = _read(acc, tss.base + 0x24 + 8 * (ist - 1), "<Q")[0]
        elif new_cpl < cpl:
            rsp = _read(acc, tss.base + 4 + 8 * new_cpl, "<Q")[0]
        rsp &= ~0xF
        words = [old_ss, old_rsp, *frame]
        rsp = (rsp - 8 * len(words)) & 0xFFFF_FFFF_FFFF_FFFF
        _push(acc, rsp, struct.pack(f"<{len(words)}Q", *reversed(words)))
        if new_cpl < cpl:
            ss = ctx.seg(SEG_SS)
            ss.selector, ss.base, ss.limit, ss.flags = new_cpl, 0, 0, new_cpl << DESC_DPL_SHIFT
        regs.rsp = rsp
    else:
        _push_protected32(regs, ctx, acc, tss, new_cpl < cpl, new_cpl, frame, gate_type & 8)
    if gate_type & 1 == 0:  # interrupt gate
        regs.rflags &= ~RF_IF
    regs.rflags &= ~(RF_TF | RF_NT | RF_RF | RF_VM)
    _load(ctx.seg(SEG_CS), (selector & ~3) | new_cpl, cs)
    regs.rip = offset if gate_type & 8 else offset & 0xFFFF
    ctx.recompute_hflags(regs.rflags)


def _push_protected32(regs: Regs, ctx: Context, acc: GuestAccess, tss: SegmentCache,
                      switch: bool, new_cpl: int, frame: list[int], wide: int) -> None:
    ss = ctx.seg(SEG_SS)
    old = [ss.selector, regs.rsp & 0xFFFF_FFFF]
    if switch:
        esp, ss_sel = _read(acc, tss.base + 4 + 8 * new_cpl, "<II")
        ss_desc = _descriptor(ctx, acc, ss_sel & 0xFFFF)
        if ss_desc.dpl != new_cpl or ss_desc.is_code or not ss_desc.present:
            raise Fault(TS, ss_sel & ~3)
        _load(ss, (ss_sel & ~3) | new_cpl, ss_desc)
        frame = old + frame
    else:
        esp = regs.rsp
    size, fmt = (4, "I") if wide else (2, "H")
    mask = 0xFFFF_FFFF if ss.flags & DESC_B else 0xFFFF
    esp = (esp - size * len(frame)) & mask
    _push(acc, ss.base + esp, struct.pack(f"<{len(frame)}{fmt}",
                                          *(w & (0xFFFF_FFFF if wide else 0xFFFF)
                                            for w in reversed(frame))))
    regs.rsp = (regs.rsp & ~mask if not switch else 0) | esp


def _deliver_real(regs: Regs, ctx: Context, acc: GuestAccess, ev: Event) -> None:
    idt = ctx.seg(SEG_IDT)
    if ev.vector * 4 + 3 > idt.limit:
        raise Fault(GP, 0)
    ip, cs_sel = _read(acc, idt.base + ev.vector * 4, "<HH")
    ss, cs = ctx.seg(SEG_SS), ctx.seg(SEG_CS)
    sp = (regs.rsp - 6) & 0xFFFF
    _push(acc, ss.base + sp, struct.pack("<3H", regs.rip & 0xFFFF, cs.selector,
                                         regs.rflags & 0xFFFF))
    regs.rsp = (regs.rsp & ~0xFFFF) | sp
    regs.rflags &= ~(RF_IF | RF_TF | RF_AC | RF_RF)
    cs.selector, cs.base = cs_sel, cs_sel << 4
    regs.rip = ip
    ctx.recompute_hflags(regs.rflags)
