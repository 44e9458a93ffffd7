"""The local APIC model both backends share (pyxen.x86.lapic), against the SDM's rules."""

from __future__ import annotations

import pytest

from pyxen.x86 import lapic as L


class Harness:
    """A LAPIC with a hand-driven clock, recording timer arming, IPIs and kicks."""

    def __init__(self, index: int = 0) -> None:
        self.now = 1_000_000
        self.armed: int | None = None
        self.ipis: list[L.Ipi] = []
        self.kicks = 0
        self.apic = L.Lapic(index, lambda: self.now, self._arm, self.ipis.append, self._kick,
                            lambda tsc: tsc * 2)

    def _arm(self, deadline: int | None) -> None:
        self.armed = deadline

    def _kick(self) -> None:
        self.kicks += 1

    def enable(self) -> L.Lapic:
        self.apic.write(L.SVR, L.SVR_ENABLE | 0xFF)
        return self.apic

    def fire(self) -> None:
        assert self.armed is not None
        self.now, self.armed = self.armed, None  # the timer queue pops it as it fires
        self.apic.timer_fired()


def test_power_on_state_is_xen_s() -> None:
    apic = Harness(1).apic
    assert apic.read(L.ID) == 2 << 24  # vcpu_id * 2, in bits 31:24 in xAPIC mode
    assert apic.apic_base == L.APIC_DEFAULT_BASE | L.APIC_BASE_ENABLE  # not the BSP
    assert Harness(0).apic.apic_base & L.APIC_BASE_BSP
    assert not apic.enabled  # software-disabled until the guest sets SVR
    assert all(apic.read(reg) == L.LVT_MASKED for reg in L.LVTS)
    assert apic.read(L.VERSION) & 0xFF == 0x14


def test_highest_vector_above_the_priority_class_is_delivered() -> None:
    h = Harness()
    apic = h.enable()
    apic.accept(0x31)
    apic.accept(0x52)
    assert h.kicks == 2
    assert apic.pending_vector() == 0x52
    apic.acknowledge(0x52)
    assert apic.read(L.ISR + 0x20) == 1 << (0x52 - 64)  # ISR bits 64..95
    # 0x31's class (3) is below the in-service class (5): it waits for the EOI.
    assert apic.pending_vector() == 0
    assert apic.read(L.PPR) == 0x50
    apic.write(L.EOI, 0)
    assert apic.pending_vector() == 0x31
    apic.write(L.TPR, 0x40)  # the task priority holds it back too
    assert apic.pending_vector() == 0
    assert apic.read(L.PPR) == 0x40


def test_same_class_waits_for_eoi_and_illegal_vectors_set_esr() -> None:
    apic = Harness().enable()
    apic.accept(0x41)
    apic.acknowledge(0x41)
    apic.accept(0x4F)
    assert apic.pending_vector() == 0  # same priority class as the one in service
    apic.accept(5)
    assert apic.read(L.IRR) == 0  # vectors 0-15 are refused
    apic.write(L.ESR, 0)
    assert apic.read(L.ESR) & L.ESR_RECEIVE_ILLEGAL_VECTOR


def test_a_disabled_apic_holds_interrupts_until_enabled() -> None:
    h = Harness()
    h.apic.accept(0x60)
    assert h.apic.pending_vector() == 0
    h.enable()
    assert h.apic.pending_vector() == 0x60


def test_software_disable_masks_the_lvts() -> None:
    apic = Harness().enable()
    apic.write(L.LVT_TIMER, 0x40)
    assert apic.read(L.LVT_TIMER) == 0x40
    apic.write(L.SVR, 0xFF)
    assert apic.read(L.LVT_TIMER) & L.LVT_MASKED
    apic.write(L.LVT_TIMER, 0x40)  # stays masked while software-disabled
    assert apic.read(L.LVT_TIMER) & L.LVT_MASKED


def test_one_shot_timer_counts_down_and_fires_once() -> None:
    h = Harness()
    apic = h.enable()
    apic.write(L.TIMER_DIVIDE, 0xB)  # divide by 1: 1 tick per crystal period (1 us)
    apic.write(L.LVT_TIMER, 0xEF)
    apic.write(L.TIMER_INITIAL, 1000)
    assert h.armed == h.now + 1_000_000  # 1000 ticks of a 1 MHz crystal
    h.now += 250_000
    assert apic.read(L.TIMER_CURRENT) == 750
    h.fire()
    assert apic.pending_vector() == 0xEF
    assert apic.read(L.TIMER_CURRENT) == 0
    assert h.armed is None


