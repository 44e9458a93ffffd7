"""The CPUID policy both backends give a guest (pyxen.x86.cpuid)."""

from __future__ import annotations

import pytest

from pyxen.x86 import cpuid as P

# A host table shaped like KVM_GET_SUPPORTED_CPUID's on an Intel machine: max leaf 0xd,
# VMX and x2APIC in leaf 1, UMIP in leaf 7, SVM in 0x80000001, KVM's own leaves.
HOST = [
    (0x0, 0, 0xD, 0x756E6547, 0x6C65746E, 0x49656E69),
    (0x1, 0, 0x000306C4, 0x0102_0800, 0x8120_2021 | P.LEAF1_ECX_VMX, 0x0F8BFBFF),
    (0x7, 0, 0, 0x0180_2852, 0x1A01_0104, 0x2001_0000),
    (0x7, 1, 0x1C00, 0, 0, 0x4000),
    (0x15, 0, 2, 208, 25_000_000, 0),  # the host's crystal: not the guest's TSC
    (0x8000_0000, 0, 0x8000_0008, 0, 0, 0),
    (0x8000_0001, 0, 0, 0, 0x121 | P.EXTD1_ECX_SVM, 0x2C10_0800),
    (0x4000_0000, 0, 0x4000_0001, 0x4B4D564B, 0x564B4D56, 0x4D),
]


def lookup(table: list[P.Leaf], leaf: int, sub: int = 0) -> tuple[int, int, int, int]:
    found = [regs for lf, sb, *regs in table if (lf, sb) == (leaf, sub)]
    assert len(found) == 1, f"leaf {leaf:#x}.{sub}: {len(found)} entries"
    return tuple(found[0])  # type: ignore[return-value]


def linux_tsc_khz(table: list[P.Leaf]) -> int:
    """What Linux's native_calibrate_tsc computes from leaves 0 and 0x15 (0: no answer)."""
    if lookup(table, 0)[0] < 0x15:
        return 0
    den, num, crystal_hz, _ = lookup(table, 0x15)
    if not num or not den:
        return 0
    crystal_khz = crystal_hz // 1000
    return crystal_khz * num // den


@pytest.mark.parametrize("tsc_khz", [1_000_000, 2_600_000, 2_194_843, 3_999_999, 4_700_001, 999])
def test_leaf_0x15_gives_the_guest_tsc_exactly(tsc_khz: int) -> None:
    table = P.guest_cpuid(HOST, 1, 0, tsc_khz)
    den, num, crystal_hz, _ = lookup(table, 0x15)
    assert crystal_hz * num == tsc_khz * 1000 * den  # ECX * EBX / EAX = TSC Hz
    assert all(0 < v < 1 << 32 for v in (den, num, crystal_hz))
    assert linux_tsc_khz(table) == tsc_khz
    # ... and it agrees with Xen's own TSC leaf, which Xen guests read first.
    base3 = lookup(table, P.XEN_CPUID_FIRST_LEAF + 3, 0)
    assert base3[2] == tsc_khz


def test_leaf_0x16_gives_base_and_max_mhz_and_a_100_mhz_bus() -> None:
    table = P.guest_cpuid(HOST, 1, 0, 2_600_000)
    assert lookup(table, 0x16) == (2600, 2600, 100, 0)


def test_max_basic_leaf_covers_the_frequency_leaves() -> None:
    assert lookup(P.guest_cpuid(HOST, 1, 0, 1_000_000), 0)[0] >= 0x16
    wide = [(0, 0, 0x24, *HOST[0][3:])] + HOST[1:]
    assert lookup(P.guest_cpuid(wide, 1, 0, 1_000_000), 0)[0] == 0x24  # never lowered


def test_unknown_tsc_frequency_offers_no_ratio() -> None:
    table = P.guest_cpuid(HOST, 1, 0, 0)
    assert linux_tsc_khz(table) == 0  # Linux then falls back, rather than dividing by zero


def test_features_pyxen_does_not_virtualize_are_hidden() -> None:
    table = P.guest_cpuid(HOST, 1, 0, 1_000_000)
    assert not lookup(table, 1)[2] & P.LEAF1_ECX_VMX
    assert not lookup(table, 7, 0)[2] & P.LEAF7_ECX_UMIP
    assert not lookup(table, 0x8000_0001)[2] & P.EXTD1_ECX_SVM
    assert lookup(table, 1)[2] & P.LEAF1_ECX_HYPERVISOR
    # Other bits of those registers are passed through untouched.
    assert lookup(table, 7, 0)[2] == 0x1A01_0104 & ~P.LEAF7_ECX_UMIP
    assert lookup(table, 7, 1) == (0x1C00, 0, 0, 0x4000)


def test_only_xen_signature_in_the_hypervisor_range() -> None:
    table = P.guest_cpuid(HOST, 3, 2, 1_000_000)
    hv = [t for t in table if 0x4000_0000 <= t[0] <= 0x4FFF_FFFF]
    assert lookup(hv, 0x4000_0000)[1:] == (0x566E6558, 0x65584D4D, 0x4D4D566E)  # XenVMMXenVMM
    assert lookup(table, 0x4000_0004)[1:3] == (2, 3)  # vCPU id, domid
    assert lookup(table, 1)[1] >> 24 == 4  # initial APIC id: Xen's vcpu_id * 2


def test_a_local_apic_in_xapic_mode_only() -> None:
    """The LAPIC is offered (Linux needs it), as xAPIC: x2APIC and the TSC-deadline timer
    would need MSR exits the software CPU cannot guarantee."""
    table = P.guest_cpuid([*HOST, (0xB, 0, 1, 2, 0x100, 7), (0xB, 1, 4, 8, 0x201, 7)],
                          1, 3, 1_000_000)
    _, b, c, d = lookup(table, 1)
    assert d & P.LEAF1_EDX_APIC
    assert not c & (P.LEAF1_ECX_X2APIC | P.LEAF1_ECX_TSC_DEADLINE)
    assert b >> 24 == 6
    assert lookup(table, 0xB, 0)[3] == lookup(table, 0xB, 1)[3] == 6  # x2APIC id, each level


def test_each_leaf_appears_once() -> None:
    table = P.guest_cpuid(HOST, 1, 0, 1_000_000)
    keys = [(t[0], t[1]) for t in table]
    assert len(keys) == len(set(keys))


def test_soft_cpu_table_gets_the_same_policy() -> None:
    from pyxen.soft.machine import emulated_cpuid

    table = P.guest_cpuid(list(emulated_cpuid()), 1, 0, 1_000_000)
    assert linux_tsc_khz(table) == 1_000_000
    assert not lookup(table, 1)[2] & P.LEAF1_ECX_VMX
    assert not lookup(table, 7, 0)[2] & P.LEAF7_ECX_UMIP
