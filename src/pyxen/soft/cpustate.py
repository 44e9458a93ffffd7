"""The parts of the emulated CPU that Unicorn's register API cannot reach.

Unicorn (QEMU's TCG as a library) exposes general registers and control registers, but not
the hidden part of the segment registers, the CPU's mode flags (CPL, CS.L, CS.D, the
interrupt shadow), XCR0 or the pending exception's error code, and it never delivers interrupts
through the guest's IDT itself. All of these live in QEMU's `CPUX86State`, which
`uc_context_save/restore` copy as raw bytes. This module reads and writes that copy at
offsets that are *checked* against the loaded engine at start-up (`probe_layout`): if a
different Unicorn build lays the state out differently, the soft backend refuses to start
instead of corrupting a guest.
"""

from __future__ import annotations

import ctypes as C
from dataclasses import dataclass

from unicorn import UC_ARCH_X86, UC_HOOK_INTR, UC_MODE_64, Uc
from unicorn import x86_const as X
from unicorn.unicorn_py3.unicorn import uclib

from pyxen.domain.backend import Segment

# Offsets inside QEMU 5's CPUX86State (Unicorn 2.x), relative to its start.
ENV_EIP = 128
ENV_HFLAGS = 176
ENV_SEGS = 184  # ES, CS, SS, DS, FS, GS, then LDT, TR, GDT, IDT: 24 bytes each
ENV_CR = 424
ENV_EFER = 592
ENV_XCR0 = 4904  # uint64_t xcr0, with the MSR-backed state after the x87/SSE registers
ENV_DR = 5400  # dr[0]; error_code, exception_is_int, exception_next_eip precede it
# QEMU's "exception in flight" (int old_exception), after dr[8] and four breakpoint pointers.
# QEMU resets it when it delivers an exception itself; Unicorn hands exceptions to a hook
# instead, so pyxen must reset it after each delivery, or the next #PF becomes a #DF.
ENV_OLD_EXCEPTION = ENV_DR + 96
# QEMU's SVM intercept bitmaps follow it (uint64 intercept, uint16 intercept_cr_read,
# uint16 intercept_cr_write). With HF_GUEST set, a CR write whose bit is set here becomes
# EXCP_VMEXIT + SVM_EXIT_WRITE_CR0 + n at the instruction, before it changes anything: the
# only way to see a CR4 write, which QEMU 5 accepts whatever CPUID offers.
ENV_INTERCEPT_CR_WRITE = ENV_DR + 130
EXCP_VMEXIT_WRITE_CR4 = 0x100 + 0x14
# With HF_GUEST set, QEMU's triple-fault check (an exception raised while it records a #DF in
# flight) becomes EXCP_VMEXIT + SVM_EXIT_SHUTDOWN at the instruction, the record cleared.
# pyxen delivers every exception itself (a fault within a fault included), so that record
# can only be a stale one: the vCPU runs the instruction again.
EXCP_VMEXIT_SHUTDOWN = 0x100 + 0x7F
SEG_ES, SEG_CS, SEG_SS, SEG_DS, SEG_FS, SEG_GS, SEG_LDT, SEG_TR, SEG_GDT, SEG_IDT = range(10)

# QEMU's hflags bits.
HF_CPL = 3
HF_INHIBIT_IRQ = 1 << 3
HF_CS32 = 1 << 4
HF_SS32 = 1 << 5
HF_ADDSEG = 1 << 6
HF_PE = 1 << 7
HF_LMA = 1 << 14
HF_CS64 = 1 << 15
HF_VM = 1 << 17
HF_GUEST = 1 << 21  # "in an SVM guest": QEMU then checks the intercept bitmaps

# QEMU's segment-cache flags: the descriptor's high dword.
DESC_TYPE_SHIFT = 8
DESC_S = 1 << 12
DESC_DPL_SHIFT = 13
DESC_P = 1 << 15
DESC_AVL = 1 << 20
DESC_L = 1 << 21
DESC_B = 1 << 22
DESC_G = 1 << 23

