"""The local APIC, as Xen's vlapic gives one to an HVM/PVH vCPU: one model of its rules for
both vCPU backends.

Linux as a PVH guest needs it even though its timer and IPIs are Xen's (event channels): it
finds the APIC through the ACPI MADT, and without one it takes the "PIC mode" path, disables
SMP and never sets up its per-CPU Xen clock events; it starts its secondary CPUs with
INIT/SIPI through the ICR. The model covers what the SDM (vol 3 ch. 11) specifies for a
guest: the xAPIC register page (MMIO) and the x2APIC MSRs (0x800 + offset / 16, ICR as one
64-bit MSR, SELF_IPI), IA32_APIC_BASE (enable, x2APIC, BSP), IRR/ISR/TMR and the priority
rules (TPR, PPR: a vector is delivered only above the processor priority class), EOI, ESR,
the spurious-vector register's software enable, LVT masking, and the timer in one-shot,
periodic and TSC-deadline modes. Delivering a vector to the CPU and starting a CPU are the
caller's (the vCPU's) business: `pending_vector`/`acknowledge` around an injection, and the
`send_ipi` callback for the ICR.

Where it differs from hardware, as Xen's vlapic does: no APIC bus arbitration (lowest
priority goes to the first CPU of the destination set), no NMI/SMI watchdog LVTs firing, and
the timer counts at the crystal frequency CPUID leaf 0x15 announces (so Linux's
lapic_timer_period, computed from that leaf, is right).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from pyxen.domain.saved import Saved

# The core crystal clock (CPUID leaf 0x15's ECX): the APIC timer's input, and a multiple of
# 1 kHz since Linux takes ECX / 1000 as the crystal's kHz.
CRYSTAL_HZ = 1_000_000
APIC_BASE_MSR = 0x1B
APIC_BASE_BSP = 1 << 8
APIC_BASE_EXTD = 1 << 10  # x2APIC mode
APIC_BASE_ENABLE = 1 << 11
APIC_DEFAULT_BASE = 0xFEE0_0000
TSC_DEADLINE_MSR = 0x6E0
X2APIC_MSR_FIRST, X2APIC_MSR_LAST = 0x800, 0x8FF
APIC_PAGE = 0x1000

# Register offsets in the xAPIC page (x2APIC MSR = 0x800 + offset >> 4).
ID, VERSION, TPR, APR, PPR, EOI, RRD, LDR, DFR, SVR = (
    0x20, 0x30, 0x80, 0x90, 0xA0, 0xB0, 0xC0, 0xD0, 0xE0, 0xF0)
ISR, TMR, IRR, ESR = 0x100, 0x180, 0x200, 0x280
LVT_CMCI, ICR_LOW, ICR_HIGH = 0x2F0, 0x300, 0x310
LVT_TIMER, LVT_THERMAL, LVT_PMC, LVT_LINT0, LVT_LINT1, LVT_ERROR = (
    0x320, 0x330, 0x340, 0x350, 0x360, 0x370)
TIMER_INITIAL, TIMER_CURRENT, TIMER_DIVIDE = 0x380, 0x390, 0x3E0
SELF_IPI = 0x3F0  # x2APIC only
LVTS = (LVT_CMCI, LVT_TIMER, LVT_THERMAL, LVT_PMC, LVT_LINT0, LVT_LINT1, LVT_ERROR)

NR_LVT = 7
# Version register: version 0x14 (an integrated APIC), max LVT entry, EOI broadcast
# suppression not offered (no I/O APIC to suppress it for).
APIC_VERSION = 0x14 | (NR_LVT - 1) << 16
SVR_ENABLE = 1 << 8
LVT_MASKED = 1 << 16
LVT_DELIVERY_MODE = 0x700
TIMER_MODE_SHIFT = 17
TIMER_ONESHOT, TIMER_PERIODIC, TIMER_TSC_DEADLINE = 0, 1, 2
ESR_SEND_ILLEGAL_VECTOR, ESR_RECEIVE_ILLEGAL_VECTOR, ESR_ILLEGAL_REGISTER = 1 << 5, 1 << 6, 1 << 7

# ICR fields.
DM_FIXED, DM_LOWEST, DM_SMI, DM_NMI, DM_INIT, DM_STARTUP = 0, 1, 2, 4, 5, 6
ICR_DEST_LOGICAL = 1 << 11
ICR_LEVEL_ASSERT = 1 << 14
ICR_SHORTHAND_SHIFT = 18
SH_NONE, SH_SELF, SH_ALL, SH_OTHERS = 0, 1, 2, 3

# Writable bits of each LVT (vector, delivery mode, polarity, trigger, mask, timer mode).
LVT_WRITABLE = {LVT_TIMER: 0x700FF, LVT_CMCI: 0x107FF, LVT_THERMAL: 0x107FF,
                LVT_PMC: 0x107FF, LVT_LINT0: 0x1A7FF, LVT_LINT1: 0x1A7FF,
                LVT_ERROR: 0x100FF}


def apic_id(vcpu_index: int) -> int:
    """A vCPU's APIC ID: Xen numbers them vcpu_id * 2 (vlapic_reset; libxl's MADT agrees), and
    CPUID's initial APIC ID, the MADT and the APIC ID register all say the same."""
    return vcpu_index * 2


