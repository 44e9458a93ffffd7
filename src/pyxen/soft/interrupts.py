"""Interrupt and exception delivery through the guest's IDT, as the CPU does it.

Unicorn reports every exception and `int n` to a hook instead of delivering it, and has no
way to inject an external interrupt, so the soft CPU delivers them here: the gate from the
IDT (64-bit gates with IST, 32-bit and 16-bit protected-mode gates, 32-bit task gates, the
real-mode IVT), the privilege checks, the stack switch through the TSS when the CPL changes,
the frame push, IF/TF/NT/RF clearing, and the new CS/SS loaded into the engine's hidden
segment state.

A fault while delivering is itself delivered as the SDM's table of exception classes says
(vol 3 §6.15, "Double Fault Exception"): serially after a benign event, as #DF after a
contributory fault or a #PF, as a triple fault after #DF (TripleFault; the caller reports
Exit.SHUTDOWN). The nested fault carries its own error code (EXT set when the first event was
not a software interrupt) and, for #PF, CR2; the architectural state is the one from before
the failed attempt, with rip moved back onto the instruction for `int n`/`int3`/`into`/ICEBP,
since a fault in their delivery is a fault *of* that instruction.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pyxen.domain.backend import Regs
from pyxen.domain.memory import GuestMemoryError
from pyxen.hv.guest_access import GuestAccess
from pyxen.hv.pagewalk import CR4_LA57, PageFault, translate

from . import native
from .cpustate import (
    CR0_PE,
    DESC_B,
    DESC_DPL_SHIFT,
    DESC_L,
    DESC_S,
    DESC_TYPE_SHIFT,
    EFER_LMA,
    SEG_CS,
    SEG_DS,
    SEG_ES,
    SEG_FS,
    SEG_GDT,
    SEG_GS,
    SEG_IDT,
    SEG_LDT,
    SEG_SS,
    SEG_TR,
    Context,
    Descriptor,
    SegmentCache,
)
from .memory import PhysicalRam

DE, DB, NMI, BP, OF, UD, NM, DF, TS, NP, SS, GP, PF = 0, 1, 2, 3, 4, 6, 7, 8, 10, 11, 12, 13, 14
ERROR_CODE_VECTORS = frozenset([8, 10, 11, 12, 13, 14, 17, 21, 29, 30])
CONTRIBUTORY = frozenset([DE, TS, NP, SS, GP])
RF_IF, RF_TF, RF_NT, RF_RF, RF_VM, RF_AC = 1 << 9, 1 << 8, 1 << 14, 1 << 16, 1 << 17, 1 << 18
PF_P, PF_W, PF_U = 1, 2, 4
CR0_TS, CR0_PG = 1 << 3, 1 << 31
M32, M64 = 0xFFFF_FFFF, 0xFFFF_FFFF_FFFF_FFFF
TSS32_MIN_LIMIT = 0x67  # a 32-bit TSS holds 104 bytes (SDM vol 3 §7.2.1)


@dataclass(frozen=True, slots=True)
class Event:
    """What to deliver: an exception, a software `int`, or an external interrupt."""

    vector: int
    error: int | None = None
    software: bool = False  # int n / int3 / into: the gate's DPL is checked against CPL
    external: bool = False  # an injected interrupt (sets EXT in error codes it causes)
    # The length of the instruction that raised it (int n: 2, int3/into/ICEBP: 1): regs.rip is
    # after that instruction, and a fault during delivery is reported at the instruction.
    length: int = 0


class Fault(Exception):
    """An exception raised while delivering another one."""

    def __init__(self, vector: int, error: int | None = 0, address: int | None = None,
                 committed: bool = False) -> None:
        super().__init__(vector, error)
        self.vector, self.error = vector, error
        self.address = address  # #PF: the linear address that faulted (CR2)
        self.committed = committed  # raised after a task switch: the new task's state stays


class TripleFault(Exception):
    """Delivery of a double fault failed: the CPU shuts down."""


class Unsupported(Exception):
    """A delivery the soft CPU does not implement (virtual-8086 mode, 16-bit task switches)."""


def deliver(regs: Regs, ctx: Context, acc: GuestAccess, event: Event) -> None:
    """Deliver `event`; regs and ctx (saved) are updated, the caller restores ctx. (An
    external interrupt may take delivered_natively first.)"""
    try:
        _deliver_once(regs, ctx, acc, event)
    except Fault as f:
        # Each path below changes regs and ctx only after its last check has passed (and a
        # task switch marks the faults after its commit point), so the state is as it was.
        if not f.committed and event.length:
            regs.rip = (regs.rip - event.length) & (M64 if _cs64(ctx) else M32)
        if f.vector == PF and f.address is not None:
            ctx.set_cr(2, f.address)  # CR2 is loaded even when the #PF becomes a #DF
        deliver(regs, ctx, acc, _nested(event, f))


def delivered_natively(regs: Regs, ctx: Context, ram: PhysicalRam, vector: int) -> bool:
    """The common case of an external interrupt, in C (native_deliver.c computes what
    _deliver_protected does for it, or declines having changed nothing). Tried before a
    GuestAccess is made: the C walks the page tables itself."""
    if (where := ram.native_window()) is None:
        return False
    written = native.deliver_external(regs, ctx.env_address(), where, vector)
    if written is None:
        return False
    for gpa, length in written:
        ram.note_write(gpa, length)  # the frame is dirty memory for live migration
    ctx.recompute_hflags(regs.rflags)
    return True


def _nested(first: Event, second: Fault) -> Event:
    """The event the CPU delivers when `second` interrupts the delivery of `first`."""
    if first.software or first.external:
        kind = "benign"
    elif first.vector == DF:
        kind = "df"
    elif first.vector == PF:
        kind = "pf"
    else:
        kind = "contributory" if first.vector in CONTRIBUTORY else "benign"
    escalates = second.vector in CONTRIBUTORY or second.vector == PF
    if kind == "df" and escalates:
        raise TripleFault(f"vector {second.vector} while delivering #DF")
    if escalates and (kind == "pf" or (kind == "contributory" and second.vector != PF)):
        return Event(DF, 0)
    return Event(second.vector, second.error)


def _cs64(ctx: Context) -> bool:
    return bool(ctx.efer & EFER_LMA and ctx.seg(SEG_CS).flags & DESC_L)


def _deliver_once(regs: Regs, ctx: Context, acc: GuestAccess, ev: Event) -> None:
    if not ctx.cr(0) & CR0_PE:
        _deliver_real(regs, ctx, acc, ev)
    elif regs.rflags & RF_VM:
        raise Unsupported("interrupt in virtual-8086 mode")
    else:
        _deliver_protected(regs, ctx, acc, ev, long_mode=bool(ctx.efer & EFER_LMA))


# --- guest memory, with the faults the CPU would raise -----------------------------------------
def _canonical(ctx: Context, va: int) -> bool:
    if not ctx.efer & EFER_LMA:
        return True
    bits = 57 if ctx.cr(4) & CR4_LA57 else 48
    top = (va & M64) >> (bits - 1)
    return top in (0, (1 << (65 - bits)) - 1)


def _page(acc: GuestAccess, va: int, size: int, write: bool, user: bool,
          fault_at: int | None = None) -> int:
    """The memfd offset of [va, va+size) (within one page), or the #PF the access raises
    (at `fault_at`, the access that touches the page first, if not va)."""
    va &= M64
    ps = acc.paging
    if ps.paging and ps.efer & EFER_LMA:
        bits = 57 if ps.cr4 & CR4_LA57 else 48
        if va >> (bits - 1) not in (0, (1 << (65 - bits)) - 1):
            raise Fault(GP, 0)
    try:
        gpa = translate(acc.mem, acc.paging, va, write)
    except PageFault:
        try:
            translate(acc.mem, acc.paging, va, False)
            present = PF_P
        except PageFault:
            present = 0
        raise Fault(PF, present | (PF_W if write else 0) | (PF_U if user else 0),
                    address=va if fault_at is None else fault_at & M64) from None
    try:
        return acc.mem.check_populated(gpa, size)
    except GuestMemoryError as e:
        raise Unsupported(f"event delivery touches {va:#x} (gpa {gpa:#x}), which is not RAM") \
            from e


def _read(acc: GuestAccess, va: int, fmt: str) -> tuple[int, ...]:
    """An implicit supervisor-mode read (IDT, GDT, LDT, TSS)."""
    size = struct.calcsize(fmt)
    if (va & 0xFFF) + size <= 4096:  # the usual case: one page
        return struct.unpack_from(fmt, acc.mem.map, _page(acc, va, size, False, False))
    out = bytearray()
    while len(out) < size:
        at = va + len(out)
        n = min(size - len(out), 4096 - (at & 0xFFF))
        offset = _page(acc, at, n, write=False, user=False)
        out += acc.mem.map[offset : offset + n]
    return struct.unpack(fmt, out)


def _write(acc: GuestAccess, va: int, data: bytes, user: bool = False) -> None:
    """Store `data`, after checking every page (so nothing is written if one faults)."""
    pieces, pos = [], 0
    while pos < len(data):
        at = va + pos
        n = min(len(data) - pos, 4096 - (at & 0xFFF))
        pieces.append((_page(acc, at, n, write=True, user=user), pos, n))
        pos += n
    _store(acc, pieces, data)


def _store(acc: GuestAccess, pieces: list[tuple[int, int, int]], data: bytes) -> None:
    m = acc.mem.map
    for offset, pos, n in pieces:
        m[offset : offset + n] = data[pos : pos + n]
        acc.mem.note_write(offset, n)  # the frame is dirty memory for live migration


def _push(acc: GuestAccess, top: int, words: list[int], size: int, user: bool,
          mask: int = M64) -> int:
    """Push `words` in order below linear address `top` (the first one highest), as the CPU
    does one at a time: a #PF names the first word that cannot be written. Each page is
    walked once. The new bottom."""
    fmt = {2: "H", 4: "I", 8: "Q"}[size]
    n = len(words)
    bottom = top - size * n
    if bottom < 0 or top > mask + 1:  # the frame wraps around the address space
        raise Unsupported(f"an interrupt frame that wraps around the address space at {top:#x}")
    data = struct.pack(f"<{n}{fmt}", *(w & ((1 << 8 * size) - 1) for w in reversed(words)))
    pieces, high = [], top
    while high > bottom:  # page by page, from the top: the order the pushes touch them
        low = max((high - 1) & ~0xFFF, bottom)
        first = bottom + (high - 1 - bottom) // size * size  # the first word to touch it
        offset = _page(acc, low, high - low, True, user, fault_at=max(first, low))
        pieces.append((offset, low - bottom, high - low))
        high = low
    _store(acc, pieces, data)
    return bottom & mask


# --- descriptors --------------------------------------------------------------------------------
def _descriptor(ctx: Context, acc: GuestAccess, selector: int, vector: int = GP,
                ext: int = 0) -> Descriptor:
    """The descriptor `selector` names; #`vector`(selector) if it is null or past the table."""
    if selector & ~3 == 0:
        raise Fault(vector, ext)
    table = ctx.seg(SEG_LDT if selector & 4 else SEG_GDT)
    index = selector & ~7
    if index + 7 > table.limit:
        raise Fault(vector, (selector & ~3) | ext)
    return Descriptor.parse(_read(acc, table.base + index, "<Q")[0])


