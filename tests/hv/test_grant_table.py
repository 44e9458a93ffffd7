"""The backend side of grant tables (pyxen.hv.grant_table.GrantMapper) against domains built
in-process, no vCPU run: what a dom0 backend sees through gntdev, and what the granting guest
sees in its grant entries (GTF_reading/GTF_writing, v2 status frames), with Xen's GNTST codes."""

from __future__ import annotations

import ctypes as C
import struct
from collections.abc import Iterator

import pytest

from pyxen.abi import grant_table as G
from pyxen.abi.errno import EINVAL, XenError
from pyxen.abi.hvm import HVM_PARAM_CONSOLE_PFN, HVM_PARAM_STORE_PFN
from pyxen.abi.memory import XENMAPIDX_grant_table_status
from pyxen.domain.domain import Domain, DomainConfig
from pyxen.hv import hypercall_table
from pyxen.hv.grant_table import (
    PIN_HSTR,
    PIN_HSTW,
    GrantMapper,
    GrantStatus,
    acquire_grant_for_copy,
    map_grant_ref,
    release_grant_for_copy,
    set_version,
    unmap_grant_ref,
)

PAGE = 4096
FRAME_GFN = 0x100  # where each test domain maps its grant frame 0
STATUS_GFN = 0x101
DATA_GFN = 0x200


class NoMachine:
    """A vCPU backend stand-in: these tests never run guest code."""

    readonly_memory = True

    def __init__(self) -> None:
        self.slots: dict[int, tuple[int, int, int, bool]] = {}

    def map_memory(self, slot: int, gpa: int, size: int, host: int,
                   readonly: bool = False) -> None:
        self.slots[slot] = (gpa, size, host, readonly)

    def unmap_memory(self, slot: int) -> None:
        del self.slots[slot]

    def set_dirty_logging(self, enabled: bool) -> None:
        pass

    def close(self) -> None:
        pass


def make_domain(domid: int, **config: object) -> Domain:
    cfg = DomainConfig(name=f"gnt{domid}", domid=domid, memory_mib=8, **config)  # type: ignore[arg-type]
    d = Domain(cfg, NoMachine(), hypercall_table(), lambda data: None)  # type: ignore[arg-type]
    d.grant_table.map_frame(0, FRAME_GFN)
    return d


@pytest.fixture
def doms() -> Iterator[tuple[Domain, Domain, Domain]]:
    ds = (make_domain(0, privileged=True), make_domain(1), make_domain(2))
    for a in ds:
        for b in ds:
            a.peers[b.domid] = b
    yield ds
    for d in ds:
        d.memory.close()


def grant_v1(d: Domain, ref: int, domid: int, gfn: int, flags: int = G.GTF_permit_access) -> None:
    d.memory.write((FRAME_GFN << 12) + ref * 8, struct.pack("<HHI", flags, domid, gfn))


def grant_v2(d: Domain, ref: int, domid: int, flags: int, tail: bytes) -> None:
    d.memory.write((FRAME_GFN << 12) + ref * 16, struct.pack("<HH", flags, domid) + tail)


def flags_v1(d: Domain, ref: int) -> int:
    return struct.unpack("<H", d.memory.read((FRAME_GFN << 12) + ref * 8, 2))[0]


def status_v2(d: Domain, ref: int) -> int:
    return struct.unpack("<H", d.memory.read((STATUS_GFN << 12) + ref * 2, 2))[0]


BUSY = G.GTF_reading | G.GTF_writing


def test_map_reads_and_writes_the_real_page(doms) -> None:
    _, d1, _ = doms
    d1.memory.write(DATA_GFN << 12, b"guest data")
    grant_v1(d1, 10, 0, DATA_GFN)
    m = GrantMapper(0).map(d1, 10)
    assert bytes(m.page[:10]) == b"guest data"
    assert flags_v1(d1, 10) == G.GTF_permit_access | BUSY
    m.page[:5] = b"HELLO"
    assert d1.memory.read(DATA_GFN << 12, 5) == b"HELLO"  # the same page, not a copy
    GrantMapper(0).unmap(m)
    assert flags_v1(d1, 10) == G.GTF_permit_access
    assert 10 not in d1.grant_table.active


def test_readonly_map_and_pin_counts(doms) -> None:
    _, d1, _ = doms
    grant_v1(d1, 10, 0, DATA_GFN)
    mapper = GrantMapper(0)
    ro = mapper.map(d1, 10, readonly=True)
    assert flags_v1(d1, 10) & BUSY == G.GTF_reading
    with pytest.raises(TypeError):
        ro.page[0] = 1
    rw = mapper.map(d1, 10)
    assert flags_v1(d1, 10) & BUSY == BUSY
    assert d1.grant_table.active[10].pin == 0x101  # one writable, one read-only host pin
    mapper.unmap(rw)
    assert flags_v1(d1, 10) & BUSY == G.GTF_reading  # still mapped read-only
    mapper.unmap(ro)
    assert flags_v1(d1, 10) & BUSY == 0