def x2apic_ldr(x2apic_id: int) -> int:
    """x2APIC logical ID (SDM §11.12.10.2): cluster in bits 31:16, a bit in 15:0."""
    return (x2apic_id >> 4) << 16 | 1 << (x2apic_id & 0xF)


@dataclass(frozen=True, slots=True)
class Ipi:
    """What an ICR write asks for, with the destination already resolved by shorthand."""

    source: int  # the sender's APIC ID
    mode: int  # DM_*
    vector: int
    shorthand: int
    destination: int
    logical: bool
    level_assert: bool


class Lapic:
    """One vCPU's local APIC. Thread-safe: the timer and other vCPUs raise interrupts while
    the owning vCPU reads and writes registers."""

    def __init__(self, index: int, now: Callable[[], int],
                 arm_timer: Callable[[int | None], None], send_ipi: Callable[[Ipi], None],
                 kick: Callable[[], None], tsc_to_ns: Callable[[int], int]) -> None:
        self.id = apic_id(index)
        self._bsp = index == 0
        self._now, self._arm, self._send_ipi, self._kick = now, arm_timer, send_ipi, kick
        self._tsc_to_ns = tsc_to_ns
        self._lock = threading.Lock()
        self.reset()

    # --- state ---------------------------------------------------------------------------
    def reset(self) -> None:
        """Power-on / INIT state (SDM §11.4.7.1): everything clear, LVTs masked, the APIC
        enabled in xAPIC mode at the default base but software-disabled (SVR)."""
        with self._lock:
            self.apic_base = APIC_DEFAULT_BASE | APIC_BASE_ENABLE | (
                APIC_BASE_BSP if self._bsp else 0)
            self.irr = self.isr = self.tmr = 0
            self.tpr = self.esr = self._esr_pending = 0
            self.ldr, self.dfr = 0, 0xFFFF_FFFF
            self.svr = 0xFF
            self.lvt = {reg: LVT_MASKED for reg in LVTS}
            self.icr = 0
            self.timer_initial = 0
            self.divide = 0
            self._timer_start = 0  # system time the count was loaded
            self._timer_deadline: int | None = None
            self.tsc_deadline = 0
        self._arm(None)

    # Registers a save carries (Xen's HVM_SAVE_CODE(LAPIC) and LAPIC_REGS in one), in
    # system time where they are times: the domain's clock continues across a restore.
    _SAVED = ("apic_base", "irr", "isr", "tmr", "tpr", "esr", "_esr_pending", "ldr", "dfr",
              "svr", "icr", "timer_initial", "divide", "_timer_start", "tsc_deadline")

    def save_state(self) -> dict[str, object]:
        with self._lock:
            state: dict[str, object] = {name: getattr(self, name) for name in self._SAVED}
            state["lvt"] = {str(reg): value for reg, value in self.lvt.items()}
            state["timer_deadline"] = self._timer_deadline
            return state

    def load_state(self, state: object) -> None:
        """A saved APIC (checked: ValueError names what does not fit), its timer re-armed."""
        saved = Saved(state, f"local APIC {self.id}")
        values = {name: saved.int(name) for name in self._SAVED}
        lvt = saved.sub("lvt")
        lvts = {reg: lvt.int(str(reg), hi=0xFFFF_FFFF) for reg in LVTS}
        deadline = saved.opt_int("timer_deadline")
        with self._lock:
            for name, value in values.items():
                setattr(self, name, value)
            self.lvt = lvts
            self._timer_deadline = deadline
        self._arm(deadline)

    @property
    def enabled(self) -> bool:
        """Hardware-enabled (IA32_APIC_BASE) and software-enabled (SVR)."""
        return bool(self.apic_base & APIC_BASE_ENABLE and self.svr & SVR_ENABLE)

    @property
    def x2apic(self) -> bool:
        return bool(self.apic_base & APIC_BASE_EXTD)

    @property
    def xapic_mmio_base(self) -> int | None:
        """The guest-physical page of the xAPIC registers, or None in x2APIC/disabled mode."""
        if self.apic_base & APIC_BASE_ENABLE and not self.x2apic:
            return self.apic_base & ~0xFFF & ((1 << 52) - 1)
        return None

    # --- interrupts ------------------------------------------------------------------------
    def accept(self, vector: int, level: bool = False) -> None:
        """An interrupt arrives (fixed delivery): set it in the IRR, and wake the vCPU.
        Vectors 0-15 are illegal (ESR). As Xen's vlapic_set_irq, a software-disabled APIC
        still records it; it is delivered once the guest enables the APIC."""
        with self._lock:
            if not self.apic_base & APIC_BASE_ENABLE:
                return
            if vector < 16:
                self._esr_pending |= ESR_RECEIVE_ILLEGAL_VECTOR
                return
            self.irr |= 1 << vector
            if level:
                self.tmr |= 1 << vector
            else:
                self.tmr &= ~(1 << vector)
        self._kick()

    def _ppr(self) -> int:
        isrv = self.isr.bit_length() - 1 if self.isr else 0
        return self.tpr & 0xFF if (self.tpr & 0xF0) >= (isrv & 0xF0) else isrv & 0xF0

    def pending_vector(self) -> int:
        """The vector to deliver now (above the processor priority), or 0."""
        with self._lock:
            if not self.irr or not self.enabled:
                return 0
            vector = self.irr.bit_length() - 1
            return vector if (vector & 0xF0) > (self._ppr() & 0xF0) else 0

    def acknowledge(self, vector: int) -> None:
        """The CPU took `vector` (INTA): it moves from the IRR to the ISR."""
        with self._lock:
            self.irr &= ~(1 << vector)
            self.isr |= 1 << vector

    def eoi(self) -> None:
        """End of the highest in-service interrupt."""
        with self._lock:
            if self.isr:
                self.isr &= ~(1 << (self.isr.bit_length() - 1))
        if self.irr:
            self._kick()  # something held back by the ISR may go now

    # --- registers -------------------------------------------------------------------------
    def read(self, offset: int) -> int | None:
        """A 32-bit register read (xAPIC offset); None for a register that does not exist."""
        with self._lock:
            return self._read(offset)

    def _read(self, offset: int) -> int | None:
        if offset == ID:
            return self.id if self.x2apic else self.id << 24
        if offset == VERSION:
            return APIC_VERSION
        if offset == TPR:
            return self.tpr
        if offset == PPR:
            return self._ppr()
        if offset == LDR:
            return x2apic_ldr(self.id) if self.x2apic else self.ldr
        if offset == DFR and not self.x2apic:
            return self.dfr
        if offset == SVR:
            return self.svr
        for base, bits in ((ISR, self.isr), (TMR, self.tmr), (IRR, self.irr)):
            if base <= offset < base + 0x80 and not offset & 0xF:
                return bits >> ((offset - base) >> 4) * 32 & 0xFFFF_FFFF
        if offset == ESR:
            return self.esr
        if offset in self.lvt:
            return self.lvt[offset]
        if offset == ICR_LOW:
            return self.icr & 0xFFFF_FFFF
        if offset == ICR_HIGH and not self.x2apic:
            return self.icr >> 32
        if offset == TIMER_INITIAL:
            return self.timer_initial
        if offset == TIMER_CURRENT:
            return self._timer_current()
        if offset == TIMER_DIVIDE:
            return self.divide
        if offset in (APR, RRD):
            return 0
        return None

    def write(self, offset: int, value: int) -> bool:
        """A 32-bit register write; False for a register that cannot be written."""
        value &= 0xFFFF_FFFF
        eoi = False
        with self._lock:
            if offset == EOI:
                eoi = True
            elif offset == TPR:
                self.tpr = value & 0xFF
            elif offset == LDR and not self.x2apic:
                self.ldr = value & 0xFF00_0000
            elif offset == DFR and not self.x2apic:
                self.dfr = value | 0x0FFF_FFFF
            elif offset == SVR:
                self.svr = value & 0x13FF
                if not value & SVR_ENABLE:  # software disable masks every LVT
                    for reg in self.lvt:
                        self.lvt[reg] |= LVT_MASKED
            elif offset == ESR:
                self.esr, self._esr_pending = self._esr_pending, 0
            elif offset in self.lvt:
                if not self.svr & SVR_ENABLE:
                    value |= LVT_MASKED
                old = self.lvt[offset]
                self.lvt[offset] = value & LVT_WRITABLE[offset]
                if offset == LVT_TIMER and (old ^ value) >> TIMER_MODE_SHIFT & 3:
                    self._stop_timer()  # a mode change disarms the timer
            elif offset == ICR_LOW:
                self.icr = (self.icr & ~0xFFFF_FFFF) | (value & ~(1 << 12))
                ipi = self._ipi_from_icr()
            elif offset == ICR_HIGH and not self.x2apic:
                self.icr = (self.icr & 0xFFFF_FFFF) | (value & 0xFF00_0000) << 32
            elif offset == TIMER_INITIAL:
                self._load_timer(value)
            elif offset == TIMER_DIVIDE:
                self.divide = value & 0xB
            else:
                return False
        if eoi:
            self.eoi()
        elif offset == ICR_LOW:
            self._dispatch(ipi)
        return True

    def _ipi_from_icr(self) -> Ipi | None:
        icr = self.icr
        mode, vector = icr >> 8 & 7, icr & 0xFF
        if mode in (DM_FIXED, DM_LOWEST) and vector < 16:
            self._esr_pending |= ESR_SEND_ILLEGAL_VECTOR
            return None
        dest = icr >> 32 if self.x2apic else icr >> 56
        return Ipi(self.id, mode, vector, icr >> ICR_SHORTHAND_SHIFT & 3, dest,
                   bool(icr & ICR_DEST_LOGICAL), bool(icr & ICR_LEVEL_ASSERT))

    def _dispatch(self, ipi: Ipi | None) -> None:
        if ipi is not None:
            self._send_ipi(ipi)

    def matches(self, destination: int, logical: bool) -> bool:
        """Whether this APIC is in an IPI's destination (SDM §11.6.2)."""
        if not logical:
            broadcast = 0xFFFF_FFFF if self.x2apic else 0xFF
            return destination in (self.id, broadcast)
        if self.x2apic:
            ldr = x2apic_ldr(self.id)
            return destination >> 16 == ldr >> 16 and bool(destination & ldr & 0xFFFF)
        mine = self.ldr >> 24
        if self.dfr >> 28 == 0xF:  # flat model
            return bool(mine & destination)
        return destination >> 4 == mine >> 4 and bool(destination & mine & 0xF)  # cluster

    # --- x2APIC MSRs -----------------------------------------------------------------------
    def msr_read(self, msr: int) -> int | None:
        """RDMSR of an APIC MSR; None means #GP."""
        if msr == APIC_BASE_MSR:
            return self.apic_base
        if msr == TSC_DEADLINE_MSR:
            return self.tsc_deadline
        if not self.x2apic or not X2APIC_MSR_FIRST <= msr <= X2APIC_MSR_LAST:
            return None
        offset = (msr - X2APIC_MSR_FIRST) << 4
        if offset == ICR_LOW:
            return self.icr
        if offset in (EOI, SELF_IPI, ICR_HIGH, DFR, APR, RRD):
            return None  # write-only or absent in x2APIC mode
        return self.read(offset)

    def msr_write(self, msr: int, value: int) -> bool:
        """WRMSR of an APIC MSR; False means #GP."""
        if msr == APIC_BASE_MSR:
            return self._set_base(value)
        if msr == TSC_DEADLINE_MSR:
            self._set_tsc_deadline(value)
            return True
        if not self.x2apic or not X2APIC_MSR_FIRST <= msr <= X2APIC_MSR_LAST:
            return False
        offset = (msr - X2APIC_MSR_FIRST) << 4
        if offset == ICR_LOW:
            with self._lock:
                self.icr = value & 0xFFFF_FFFF_000F_FFFF & ~(1 << 12)
                ipi = self._ipi_from_icr()
            self._dispatch(ipi)
            return True
        if offset == SELF_IPI:
            self.accept(value & 0xFF)
            return True
        if offset == EOI and value:
            return False  # x2APIC: a non-zero EOI write is #GP
        if offset in (ID, VERSION, PPR, LDR, ICR_HIGH, DFR, TIMER_CURRENT, APR, RRD) or \
                value >> 32:
            return False  # read-only in x2APIC mode, or reserved bits
        return self.write(offset, value)

    def _set_base(self, value: int) -> bool:
        """IA32_APIC_BASE: the legal transitions of SDM §11.12.5 (xAPIC -> x2APIC, either ->
        disabled, disabled -> xAPIC); the BSP flag is read-only."""
        reserved = ~(APIC_BASE_BSP | APIC_BASE_EXTD | APIC_BASE_ENABLE | (((1 << 52) - 1)
                                                                           & ~0xFFF))
        if value & reserved:
            return False
        new_mode = value & (APIC_BASE_ENABLE | APIC_BASE_EXTD)
        old_mode = self.apic_base & (APIC_BASE_ENABLE | APIC_BASE_EXTD)
        if new_mode == APIC_BASE_EXTD:
            return False  # x2APIC without enable is invalid
        if old_mode == APIC_BASE_ENABLE | APIC_BASE_EXTD and new_mode == APIC_BASE_ENABLE:
            return False  # x2APIC -> xAPIC must go through disabled
        if old_mode == 0 and new_mode == APIC_BASE_ENABLE | APIC_BASE_EXTD:
            return False
        value = (value & ~APIC_BASE_BSP) | (self.apic_base & APIC_BASE_BSP)
        if not new_mode:
            bsp = self.apic_base & APIC_BASE_BSP
            self.reset()
            self.apic_base = value & ~APIC_BASE_ENABLE | bsp
            return True
        self.apic_base = value
        return True

    # --- timer -----------------------------------------------------------------------------
    def _timer_mode(self) -> int:
        return self.lvt[LVT_TIMER] >> TIMER_MODE_SHIFT & 3

    def _period_ns(self, count: int) -> int:
        """Nanoseconds for `count` ticks of the timer: the crystal clock through the
        divide configuration (bits 0,1,3: 2, 4, ..., 128, or 1 for 0b111)."""
        code = (self.divide & 3) | (self.divide >> 1 & 4)
        divisor = 1 if code == 7 else 2 << code
        return count * divisor * 1_000_000_000 // CRYSTAL_HZ

    def _load_timer(self, count: int) -> None:
        self.timer_initial = count
        if self._timer_mode() == TIMER_TSC_DEADLINE:
            return  # the initial-count register is ignored in TSC-deadline mode
        self._timer_start = self._now()
        if count:
            self._timer_deadline = self._timer_start + max(1, self._period_ns(count))
            self._arm(self._timer_deadline)
        else:
            self._stop_timer()

    def _stop_timer(self) -> None:
        self._timer_deadline = None
        self._arm(None)

    def _timer_current(self) -> int:
        if self._timer_mode() == TIMER_TSC_DEADLINE or self._timer_deadline is None:
            return 0
        period = self._period_ns(self.timer_initial)
        if not period:
            return 0
        elapsed = (self._now() - self._timer_start) % period if \
            self._timer_mode() == TIMER_PERIODIC else self._now() - self._timer_start
        left = max(0, period - elapsed)
        return min(self.timer_initial, left * self.timer_initial // period)

    def _set_tsc_deadline(self, tsc: int) -> None:
        with self._lock:
            if self._timer_mode() != TIMER_TSC_DEADLINE:
                return  # ignored outside TSC-deadline mode
            self.tsc_deadline = tsc
            if tsc:
                self._timer_deadline = self._tsc_to_ns(tsc)
                self._arm(self._timer_deadline)
            else:
                self._stop_timer()

    def timer_fired(self) -> None:
        """The armed deadline passed (called from the timer thread)."""
        with self._lock:
            if self._timer_deadline is None:
                return
            lvt, mode = self.lvt[LVT_TIMER], self._timer_mode()
            if mode == TIMER_PERIODIC and self.timer_initial:
                period = max(1, self._period_ns(self.timer_initial))
                self._timer_start = self._timer_deadline
                self._timer_deadline += period
                now = self._now()
                if self._timer_deadline <= now:  # missed ticks: the next one a period from now
                    self._timer_start = now
                    self._timer_deadline = now + period
                self._arm(self._timer_deadline)
            else:
                self._timer_deadline = None
                if mode == TIMER_TSC_DEADLINE:
                    self.tsc_deadline = 0
        if not lvt & LVT_MASKED:
            self.accept(lvt & 0xFF)
