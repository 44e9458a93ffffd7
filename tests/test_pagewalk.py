"""Guest page-table walks: every paging mode pyxen translates hypercall pointers through."""

from __future__ import annotations

import struct

import pytest

from pyxen.domain.memory import GuestMemory
from pyxen.hv.pagewalk import (
    CR0_PG,
    CR0_WP,
    CR4_PAE,
    CR4_PSE,
    EFER_LMA,
    PageFault,
    PagingState,
    translate,
)

P, RW, PS = 1, 2, 0x80
MiB = 1 << 20


@pytest.fixture
def mem():
    m = GuestMemory(16 * MiB, 16 * MiB)
    yield m
    m.close()


def put(mem: GuestMemory, gpa: int, entry: int, size: int = 8) -> None:
    mem.write(gpa, struct.pack("<Q" if size == 8 else "<I", entry))


def long_mode(cr3: int, wp: bool = False) -> PagingState:
    return PagingState(CR0_PG | 1 | (CR0_WP if wp else 0), cr3, CR4_PAE, EFER_LMA)


def test_paging_off_is_identity(mem) -> None:
    ps = PagingState(cr0=1, cr3=0, cr4=0, efer=0)
    assert translate(mem, ps, 0x12345678, write=True) == 0x12345678


def test_long_mode_4k_and_2m_pages(mem) -> None:
    pml4, pdpt, pd, pt = 0x10000, 0x11000, 0x12000, 0x13000
    put(mem, pml4, pdpt | P | RW)
    put(mem, pdpt, pd | P | RW)
    put(mem, pd + 0 * 8, 0x200000 | P | RW | PS)      # VA 0..2M → PA 2M (2 MiB page)
    put(mem, pd + 1 * 8, pt | P | RW)                  # VA 2M.. → page table
    put(mem, pt + 3 * 8, 0x7000 | P)                   # VA 2M+12K → PA 0x7000, read-only
    ps = long_mode(pml4)
    assert translate(mem, ps, 0x1234, write=False) == 0x201234
    assert translate(mem, ps, 0x200000 + 0x3000 + 0x42, write=False) == 0x7042
    assert translate(mem, ps, 0x200000 + 0x3000, write=True) == 0x7000  # WP off: allowed
    with pytest.raises(PageFault, match="read-only"):
        translate(mem, long_mode(pml4, wp=True), 0x203000, write=True)
    with pytest.raises(PageFault, match="not mapped"):
        translate(mem, ps, 0x204000, write=False)
    with pytest.raises(PageFault, match="non-canonical"):
        translate(mem, ps, 0x0000_8000_0000_0000, write=False)


def test_page_table_outside_ram_faults(mem) -> None:
    pml4 = 0x10000
    put(mem, pml4, 0x8000_0000 | P | RW)  # PDPT beyond the 16 MiB of RAM
    with pytest.raises(PageFault, match="not RAM"):
        translate(mem, long_mode(pml4), 0x1000, write=False)


def test_pae_paging(mem) -> None:
    pdpt, pd = 0x20000, 0x21000
    put(mem, pdpt + 1 * 8, pd | P)                      # 1..2 GiB
    put(mem, pd + 2 * 8, 0x600000 | P | RW | PS)        # 2 MiB page
    ps = PagingState(CR0_PG | 1, pdpt, CR4_PAE, 0)
    assert translate(mem, ps, 0x4000_0000 + 0x400000 + 0x99, write=False) == 0x600099


def test_legacy_32bit_paging_4k_and_4m(mem) -> None:
    pd, pt = 0x30000, 0x31000
    put(mem, pd + 0, pt | P | RW, size=4)
    put(mem, pt + 5 * 4, 0x9000 | P | RW, size=4)
    put(mem, pd + 4, 0x800000 | P | RW | PS, size=4)   # 4 MiB page at VA 4M
    ps = PagingState(CR0_PG | 1, pd, CR4_PSE, 0)
    assert translate(mem, ps, 0x5010, write=False) == 0x9010
    assert translate(mem, ps, 0x400000 + 0x123456, write=False) == 0x800000 + 0x123456