CR0_PE = 1
EFER_LMA = 1 << 10
RFLAGS_VM = 1 << 17


class SegmentCache(C.Structure):
    _fields_ = [("selector", C.c_uint32), ("_pad", C.c_uint32), ("base", C.c_uint64),
                ("limit", C.c_uint32), ("flags", C.c_uint32)]


class LayoutError(RuntimeError):
    """The loaded Unicorn does not keep CPU state where pyxen expects it."""


def probe_layout() -> int:
    """The context header size, after checking every offset this module relies on."""
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    ctx = Context(uc, header=0)
    marks = {X.UC_X86_REG_RAX: 0x5A5A_1111_2222_3333, X.UC_X86_REG_RIP: 0x5A5A_4444_5555_6666,
             X.UC_X86_REG_CR3: 0x0123_4000, X.UC_X86_REG_DR0: 0x0ABC_DEF0_1234_5678}
    for reg, value in marks.items():
        uc.reg_write(reg, value)
    raw = ctx.save_raw()
    header = raw.find(marks[X.UC_X86_REG_RAX].to_bytes(8, "little"))
    expect = {X.UC_X86_REG_RIP: ENV_EIP, X.UC_X86_REG_CR3: ENV_CR + 24, X.UC_X86_REG_DR0: ENV_DR}
    for reg, offset in expect.items():
        at = header + offset
        if header < 0 or raw[at : at + 8] != marks[reg].to_bytes(8, "little"):
            raise LayoutError(f"unicorn {uc_version()}: unexpected CPU state layout")
    ctx.header = header
    ctx.save()
    if not ctx.hflags & HF_LMA or not ctx.efer & EFER_LMA:
        raise LayoutError(f"unicorn {uc_version()}: unexpected mode flags layout")
    if ctx.old_exception != -1 or _divide_error_in_flight(uc, ctx) != 0:
        raise LayoutError(f"unicorn {uc_version()}: unexpected exception state layout")
    if not _xcr0_round_trip(uc, ctx):
        raise LayoutError(f"unicorn {uc_version()}: unexpected XCR0 layout")
    if _cr4_write_intercepted(uc, ctx) != EXCP_VMEXIT_WRITE_CR4:
        raise LayoutError(f"unicorn {uc_version()}: unexpected intercept state layout")
    ctx.close()
    return header


def _cr4_write_intercepted(uc: Uc, ctx: Context) -> int | None:
    """Intercept CR4 writes, write CR4, and return what the interrupt hook saw."""
    ctx.save()
    ctx.intercept_cr4_writes()
    ctx.restore()
    seen = _interrupts_of(uc, b"\x0f\x22\xe0")  # mov %rax,%cr4
    return seen[0] if seen else None


def _xcr0_round_trip(uc: Uc, ctx: Context) -> bool:
    """XSETBV's value lands at ENV_XCR0, and a value written there is what XGETBV reads."""
    _interrupts_of(uc, b"\x31\xc9\xb8\x01\x00\x00\x00\x31\xd2\x0f\x01\xd1")  # xsetbv(1)
    ctx.save()
    if ctx.xcr0 != 1:
        return False
    ctx.xcr0 = 3
    ctx.restore()
    _interrupts_of(uc, b"\x31\xc9\x0f\x01\xd0")  # xor %ecx,%ecx; xgetbv
    return uc.reg_read(X.UC_X86_REG_RAX) == 3


def _divide_error_in_flight(uc: Uc, ctx: Context) -> int:
    """Raise #DE (contributory, so QEMU records it as in flight) and read the record back."""
    _interrupts_of(uc, b"\x31\xc9\xf7\xf1")  # xor %ecx,%ecx; div %ecx
    ctx.save()
    return ctx.old_exception