def test_map_checks_like_xen(doms) -> None:
    _, d1, _ = doms
    mapper = GrantMapper(0)
    grant_v1(d1, 10, 0, DATA_GFN, G.GTF_permit_access | G.GTF_readonly)
    with pytest.raises(GrantStatus) as e:
        mapper.map(d1, 10)
    assert e.value.status == G.GNTST_general_error
    assert flags_v1(d1, 10) & BUSY == 0
    mapper.unmap(mapper.map(d1, 10, readonly=True))
    grant_v1(d1, 11, 2, DATA_GFN)  # granted to d2, not to dom0
    with pytest.raises(GrantStatus) as e:
        mapper.map(d1, 11)
    assert e.value.status == G.GNTST_general_error
    with pytest.raises(GrantStatus) as e:
        mapper.map(d1, 512)  # one frame of v1 entries: refs 0..511
    assert e.value.status == G.GNTST_bad_gntref
    grant_v1(d1, 12, 0, 0xFFFFF)  # not RAM
    with pytest.raises(GrantStatus) as e:
        mapper.map(d1, 12)
    assert e.value.status == G.GNTST_bad_page
    assert flags_v1(d1, 12) & BUSY == 0
    # Another domain cannot share dom0's pin on the same entry.
    grant_v1(d1, 14, 0, DATA_GFN)
    held = mapper.map(d1, 14)
    with pytest.raises(GrantStatus) as e:
        GrantMapper(2).map(d1, 14)
    assert e.value.status == G.GNTST_general_error
    mapper.unmap(held)


def test_copy_through_a_grant(doms) -> None:
    _, d1, _ = doms
    mapper = GrantMapper(0)
    grant_v1(d1, 10, 0, DATA_GFN)
    mapper.copy_to(d1, 10, b"written by dom0", offset=100)
    assert d1.memory.read((DATA_GFN << 12) + 100, 15) == b"written by dom0"
    assert mapper.copy_from(d1, 10, 100, 15) == b"written by dom0"
    assert flags_v1(d1, 10) & BUSY == 0
    with pytest.raises(GrantStatus) as e:
        mapper.copy_from(d1, 10, 4000, 200)
    assert e.value.status == G.GNTST_bad_copy_arg
    grant_v1(d1, 11, 0, DATA_GFN, G.GTF_permit_access | G.GTF_readonly)
    assert mapper.copy_from(d1, 11, 100, 3) == b"wri"
    with pytest.raises(GrantStatus) as e:
        mapper.copy_to(d1, 11, b"x")
    assert e.value.status == G.GNTST_general_error


def test_v2_status_frame_sub_page_and_transitive(doms) -> None:
    _, d1, d2 = doms
    assert set_version(d1, 2) == 0
    d1.grant_table.map_frame(XENMAPIDX_grant_table_status | 0, STATUS_GFN)
    mapper = GrantMapper(0)
    grant_v2(d1, 10, 0, G.GTF_permit_access, struct.pack("<IQ", 0, DATA_GFN))
    m = mapper.map(d1, 10)
    assert status_v2(d1, 10) == BUSY
    assert struct.unpack("<H", d1.memory.read((FRAME_GFN << 12) + 160, 2))[0] == \
        G.GTF_permit_access  # v2 keeps the flags word for the guest alone
    mapper.unmap(m)
    assert status_v2(d1, 10) == 0

    d1.memory.write(DATA_GFN << 12, bytes(range(256)) * 16)
    grant_v2(d1, 11, 0, G.GTF_permit_access | G.GTF_sub_page,
             struct.pack("<HHQ", 100, 50, DATA_GFN))
    assert mapper.copy_from(d1, 11, 100, 50) == bytes(range(100, 150))
    for offset, length in ((99, 10), (140, 11)):
        with pytest.raises(GrantStatus) as e:
            mapper.copy_from(d1, 11, offset, length)
        assert e.value.status == G.GNTST_general_error
    with pytest.raises(GrantStatus):  # sub-page grants cannot be mapped
        mapper.map(d1, 11)

    # d1's ref 12 hands dom0 d2's ref 7 (granted by d2 to d1).
    d2.memory.write(DATA_GFN << 12, b"from d2")
    grant_v1(d2, 7, 1, DATA_GFN)
    grant_v2(d1, 12, 0, G.GTF_transitive, struct.pack("<HHI", 2, 0, 7))
    assert mapper.copy_from(d1, 12, 0, 7) == b"from d2"
    assert flags_v1(d2, 7) & BUSY == 0 and status_v2(d1, 12) == 0
    grant_v2(d1, 13, 0, G.GTF_transitive, struct.pack("<HHI", 1, 0, 7))  # self-referential
    with pytest.raises(GrantStatus):
        mapper.copy_from(d1, 13, 0, 1)