def _load(cache: SegmentCache, selector: int, desc: Descriptor) -> None:
    cache.selector, cache.base, cache.limit, cache.flags = selector, desc.base, desc.limit, \
        desc.flags | (1 << 8)  # accessed


def _tss_field(ctx: Context, offset: int, size: int, ext: int) -> int:
    """Check that TSS bytes [offset, offset+size) are inside TR's limit, or raise #TS."""
    tr = ctx.seg(SEG_TR)
    if offset + size - 1 > tr.limit:
        raise Fault(TS, (tr.selector & ~3) | ext)
    return tr.base + offset


# --- protected mode and long mode ---------------------------------------------------------------
def _deliver_protected(regs: Regs, ctx: Context, acc: GuestAccess, ev: Event,
                       long_mode: bool) -> None:
    ext = 0 if ev.software else 1
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
    valid = (0xE, 0xF) if long_mode else (0x5, 0x6, 0x7, 0xE, 0xF)
    if gate_type not in valid or attr & 0x10:
        raise Fault(GP, ev.vector * 8 + 2 + ext)
    cpl = ctx.hflags & 3
    if ev.software and gate_dpl < cpl:
        raise Fault(GP, ev.vector * 8 + 2)
    if not attr & 0x80:
        raise Fault(NP, ev.vector * 8 + 2 + ext)
    if gate_type == 0x5:
        _task_gate(regs, ctx, acc, ev, selector, ext)
        return
    cs = _descriptor(ctx, acc, selector, GP, ext)
    if not cs.is_code or cs.dpl > cpl or (long_mode and (not cs.flags & DESC_L
                                                         or cs.flags & DESC_B)):
        raise Fault(GP, (selector & ~3) | ext)
    if not cs.present:
        raise Fault(NP, (selector & ~3) | ext)
    new_cpl = cpl if cs.type & 4 else cs.dpl  # conforming code keeps the CPL
    frame = [regs.rip, ctx.seg(SEG_CS).selector, regs.rflags]
    frame += [] if ev.error is None else [ev.error]
    if long_mode:
        _push_long(regs, ctx, acc, ist, cpl, new_cpl, frame, ext)
    else:
        _push_protected32(regs, ctx, acc, new_cpl, frame, gate_type & 8, ext)
    if gate_type & 1 == 0:  # interrupt gate
        regs.rflags &= ~RF_IF
    regs.rflags &= ~(RF_TF | RF_NT | RF_RF | RF_VM)
    _load(ctx.seg(SEG_CS), (selector & ~3) | new_cpl, cs)
    regs.rip = offset if gate_type & 8 else offset & 0xFFFF
    ctx.recompute_hflags(regs.rflags)