def _interrupts_of(uc: Uc, code: bytes) -> list[int]:
    """Run `code` at 0x1000 (mapped on first use) up to its first interrupt; the vectors."""
    if not any(begin <= 0x1000 <= end for begin, end, _ in uc.mem_regions()):
        uc.mem_map(0x1000, 0x1000)
    uc.mem_write(0x1000, code)
    seen: list[int] = []
    handle = uc.hook_add(UC_HOOK_INTR, lambda u, n, _d: (seen.append(n), u.emu_stop()))
    uc.emu_start(0x1000, 0x1000 + len(code))
    uc.hook_del(handle)
    return seen


def uc_version() -> str:
    import unicorn

    return unicorn.__version__


class Context:
    """A saved copy of the engine's CPU state, editable in place, written back by restore()."""

    def __init__(self, uc: Uc, header: int) -> None:
        self.uc = uc
        self.header = header
        self.size = uclib.uc_context_size(uc._uch)
        self._ptr = C.c_void_p()
        if uclib.uc_context_alloc(uc._uch, C.byref(self._ptr)):
            raise MemoryError("uc_context_alloc failed")

    def save_raw(self) -> bytes:
        self.save()
        return C.string_at(self._ptr.value, self.size)

    def save(self) -> None:
        uclib.uc_context_save(self.uc._uch, self._ptr)

    def restore(self) -> None:
        uclib.uc_context_restore(self.uc._uch, self._ptr)

    def env_address(self) -> int:
        """Where the saved CPUX86State starts (the offsets above are relative to it)."""
        return self._ptr.value + self.header  # type: ignore[operator]

    def _at(self, offset: int) -> int:
        return self._ptr.value + self.header + offset  # type: ignore[operator]

    @property
    def hflags(self) -> int:
        return C.c_uint32.from_address(self._at(ENV_HFLAGS)).value

    @hflags.setter
    def hflags(self, value: int) -> None:
        C.c_uint32.from_address(self._at(ENV_HFLAGS)).value = value

    @property
    def efer(self) -> int:
        return C.c_uint64.from_address(self._at(ENV_EFER)).value

    @efer.setter
    def efer(self, value: int) -> None:
        C.c_uint64.from_address(self._at(ENV_EFER)).value = value

    @property
    def xcr0(self) -> int:
        return C.c_uint64.from_address(self._at(ENV_XCR0)).value

    @xcr0.setter
    def xcr0(self, value: int) -> None:
        C.c_uint64.from_address(self._at(ENV_XCR0)).value = value

    def cr(self, n: int) -> int:
        return C.c_uint64.from_address(self._at(ENV_CR + 8 * n)).value

    def set_cr(self, n: int, value: int) -> None:
        C.c_uint64.from_address(self._at(ENV_CR + 8 * n)).value = value

    @property
    def old_exception(self) -> int:
        return C.c_int32.from_address(self._at(ENV_OLD_EXCEPTION)).value

    @old_exception.setter
    def old_exception(self, value: int) -> None:
        C.c_int32.from_address(self._at(ENV_OLD_EXCEPTION)).value = value

    def intercept_cr4_writes(self) -> None:
        """Make a guest's CR4 writes reach the interrupt hook (EXCP_VMEXIT_WRITE_CR4)."""
        self.hflags = self.hflags | HF_GUEST
        C.c_uint16.from_address(self._at(ENV_INTERCEPT_CR_WRITE)).value = 1 << 4

    def seg(self, index: int) -> SegmentCache:
        return SegmentCache.from_address(self._at(ENV_SEGS + 24 * index))

    def pending_exception(self) -> tuple[int, bool, int]:
        """(error code, raised by an `int` instruction, address after that instruction)."""
        error = C.c_int32.from_address(self._at(ENV_DR - 16)).value
        is_int = C.c_int32.from_address(self._at(ENV_DR - 12)).value
        next_eip = C.c_uint64.from_address(self._at(ENV_DR - 8)).value
        return error & 0xFFFF_FFFF, bool(is_int), next_eip

    def recompute_hflags(self, rflags: int) -> None:
        """QEMU's mode flags from the segment caches and control registers, as a segment load
        would set them (cpu_x86_load_seg_cache)."""
        cs, ss = self.seg(SEG_CS), self.seg(SEG_SS)
        hf = self.hflags & ~(HF_CPL | HF_INHIBIT_IRQ | HF_CS32 | HF_SS32 | HF_ADDSEG | HF_PE
                             | HF_LMA | HF_CS64 | HF_VM)
        pe = bool(self.cr(0) & CR0_PE)
        if pe:
            hf |= HF_PE | (ss.flags >> DESC_DPL_SHIFT & 3)
        if self.efer & EFER_LMA:
            hf |= HF_LMA
        if hf & HF_LMA and cs.flags & DESC_L:
            hf |= HF_CS32 | HF_SS32 | HF_CS64
        else:
            hf |= (HF_CS32 if cs.flags & DESC_B else 0) | (HF_SS32 if ss.flags & DESC_B else 0)
            if not pe or rflags & RFLAGS_VM or not hf & HF_CS32 or self.seg(SEG_DS).base | self.seg(SEG_ES).base | ss.base:
                hf |= HF_ADDSEG
        if rflags & RFLAGS_VM:
            hf |= HF_VM
        self.hflags = hf

    def close(self) -> None:
        if self._ptr.value:
            uclib.uc_context_free(self._ptr)
            self._ptr = C.c_void_p()