def test_periodic_timer_rearms_on_schedule_and_a_masked_one_raises_nothing() -> None:
    h = Harness()
    apic = h.enable()
    apic.write(L.TIMER_DIVIDE, 0x0)  # divide by 2
    apic.write(L.LVT_TIMER, L.TIMER_PERIODIC << L.TIMER_MODE_SHIFT | L.LVT_MASKED | 0xEF)
    apic.write(L.TIMER_INITIAL, 500)
    first = h.armed
    assert first == h.now + 1_000_000
    h.fire()
    assert h.armed == first + 1_000_000  # re-armed; no drift: from the deadline, not from "now"
    assert apic.pending_vector() == 0  # masked
    apic.write(L.LVT_TIMER, L.TIMER_PERIODIC << L.TIMER_MODE_SHIFT | 0xEF)
    h.fire()
    assert apic.pending_vector() == 0xEF


def test_tsc_deadline_mode_uses_the_msr() -> None:
    h = Harness()
    apic = h.enable()
    apic.write(L.LVT_TIMER, L.TIMER_TSC_DEADLINE << L.TIMER_MODE_SHIFT | 0xE0)
    apic.write(L.TIMER_INITIAL, 1234)  # ignored in this mode
    assert h.armed is None
    assert apic.msr_write(L.TSC_DEADLINE_MSR, 5_000_000)
    assert h.armed == 10_000_000  # the harness's TSC runs at 2 ticks per ns... halved
    assert apic.msr_read(L.TSC_DEADLINE_MSR) == 5_000_000
    h.fire()
    assert apic.msr_read(L.TSC_DEADLINE_MSR) == 0
    assert apic.pending_vector() == 0xE0


def test_icr_write_sends_an_ipi() -> None:
    h = Harness()
    apic = h.enable()
    apic.write(L.ICR_HIGH, 2 << 24)
    apic.write(L.ICR_LOW, L.DM_STARTUP << 8 | 0x9A)
    assert h.ipis == [L.Ipi(0, L.DM_STARTUP, 0x9A, L.SH_NONE, 2, False, False)]
    apic.write(L.ICR_LOW, L.SH_OTHERS << L.ICR_SHORTHAND_SHIFT | 0x05)  # fixed, vector 5
    assert len(h.ipis) == 1  # an illegal vector is not sent
    apic.write(L.ESR, 0)
    assert apic.read(L.ESR) & L.ESR_SEND_ILLEGAL_VECTOR


def test_destination_matching_physical_and_logical() -> None:
    apic = Harness(3).enable()  # APIC id 6
    assert apic.matches(6, logical=False) and apic.matches(0xFF, logical=False)
    assert not apic.matches(3, logical=False)
    apic.write(L.LDR, 0x10 << 24)
    assert apic.matches(0x30, logical=True) and not apic.matches(0x20, logical=True)  # flat
    apic.write(L.DFR, 0x0FFF_FFFF)  # cluster model
    apic.write(L.LDR, 0x12 << 24)  # cluster 1, member bit 1
    assert apic.matches(0x12, logical=True) and apic.matches(0x13, logical=True)
    assert not apic.matches(0x22, logical=True) and not apic.matches(0x11, logical=True)


def test_x2apic_mode_switch_and_msr_rules() -> None:
    h = Harness(1)
    apic = h.apic
    assert apic.msr_read(0x802) is None  # x2APIC MSRs #GP in xAPIC mode
    base = apic.apic_base
    assert not apic.msr_write(L.APIC_BASE_MSR, (base & ~L.APIC_BASE_ENABLE) | L.APIC_BASE_EXTD)
    assert apic.msr_write(L.APIC_BASE_MSR, base | L.APIC_BASE_EXTD)
    assert apic.x2apic and apic.xapic_mmio_base is None
    assert apic.msr_read(0x802) == 2  # the full id, not shifted
    assert apic.msr_read(0x80D) == L.x2apic_ldr(2)
    assert apic.msr_write(0x80F, L.SVR_ENABLE | 0xFF)
    assert not apic.msr_write(0x80B, 1)  # non-zero EOI
    assert not apic.msr_write(0x802, 0)  # the id is read-only
    assert apic.msr_write(0x830, 4 << 32 | 0x40)
    assert h.ipis[-1].destination == 4 and h.ipis[-1].vector == 0x40
    assert apic.msr_write(0x83F, 0x70)  # SELF_IPI
    assert apic.pending_vector() == 0x70
    # x2APIC -> xAPIC directly is illegal; through disabled it works and resets the APIC.
    assert not apic.msr_write(L.APIC_BASE_MSR, base)
    assert apic.msr_write(L.APIC_BASE_MSR, base & ~L.APIC_BASE_ENABLE)
    assert apic.pending_vector() == 0 and apic.read(L.IRR + 0x30) == 0
    assert apic.msr_write(L.APIC_BASE_MSR, base)


@pytest.mark.parametrize("offset", [0x000, 0x010, 0x040, 0x3F0, 0xFF0])
def test_reserved_registers_do_not_exist(offset: int) -> None:
    apic = Harness().apic
    assert apic.read(offset) is None
    assert not apic.write(offset, 1)