def _push_long(regs: Regs, ctx: Context, acc: GuestAccess, ist: int, cpl: int, new_cpl: int,
               frame: list[int], ext: int) -> None:
    """The 64-bit frame (SS, RSP, RFLAGS, CS, RIP[, error]) on the IST, RSPn or current stack."""
    old_ss, rsp = ctx.seg(SEG_SS).selector, regs.rsp
    if ist:
        rsp = _read(acc, _tss_field(ctx, 0x24 + 8 * (ist - 1), 8, ext), "<Q")[0]
    elif new_cpl < cpl:
        rsp = _read(acc, _tss_field(ctx, 4 + 8 * new_cpl, 8, ext), "<Q")[0]
    rsp &= ~0xF
    words = [old_ss, regs.rsp, *reversed(frame[:3]), *frame[3:]]
    if not (_canonical(ctx, rsp - 1) and _canonical(ctx, rsp - 8 * len(words))):
        raise Fault(SS, ext)
    regs.rsp = _push(acc, rsp, words, 8, user=new_cpl == 3)
    if new_cpl < cpl:
        ss = ctx.seg(SEG_SS)
        ss.selector, ss.base, ss.limit, ss.flags = new_cpl, 0, 0, new_cpl << DESC_DPL_SHIFT


def _new_stack32(ctx: Context, acc: GuestAccess, new_cpl: int, ext: int) -> tuple[int, int,
                                                                                  Descriptor]:
    """SS:ESP for `new_cpl` from the 32-bit (or 16-bit) TSS, with the SDM's checks."""
    tr = ctx.seg(SEG_TR)
    if tr.flags >> DESC_TYPE_SHIFT & 8:  # 32-bit TSS: ESPn at 4+8n, SSn at 8+8n
        at = _tss_field(ctx, 4 + 8 * new_cpl, 6, ext)
        esp, ss_sel = _read(acc, at, "<IH")
    else:  # 16-bit TSS: SPn at 2+4n, SSn at 4+4n
        at = _tss_field(ctx, 2 + 4 * new_cpl, 4, ext)
        esp, ss_sel = _read(acc, at, "<HH")
    if ss_sel & ~3 == 0:
        raise Fault(TS, ext)
    ss_desc = _descriptor(ctx, acc, ss_sel, TS, ext)
    if (ss_sel & 3 != new_cpl or ss_desc.dpl != new_cpl or not ss_desc.flags & DESC_S
            or ss_desc.is_code or not ss_desc.type & 2):
        raise Fault(TS, (ss_sel & ~3) | ext)
    if not ss_desc.present:
        raise Fault(SS, (ss_sel & ~3) | ext)
    return esp, ss_sel, ss_desc