@dataclass(frozen=True)
class Descriptor:
    """A code/data segment descriptor (8 bytes from a GDT), in QEMU's cache form."""

    base: int
    limit: int
    flags: int

    @classmethod
    def parse(cls, raw: int) -> Descriptor:
        lo, hi = raw & 0xFFFF_FFFF, raw >> 32
        base = (lo >> 16) | ((hi & 0xFF) << 16) | (hi & 0xFF00_0000)
        limit = (lo & 0xFFFF) | (hi & 0x000F_0000)
        if hi & DESC_G:
            limit = (limit << 12) | 0xFFF
        return cls(base, limit, hi & 0x00FF_FF00)

    @property
    def dpl(self) -> int:
        return self.flags >> DESC_DPL_SHIFT & 3

    @property
    def present(self) -> bool:
        return bool(self.flags & DESC_P)

    @property
    def type(self) -> int:
        return self.flags >> DESC_TYPE_SHIFT & 0xF

    @property
    def is_code(self) -> bool:
        return bool(self.flags & DESC_S) and bool(self.type & 8)


def to_segment(cache: SegmentCache, out: Segment) -> None:
    """QEMU's segment cache → KVM's struct kvm_segment layout."""
    f = cache.flags
    out.base, out.limit, out.selector = cache.base, cache.limit, cache.selector & 0xFFFF
    out.type = f >> DESC_TYPE_SHIFT & 0xF
    out.s, out.dpl, out.present = bool(f & DESC_S), f >> DESC_DPL_SHIFT & 3, bool(f & DESC_P)
    out.avl, out.l, out.db, out.g = bool(f & DESC_AVL), bool(f & DESC_L), bool(f & DESC_B), \
        bool(f & DESC_G)
    out.unusable = not out.present


def from_segment(seg: Segment, cache: SegmentCache) -> None:
    """KVM's struct kvm_segment → QEMU's segment cache."""
    cache.selector, cache.base, cache.limit = seg.selector, seg.base, seg.limit
    if seg.unusable:
        cache.flags = 0
        return
    cache.flags = (seg.type << DESC_TYPE_SHIFT | (DESC_S if seg.s else 0)
                   | seg.dpl << DESC_DPL_SHIFT | (DESC_P if seg.present else 0)
                   | (DESC_AVL if seg.avl else 0) | (DESC_L if seg.l else 0)
                   | (DESC_B if seg.db else 0) | (DESC_G if seg.g else 0))
