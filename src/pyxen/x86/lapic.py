"""The local APIC, as Xen's vlapic gives one to an HVM/PVH vCPU: one model of its rules for
both vCPU backends."""

from __future__ import annotations


def apic_id(vcpu_index: int) -> int:
    """A vCPU's APIC ID: Xen numbers them vcpu_id * 2 (vlapic_reset; libxl's MADT agrees), and
    CPUID's initial APIC ID, the MADT and the APIC ID register all say the same."""
    return vcpu_index * 2
