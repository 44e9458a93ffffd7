"""The CPUID a Xen HVM/PVH guest sees: the backend's leaves, minus other hypervisors'
paravirt leaves and features pyxen does not virtualize, plus Xen's leaves at 0x40000000."""

from __future__ import annotations

XEN_CPUID_FIRST_LEAF = 0x4000_0000
XEN_CPUID_MAX_NUM_LEAVES = 5
XEN_SIGNATURE = b"XenVMMXenVMM"
XEN_MAJOR, XEN_MINOR = 4, 17
HYPERCALL_MSR = 0x4000_0000  # Xen's default: the first Xen MSR, advertised in leaf base+2

XEN_HVM_CPUID_VCPU_ID_PRESENT = 1 << 3
XEN_HVM_CPUID_DOMID_PRESENT = 1 << 4

LEAF1_ECX_HYPERVISOR = 1 << 31
LEAF1_ECX_X2APIC = 1 << 21
LEAF1_ECX_TSC_DEADLINE = 1 << 24
LEAF1_EDX_APIC = 1 << 9

Leaf = tuple[int, int, int, int, int, int]  # leaf, subleaf, eax, ebx, ecx, edx


def xen_leaves(domid: int, vcpu_id: int, tsc_khz: int) -> list[Leaf]:
    sig = [int.from_bytes(XEN_SIGNATURE[i : i + 4], "little") for i in (0, 4, 8)]
    base = XEN_CPUID_FIRST_LEAF
    return [
        (base, 0, base + XEN_CPUID_MAX_NUM_LEAVES, *sig),
        (base + 1, 0, (XEN_MAJOR << 16) | XEN_MINOR, 0, 0, 0),
        (base + 2, 0, 1, HYPERCALL_MSR, 0, 0),
        # TSC leaf: not emulated, reliable (constant/nonstop TSC), default mode.
        (base + 3, 0, 0b010, 0, tsc_khz, 0),
        (base + 3, 1, 0, 0, 0, 0),
        (base + 3, 2, tsc_khz, 0, 0, 0),
        (base + 4, 0, XEN_HVM_CPUID_VCPU_ID_PRESENT | XEN_HVM_CPUID_DOMID_PRESENT,
         vcpu_id, domid, 0),
        (base + 5, 0, 0, 0, 0, 0),
    ]


def guest_cpuid(host: list[Leaf], domid: int, vcpu_id: int, tsc_khz: int) -> list[Leaf]:
    """The full CPUID table for one vCPU."""
    table: list[Leaf] = []
    for leaf, sub, a, b, c, d in host:
        if 0x4000_0000 <= leaf <= 0x4FFF_FFFF:
            continue  # KVM's (or Hyper-V's) own paravirt leaves: a Xen guest must not see them
        if leaf == 1:
            # No local APIC is emulated (upcalls are injected directly), so don't claim one.
            c = (c | LEAF1_ECX_HYPERVISOR) & ~(LEAF1_ECX_X2APIC | LEAF1_ECX_TSC_DEADLINE)
            d &= ~LEAF1_EDX_APIC
            b = (b & 0x00FF_FFFF) | (vcpu_id << 24)  # initial APIC id = vCPU id
        table.append((leaf, sub, a, b, c, d))
    return table + xen_leaves(domid, vcpu_id, tsc_khz)