def test_set_version_busy_and_reserved_entries(doms) -> None:
    _, d1, _ = doms
    grant_v1(d1, 3, 0, DATA_GFN)   # reserved range: may stay mapped across a switch
    grant_v1(d1, 10, 0, DATA_GFN)
    mapper = GrantMapper(0)
    reserved = mapper.map(d1, 3)
    m = mapper.map(d1, 10)
    assert set_version(d1, 2) == -16  # -EBUSY
    mapper.unmap(m)
    assert set_version(d1, 2) == 0
    gt = d1.grant_table
    assert gt.header(3) == (G.GTF_permit_access, 0) and gt.entry_frame(3) == DATA_GFN
    assert gt.status_word(3) == BUSY  # its GTF_reading/writing moved into the status entry
    assert gt.header(10) == (0, 0)
    assert set_version(d1, 1) == 0
    assert flags_v1(d1, 3) == G.GTF_permit_access | BUSY
    mapper.unmap(reserved)
    assert flags_v1(d1, 3) == G.GTF_permit_access
    assert set_version(d1, 3) == -22


def test_frames_keep_their_contents_out_of_the_physmap(doms) -> None:
    _, d1, _ = doms
    gt = d1.grant_table
    grant_v1(d1, 5, 0, DATA_GFN)
    gt.frame_unmapped("grant_table:0")
    del d1.special_frames[FRAME_GFN]
    d1.memory.release(FRAME_GFN)
    assert gt.header(5) == (G.GTF_permit_access, 0)  # kept aside, as Xen keeps its page
    gt.map_frame(0, 0x300)
    assert struct.unpack("<HHI", d1.memory.read((0x300 << 12) + 40, 8)) == \
        (G.GTF_permit_access, 0, DATA_GFN)
    gt.map_frame(2, 0x301)  # grows the table
    assert gt.nr_frames == 3 and gt.frame_gfn("grant_table:1") == (1 << 64) - 1
    with pytest.raises(XenError) as e:  # beyond max_grant_frames
        gt.map_frame(gt.max_frames, 0x302)
    assert e.value.errno == EINVAL


def test_reserved_entries_seeded_from_hvm_params(doms) -> None:
    _, d1, _ = doms
    d1.hvm_params[HVM_PARAM_CONSOLE_PFN] = 0x1234
    d1.hvm_params[HVM_PARAM_STORE_PFN] = 0x1235
    d1.grant_table.seed_reserved()
    assert struct.unpack("<HHIHHI", d1.memory.read(FRAME_GFN << 12, 16)) == \
        (G.GTF_permit_access, 0, 0x1234, G.GTF_permit_access, 0, 0x1235)


def test_copy_pins_are_released(doms) -> None:
    _, d1, _ = doms
    grant_v1(d1, 10, 0, DATA_GFN)
    rc, buf = acquire_grant_for_copy(d1, 10, 0, False, True)
    assert rc == G.GNTST_okay and buf is not None and buf.gfn == DATA_GFN
    assert flags_v1(d1, 10) & BUSY == BUSY
    release_grant_for_copy(d1, 10, False)
    assert flags_v1(d1, 10) & BUSY == 0 and not d1.grant_table.active


# --- GNTTABOP_map_grant_ref from an HVM guest: the granted page as a memory slot -------------
HOST_GFN = 0x1000  # above the 8 MiB of RAM: where the mapping guest puts the granted page


def map_op(dom: int, ref: int, flags: int, gfn: int = HOST_GFN) -> G.gnttab_map_grant_ref:
    return G.gnttab_map_grant_ref(host_addr=gfn << 12, flags=flags, ref=ref, dom=dom)


