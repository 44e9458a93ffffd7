"""The CPUID a Xen HVM/PVH guest sees: the backend's leaves, minus other hypervisors'
paravirt leaves and features pyxen does not virtualize, plus Xen's leaves at 0x40000000.

Both backends take their guest's table from `guest_cpuid`, so a feature is offered (or
hidden) the same way on KVM and on the software CPU.

Where this differs from Xen 4.17: Xen clamps the basic max leaf to 0xd
(CPUID_GUEST_NR_BASIC), so its PVH guests see no leaf 0x15/0x16 and learn the TSC
frequency from leaf base+3 only. pyxen also offers 0x15/0x16 (issue 10): Linux reads them
in native_calibrate_tsc / cpu_khz_from_cpuid, and without them it calibrates against the
PIT with ~100 000 port reads — seconds on KVM's exits, ~95 s on the software CPU.
"""

from __future__ import annotations

import math

from pyxen.x86.lapic import CRYSTAL_HZ, apic_id

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
LEAF1_ECX_VMX = 1 << 5
LEAF1_EDX_APIC = 1 << 9
LEAF7_ECX_UMIP = 1 << 2
EXTD1_ECX_SVM = 1 << 2

TSC_LEAF = 0x15  # EAX denominator, EBX numerator, ECX crystal Hz: TSC = ECX * EBX / EAX
FREQ_LEAF = 0x16  # EAX base MHz, EBX max MHz, ECX bus (reference) MHz
BUS_MHZ = 100

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


def frequency_leaves(tsc_khz: int) -> list[Leaf]:
    """Leaves 0x15 and 0x16 for a TSC of tsc_khz, exact as Linux computes them.

    Leaf 0x15 says TSC Hz = ECX * EBX / EAX; Linux takes ECX / 1000 as the crystal's kHz and
    returns crystal_khz * EBX / EAX, so a 1 MHz crystal with the ratio tsc_khz / 1000
    (reduced) gives tsc_khz exactly, and every value fits 32 bits for any TSC below 4 THz.
    """
    if tsc_khz <= 0:
        return [(TSC_LEAF, 0, 0, 0, 0, 0), (FREQ_LEAF, 0, 0, 0, 0, 0)]  # frequency unknown
    ratio_gcd = math.gcd(tsc_khz, CRYSTAL_HZ // 1000)
    numerator, denominator = tsc_khz // ratio_gcd, (CRYSTAL_HZ // 1000) // ratio_gcd
    mhz = tsc_khz // 1000
    return [
        (TSC_LEAF, 0, denominator, numerator, CRYSTAL_HZ, 0),
        (FREQ_LEAF, 0, mhz, mhz, BUS_MHZ, 0),
    ]


def guest_cpuid(host: list[Leaf], domid: int, vcpu_id: int, tsc_khz: int) -> list[Leaf]:
    """The full CPUID table for one vCPU."""
    table: list[Leaf] = []
    for leaf, sub, a, b, c, d in host:
        if 0x4000_0000 <= leaf <= 0x4FFF_FFFF:
            continue  # KVM's (or Hyper-V's) own paravirt leaves: a Xen guest must not see them
        if leaf in (TSC_LEAF, FREQ_LEAF):
            continue  # pyxen's own, below: the host's describe the host's clocks, not the guest's
        if leaf == 0:
            a = max(a, FREQ_LEAF)  # the frequency leaves must be in range to be read
        elif leaf == 1:
            # A local APIC in xAPIC mode (x86.lapic, reached as MMIO on both backends). Not
            # x2APIC or the TSC-deadline timer: their MSRs would have to reach pyxen, and the
            # software CPU can stop only at RDMSR/WRMSR sites it has found by scanning code.
            # No VMX: Xen hides nested virtualization unless it is configured (it is not).
            c = (c | LEAF1_ECX_HYPERVISOR) & ~(LEAF1_ECX_X2APIC | LEAF1_ECX_TSC_DEADLINE
                                               | LEAF1_ECX_VMX)
            d |= LEAF1_EDX_APIC
            b = (b & 0x00FF_FFFF) | (apic_id(vcpu_id) << 24)  # initial APIC id
        elif leaf in (0xB, 0x1F):
            d = apic_id(vcpu_id)  # x2APIC id, as leaf 1's initial APIC id
        elif leaf == 7 and sub == 0:
            # UMIP hidden: the software CPU cannot enforce it, and both backends offer the same.
            c &= ~LEAF7_ECX_UMIP
        elif leaf == 0x8000_0001:
            c &= ~EXTD1_ECX_SVM  # nested virtualization hidden, as for VMX
        table.append((leaf, sub, a, b, c, d))
    return table + frequency_leaves(tsc_khz) + xen_leaves(domid, vcpu_id, tsc_khz)
