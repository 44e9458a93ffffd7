"""Guest-virtual → guest-physical translation by walking the guest's own page tables.

Hypercall pointers are guest-virtual (linear) addresses. Supported: paging off, legacy 32-bit
paging (4 KiB / 4 MiB), PAE, and 4- or 5-level long-mode paging with 4 KiB, 2 MiB and 1 GiB
pages. A missing mapping, a write to a read-only page (CR0.WP), a non-canonical address or a
table outside RAM all raise PageFault, which the hypercall layer turns into -EFAULT.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pyxen.domain.memory import GuestMemory, GuestMemoryError

CR0_PG = 1 << 31
CR0_WP = 1 << 16
CR4_PSE = 1 << 4
CR4_PAE = 1 << 5
CR4_LA57 = 1 << 12
EFER_LMA = 1 << 10

PTE_P = 1 << 0
PTE_RW = 1 << 1
PTE_PS = 1 << 7
ADDR_MASK = 0x000F_FFFF_FFFF_F000


class PageFault(Exception):
    """The address has no usable translation."""


@dataclass(frozen=True, slots=True)
class PagingState:
    """The control registers that decide how a linear address translates."""

    cr0: int
    cr3: int
    cr4: int
    efer: int

    @property
    def paging(self) -> bool:
        return bool(self.cr0 & CR0_PG)


def translate(mem: GuestMemory, ps: PagingState, va: int, write: bool) -> int:
    """The guest-physical address of linear address `va` (raises PageFault)."""
    if not ps.cr0 & CR0_PG:
        return va & 0xFFFF_FFFF if not ps.efer & EFER_LMA else va
    wp = bool(ps.cr0 & CR0_WP)
    if ps.efer & EFER_LMA:
        levels = 5 if ps.cr4 & CR4_LA57 else 4
        bits = 12 + 9 * levels
        top = va >> (bits - 1)
        if top not in (0, (1 << (64 - bits + 1)) - 1):
            raise PageFault(f"non-canonical address {va:#x}")
        return _walk(mem, ps.cr3 & ADDR_MASK, va, levels, 9, 8, write and wp)
    if ps.cr4 & CR4_PAE:
        pdpte = _read_entry(mem, (ps.cr3 & 0xFFFF_FFE0) + ((va >> 30) & 3) * 8, 8)
        if not pdpte & PTE_P:
            raise PageFault(f"no PDPT entry for {va:#x}")
        return _walk(mem, pdpte & ADDR_MASK, va & 0x3FFF_FFFF, 2, 9, 8, write and wp)
    return _walk(mem, ps.cr3 & 0xFFFF_F000, va & 0xFFFF_FFFF, 2, 10, 4, write and wp,
                 pse=bool(ps.cr4 & CR4_PSE))


def _walk(mem: GuestMemory, table: int, va: int, levels: int, bits: int, size: int,
          check_write: bool, pse: bool = True) -> int:
    mask = (1 << bits) - 1
    for level in range(levels, 0, -1):
        shift = 12 + bits * (level - 1)
        entry = _read_entry(mem, table + ((va >> shift) & mask) * size, size)
        if not entry & PTE_P:
            raise PageFault(f"{va:#x} not mapped (level {level})")
        if check_write and not entry & PTE_RW:
            raise PageFault(f"{va:#x} is read-only")
        if level == 1 or (entry & PTE_PS and pse and level <= 3):
            page_mask = (1 << shift) - 1
            frame = entry & ADDR_MASK & ~page_mask
            if size == 4 and level == 2:  # 4 MiB page: bits 13..20 are address bits 32..39
                frame = (entry & 0xFFC0_0000) | ((entry >> 13 & 0xFF) << 32)
            return frame | (va & page_mask)
        table = entry & ADDR_MASK if size == 8 else entry & 0xFFFF_F000
    raise AssertionError("unreachable")


def _read_entry(mem: GuestMemory, gpa: int, size: int) -> int:
    try:
        offset = mem.check_populated(gpa, size)
    except GuestMemoryError as e:
        raise PageFault(f"page table at {gpa:#x} is not RAM") from e
    return struct.unpack_from("<Q" if size == 8 else "<I", mem.map, offset)[0]