def test_readonly_host_map_is_a_readonly_slot(doms) -> None:
    """GNTMAP_host_map|GNTMAP_readonly: Xen's p2m_grant_map_ro. One read-only host pin,
    GTF_reading only; the mapping guest's slot over the granter's page is read-only."""
    _, d1, d2 = doms
    d1.memory.write(DATA_GFN << 12, b"granted")
    grant_v1(d1, 10, 2, DATA_GFN)
    op = map_op(1, 10, G.GNTMAP_host_map | G.GNTMAP_readonly)
    map_grant_ref(d2, op)
    assert op.status == G.GNTST_okay
    assert d1.grant_table.active[10].pin == PIN_HSTR
    assert flags_v1(d1, 10) == G.GTF_permit_access | G.GTF_reading
    host = d1.memory.host_address + (DATA_GFN << 12)
    assert (HOST_GFN << 12, PAGE, host, True) in d2.machine.slots.values()
    assert C.string_at(host, 7) == b"granted"  # the slot shows the granter's page
    un = G.gnttab_unmap_grant_ref(host_addr=HOST_GFN << 12, handle=op.handle)
    unmap_grant_ref(d2, un)
    assert un.status == G.GNTST_okay
    assert flags_v1(d1, 10) == G.GTF_permit_access and 10 not in d1.grant_table.active
    assert all(gpa != HOST_GFN << 12 for gpa, *_ in d2.machine.slots.values())


def test_readonly_grant_needs_a_readonly_map(doms) -> None:
    """A GTF_readonly grant: a writable map is GNTST_general_error, flags untouched; with
    GNTMAP_readonly it maps. Beside a writable map of a writable grant the pins add up."""
    _, d1, d2 = doms
    grant_v1(d1, 10, 2, DATA_GFN, G.GTF_permit_access | G.GTF_readonly)
    op = map_op(1, 10, G.GNTMAP_host_map)
    map_grant_ref(d2, op)
    assert op.status == G.GNTST_general_error
    assert flags_v1(d1, 10) & BUSY == 0 and 10 not in d1.grant_table.active
    assert not d2.grant_maps
    op = map_op(1, 10, G.GNTMAP_host_map | G.GNTMAP_readonly)
    map_grant_ref(d2, op)
    assert op.status == G.GNTST_okay and flags_v1(d1, 10) & BUSY == G.GTF_reading
    grant_v1(d1, 11, 2, DATA_GFN)
    rw = map_op(1, 11, G.GNTMAP_host_map, HOST_GFN + 1)
    ro = map_op(1, 11, G.GNTMAP_host_map | G.GNTMAP_readonly, HOST_GFN + 2)
    map_grant_ref(d2, rw)
    map_grant_ref(d2, ro)
    assert rw.status == ro.status == G.GNTST_okay
    assert d1.grant_table.active[11].pin == PIN_HSTW + PIN_HSTR
    assert flags_v1(d1, 11) & BUSY == BUSY
    assert {gfn: readonly for gfn, (_, readonly) in d2.grant_maps.items()} == \
        {HOST_GFN: True, HOST_GFN + 1: False, HOST_GFN + 2: True}


def test_readonly_map_refused_without_readonly_slots(doms) -> None:
    """A backend without read-only slots (KVM lacking KVM_CAP_READONLY_MEM) cannot give a
    read-only mapping: refused rather than mapped writable."""
    _, d1, d2 = doms
    d2.machine.readonly_memory = False
    grant_v1(d1, 10, 2, DATA_GFN)
    op = map_op(1, 10, G.GNTMAP_host_map | G.GNTMAP_readonly)
    map_grant_ref(d2, op)
    assert op.status == G.GNTST_general_error
    assert flags_v1(d1, 10) & BUSY == 0 and 10 not in d1.grant_table.active


def test_a_grant_frame_displaced_by_shared_info_and_mapped_again_elsewhere() -> None:
    """Found by the fuzzing guest (seed 6002): shared_info mapped over a grant frame's gfn,
    moved on, then the grant frame mapped elsewhere raised KeyError inside the hypercall
    (the domain died of an internal error). The displaced frame leaves the physmap as on
    Xen, its contents kept aside, and every later placement works."""
    from pyxen.hv.memory import _place_xen_page

    d = make_domain(1)
    try:
        a, b, c = 0x3000, 0x3001, 0x3002
        d.grant_table.map_frame(0, a)
        d.grant_table.write_v1(3, G.GTF_permit_access, 0, 0x1234)
        _place_xen_page(d, "shared_info", a)  # over the grant frame
        assert d.special_frames[a] == "shared_info"
        assert "grant_table:0" not in d.grant_table.gfns  # out of the physmap
        _place_xen_page(d, "shared_info", b)
        d.grant_table.map_frame(0, c)  # raised KeyError
        assert (d.special_frames.get(b), d.special_frames.get(c)) == ("shared_info",
                                                                      "grant_table:0")
        assert a not in d.special_frames
        assert d.grant_table.header(3) == (G.GTF_permit_access, 0)  # kept aside, came back
        assert not d.memory.is_populated(a)
    finally:
        d.close()
