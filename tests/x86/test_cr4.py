"""The CR4 bits a guest may set follow the features its CPUID offers."""

from __future__ import annotations

from pyxen.x86 import cr4
from pyxen.x86.cpuid import LEAF1_ECX_VMX, LEAF7_ECX_UMIP, guest_cpuid


def test_base_bits_are_always_valid_and_unoffered_features_are_not() -> None:
    valid = cr4.cr4_valid_bits([])
    assert valid & (cr4.PAE | cr4.PGE | cr4.OSFXSR | cr4.OSXMMEXCPT) == \
        cr4.PAE | cr4.PGE | cr4.OSFXSR | cr4.OSXMMEXCPT
    assert not valid & (cr4.VMXE | cr4.UMIP | cr4.SMEP | cr4.LA57 | cr4.OSXSAVE)


def test_offered_features_make_their_bits_valid() -> None:
    table = [(1, 0, 0, 0, LEAF1_ECX_VMX | 1 << 26, 0), (7, 0, 0, 1 << 7, LEAF7_ECX_UMIP, 0)]
    valid = cr4.cr4_valid_bits(table)
    assert valid & (cr4.VMXE | cr4.OSXSAVE | cr4.SMEP | cr4.UMIP) == \
        cr4.VMXE | cr4.OSXSAVE | cr4.SMEP | cr4.UMIP
    assert not valid & (cr4.SMAP | cr4.PKE)


def test_the_guest_policy_never_allows_vmxe_or_umip() -> None:
    host = [(1, 0, 0, 0, LEAF1_ECX_VMX, 0), (7, 0, 0, 0, LEAF7_ECX_UMIP, 0)]
    valid = cr4.cr4_valid_bits(guest_cpuid(host, domid=1, vcpu_id=0, tsc_khz=1_000_000))
    assert not valid & (cr4.VMXE | cr4.UMIP)