def _push_protected32(regs: Regs, ctx: Context, acc: GuestAccess, new_cpl: int,
                      frame: list[int], wide: int, ext: int) -> None:
    ss = ctx.seg(SEG_SS)
    switch = new_cpl < ctx.hflags & 3
    words = [frame[2], frame[1], frame[0], *frame[3:]]  # EFLAGS, CS, EIP[, error]
    if switch:
        esp, ss_sel, ss_desc = _new_stack32(ctx, acc, new_cpl, ext)
        words = [ss.selector, regs.rsp & M32, *words]
        base, big = ss_desc.base, bool(ss_desc.flags & DESC_B)
    else:
        esp, base, big = regs.rsp, ss.base, bool(ss.flags & DESC_B)
    mask = M32 if big else 0xFFFF
    size = 4 if wide else 2
    # The frame's offsets wrap inside the stack segment; its linear addresses do not cross a
    # page at the wrap in practice, so the push is done on linear addresses from base + esp.
    bottom = (esp - size * len(words)) & mask
    _push(acc, (base + bottom + size * len(words)) & M32, words, size, user=new_cpl == 3,
          mask=M32)
    if switch:
        _load(ss, (ss_sel & ~3) | new_cpl, ss_desc)
        regs.rsp = bottom
    else:
        regs.rsp = (regs.rsp & ~mask) | bottom


