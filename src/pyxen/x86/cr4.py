"""Which CR4 bits a guest may set: those of features its CPUID offers (Xen's
hvm_cr4_guest_valid_bits). A `mov` to CR4 setting any other bit raises #GP(0).

KVM enforces this itself against the guest's CPUID; the software CPU's engine accepts any
value, so its vCPU intercepts CR4 writes and asks this module.
"""

from __future__ import annotations

from collections.abc import Iterable

VME, PVI, TSD, DE, PSE, PAE, MCE, PGE, PCE = (1 << n for n in range(9))
OSFXSR, OSXMMEXCPT, UMIP, LA57, VMXE, SMXE = (1 << n for n in range(9, 15))
FSGSBASE, PCIDE, OSXSAVE, SMEP, SMAP, PKE, CET = (1 << n for n in (16, 17, 18, 20, 21, 22, 23))

ALWAYS = VME | PVI | TSD | DE | PSE | PAE | MCE | PGE | PCE | OSFXSR | OSXMMEXCPT

# (leaf, subleaf, register index 0..3 = eax..edx, bit) -> the CR4 bit that feature enables
BY_FEATURE = {
    (1, 0, 2, 5): VMXE,
    (1, 0, 2, 6): SMXE,
    (1, 0, 2, 17): PCIDE,
    (1, 0, 2, 26): OSXSAVE,
    (7, 0, 1, 0): FSGSBASE,
    (7, 0, 1, 7): SMEP,
    (7, 0, 1, 20): SMAP,
    (7, 0, 2, 2): UMIP,
    (7, 0, 2, 3): PKE,
    (7, 0, 2, 7): CET,
    (7, 0, 2, 16): LA57,
}


def cr4_valid_bits(cpuid: Iterable[tuple[int, int, int, int, int, int]]) -> int:
    """The CR4 bits a guest with this CPUID table may set."""
    regs = {(leaf, sub): (a, b, c, d) for leaf, sub, a, b, c, d in cpuid}
    valid = ALWAYS
    for (leaf, sub, reg, bit), cr4_bit in BY_FEATURE.items():
        if regs.get((leaf, sub), (0, 0, 0, 0))[reg] >> bit & 1:
            valid |= cr4_bit
    return valid