# --- 32-bit task switch through a task gate (SDM vol 3 §7.3) -----------------------------------
TSS32 = struct.Struct("<I 4x 4x 4x 4x 4x 4x I I I 8I 6I I")  # link .. CR3 EIP EFLAGS GPRs segs LDT
GPR_ORDER = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi")
SEG_ORDER = (SEG_ES, SEG_CS, SEG_SS, SEG_DS, SEG_FS, SEG_GS)
TSS_BUSY = 2  # the busy bit in a TSS descriptor's type


def _task_gate(regs: Regs, ctx: Context, acc: GuestAccess, ev: Event, selector: int,
               ext: int) -> None:
    """Switch to the task the gate names, nesting it under the current one, then push the
    error code on the new task's stack."""
    gdt, tr = ctx.seg(SEG_GDT), ctx.seg(SEG_TR)
    index = selector & ~7
    if selector & 4 or index + 7 > gdt.limit or index == 0:
        raise Fault(GP, (selector & ~3) | ext)
    (raw,) = _read(acc, gdt.base + index, "<Q")
    new = Descriptor.parse(raw)
    if new.flags & DESC_S or new.type not in (0x1, 0x3, 0x9, 0xB):
        raise Fault(GP, (selector & ~3) | ext)
    if new.type & TSS_BUSY:
        raise Fault(GP, (selector & ~3) | ext)
    if not new.present:
        raise Fault(NP, (selector & ~3) | ext)
    if not new.type & 8 or not tr.flags >> DESC_TYPE_SHIFT & 8:
        raise Unsupported("task switch to or from a 16-bit TSS")
    if new.limit < TSS32_MIN_LIMIT:
        raise Fault(TS, (selector & ~3) | ext)
    if tr.limit < TSS32_MIN_LIMIT:
        raise Fault(TS, (tr.selector & ~3) | ext)
    # Read the new task's state and write the old one's with the old task's page tables.
    (_, cr3, eip, eflags, *rest) = TSS32.unpack_from(bytes(_read(acc, new.base, "<104B")))
    gprs, sels, ldt = rest[:8], rest[8:14], rest[14] & 0xFFFF
    old = [getattr(regs, r) & M32 for r in GPR_ORDER]
    old_sels = [ctx.seg(s).selector & 0xFFFF for s in SEG_ORDER]
    _write(acc, tr.base + 0x20, struct.pack("<10I6I", regs.rip & M32, regs.rflags & M32, *old,
                                            *old_sels))
    _write(acc, new.base, struct.pack("<H", tr.selector & 0xFFFF))  # back link
    _write(acc, gdt.base + index + 5, bytes([raw >> 40 & 0xFF | TSS_BUSY]))  # new busy
    if eflags & RF_VM:
        raise Unsupported("task switch into virtual-8086 mode")
    # Commit: from here on a fault belongs to the new task (SDM §7.3, step 12 onwards).
    _load(tr, selector & ~3, Descriptor.parse(raw | TSS_BUSY << 40))
    ctx.set_cr(0, ctx.cr(0) | CR0_TS)
    if ctx.cr(0) & CR0_PG:
        ctx.set_cr(3, cr3)
    for name, value in zip(GPR_ORDER, gprs, strict=True):
        setattr(regs, name, value)
    regs.rip, regs.rflags = eip, (eflags | RF_NT | 2)
    for seg, sel in zip(SEG_ORDER, sels, strict=True):
        ctx.seg(seg).selector = sel & 0xFFFF
    try:
        _load_task_segments(ctx, acc, ldt, [s & 0xFFFF for s in sels], ext)
        if ev.error is not None:
            ss = ctx.seg(SEG_SS)
            size = 4 if ctx.seg(SEG_CS).flags & DESC_B else 2
            mask = M32 if ss.flags & DESC_B else 0xFFFF
            bottom = (regs.rsp - size) & mask
            _push(acc, (ss.base + bottom + size) & M32, [ev.error], size,
                  user=ctx.hflags & 3 == 3, mask=M32)
            regs.rsp = (regs.rsp & ~mask) | bottom
        if regs.rip > ctx.seg(SEG_CS).limit:
            raise Fault(GP, ext)
    except Fault as f:
        f.committed = True
        raise
    finally:
        ctx.recompute_hflags(regs.rflags)


def _load_task_segments(ctx: Context, acc: GuestAccess, ldt: int, sels: list[int], ext: int) -> None:
    """LDTR, then CS, SS and the data segments from the new TSS, each checked (#TS)."""
    ldtr = ctx.seg(SEG_LDT)
    if ldt & ~3:
        if ldt & 4:
            raise Fault(TS, (ldt & ~3) | ext)
        desc = _descriptor(ctx, acc, ldt, TS, ext)
        if desc.flags & DESC_S or desc.type != 2:
            raise Fault(TS, (ldt & ~3) | ext)
        if not desc.present:
            raise Fault(TS, (ldt & ~3) | ext)
        _load(ldtr, ldt, desc)
    else:
        ldtr.selector, ldtr.base, ldtr.limit, ldtr.flags = 0, 0, 0, 0
    es, cs_sel, ss_sel, ds, fs, gs = sels
    cpl = cs_sel & 3
    cs = _descriptor(ctx, acc, cs_sel, TS, ext)
    if not cs.is_code or (cs.dpl != cpl if not cs.type & 4 else cs.dpl > cpl):
        raise Fault(TS, (cs_sel & ~3) | ext)
    if not cs.present:
        raise Fault(NP, (cs_sel & ~3) | ext)
    ss = _descriptor(ctx, acc, ss_sel, TS, ext)
    if (ss_sel & 3 != cpl or ss.dpl != cpl or not ss.flags & DESC_S or ss.is_code
            or not ss.type & 2):
        raise Fault(TS, (ss_sel & ~3) | ext)
    if not ss.present:
        raise Fault(SS, (ss_sel & ~3) | ext)
    _load(ctx.seg(SEG_CS), cs_sel, cs)
    _load(ctx.seg(SEG_SS), ss_sel, ss)
    for seg, sel in ((SEG_ES, es), (SEG_DS, ds), (SEG_FS, fs), (SEG_GS, gs)):
        cache = ctx.seg(seg)
        if sel & ~3 == 0:
            cache.selector, cache.base, cache.limit, cache.flags = sel, 0, 0, 0
            continue
        d = _descriptor(ctx, acc, sel, TS, ext)
        readable = d.flags & DESC_S and (not d.is_code or d.type & 2)
        if not readable or (not d.is_code or not d.type & 4) and d.dpl < max(cpl, sel & 3):
            raise Fault(TS, (sel & ~3) | ext)
        if not d.present:
            raise Fault(NP, (sel & ~3) | ext)
        _load(cache, sel, d)


# --- real mode -----------------------------------------------------------------------------------
def _deliver_real(regs: Regs, ctx: Context, acc: GuestAccess, ev: Event) -> None:
    idt = ctx.seg(SEG_IDT)
    if ev.vector * 4 + 3 > idt.limit:
        raise Fault(GP, 0)
    ip, cs_sel = _read(acc, idt.base + ev.vector * 4, "<HH")
    ss, cs = ctx.seg(SEG_SS), ctx.seg(SEG_CS)
    sp = (regs.rsp - 6) & 0xFFFF
    _write(acc, ss.base + sp, struct.pack("<3H", regs.rip & 0xFFFF, cs.selector,
                                          regs.rflags & 0xFFFF))
    regs.rsp = (regs.rsp & ~0xFFFF) | sp
    regs.rflags &= ~(RF_IF | RF_TF | RF_AC | RF_RF)
    cs.selector, cs.base = cs_sel, cs_sel << 4
    regs.rip = ip
    ctx.recompute_hflags(regs.rflags)

