"""blkback's data path (pyxen.backends.blkback) against a domain built in-process: a ring
and pages the "guest" grants to domain 0, a real disk file, requests as a front end puts
them on the ring, and what the guest and the file see afterwards."""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from backends.frontring import FrontRing
from hv.test_grant_table import flags_v1, grant_v1, make_domain
from pyxen.abi import blkif as B
from pyxen.abi import grant_table as G
from pyxen.abi.ring import SRING_REQ_PROD, SRING_RSP_PROD
from pyxen.backends.blkback import BlkBack, VbdConnection
from pyxen.backends.dom0 import Dom0
from pyxen.domain.domain import Domain
from pyxen.hv.event_channel import ECS_INTERDOMAIN, ECS_UNBOUND

PAGE = 4096
RING_GFN, DATA_GFN = 0x300, 0x310
RING_REF, DATA_REF = 8, 9
DISK_SECTORS = 2048  # 1 MiB
SLOT = B.BLKIF_SLOT_SIZE


class Front(FrontRing):
    """The guest's half of the blkif ring."""

    def __init__(self, d: Domain, back: BlkBack, dom0: Dom0) -> None:
        self.back, self.dom0 = back, dom0
        self.d, self.base, self.slot_size = d, RING_GFN << 12, SLOT
        self.size, self.req_prod, self.rsp_cons = B.BLK_RING_SIZE(1), 0, 0

    def push(self, *slots: bytes) -> None:
        super().push(*slots)
        self.dom0.ring(self.back.port)  # what the guest's EVTCHNOP_send reaches

    def one(self, slot: bytes) -> tuple[int, int, int]:
        self.push(slot)
        return struct.unpack_from("<QBxh", self.responses(1, 16)[0])


def rw(op: int, req_id: int, sector: int, segs: list[tuple[int, int, int]]) -> bytes:
    raw = struct.pack("<BBH4xQQ", op, len(segs), 0, req_id, sector)
    raw += b"".join(struct.pack("<IBB2x", *s) for s in segs)
    return raw.ljust(SLOT, b"\0")


def pattern(n: int, seed: int = 1) -> bytes:
    return bytes((i * 7 + seed) & 0xFF for i in range(n))


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(DISK_SECTORS * 512))
    return path


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(4) as p:
        yield p


def connect(disk: Path, pool: ThreadPoolExecutor, readonly: bool = False,
            persistent: bool = False) -> tuple[Domain, Front, BlkBack]:
    d = make_domain(1)
    FrontRing(d, RING_GFN, SLOT)  # the page, initialised
    grant_v1(d, RING_REF, 0, RING_GFN)
    for i in range(16):
        grant_v1(d, DATA_REF + i, 0, DATA_GFN + i)
    with d.evtchn.lock:
        port = d.evtchn.get_free_port()
        chn = d.evtchn.bind(port)
        chn.state, chn.remote_domid = ECS_UNBOUND, 0
    dom0 = Dom0(d)
    raised: list[int] = []
    d.evtchn.rung_by_peer = lambda peer, ports: raised.extend(ports)  # no vCPU to raise it on
    fd = os.open(disk, os.O_RDONLY if readonly else os.O_RDWR)
    conn = VbdConnection(devid=51712, ring_refs=[RING_REF], port=port, sectors=DISK_SECTORS,
                         readonly=readonly, persistent=persistent)
    back = BlkBack(dom0, conn, fd, pool)
    back.connect()
    assert d.evtchn.ports[port].state == ECS_INTERDOMAIN
    front = Front(d, back, dom0)
    front.guest_port = port  # type: ignore[attr-defined]
    front.raised = raised  # type: ignore[attr-defined]
    return d, front, back


@pytest.mark.parametrize("persistent", [False, True])
def test_write_then_read_moves_the_bytes_and_releases_the_grants(disk, pool, persistent) -> None:
    d, front, back = connect(disk, pool, persistent=persistent)
    data = pattern(3 * PAGE)
    for i in range(3):
        d.memory.write((DATA_GFN + i) << 12, data[i * PAGE : (i + 1) * PAGE])
    segs = [(DATA_REF + i, 0, 7) for i in range(3)]
    assert front.one(rw(B.BLKIF_OP_WRITE, 0x11, 16, segs)) == (0x11, B.BLKIF_OP_WRITE, 0)
    assert disk.read_bytes()[16 * 512 : 16 * 512 + 3 * PAGE] == data
    if not persistent:  # unmapped before the response: the guest can end access at once
        assert all(flags_v1(d, DATA_REF + i) & (G.GTF_reading | G.GTF_writing) == 0
                   for i in range(3))
    # read into other pages: sectors 2..5 of one page only
    grant_v1(d, DATA_REF + 5, 0, DATA_GFN + 5)
    assert front.one(rw(B.BLKIF_OP_READ, 0x12, 17, [(DATA_REF + 5, 2, 5)])) == (0x12, 0, 0)
    got = d.memory.read(((DATA_GFN + 5) << 12) + 1024, 2048)
    assert got == data[512 : 512 + 2048]
    assert d.memory.read((DATA_GFN + 5) << 12, 1024) == bytes(1024)  # untouched
    assert front.raised == [front.guest_port] * 2  # type: ignore[attr-defined]
    back.disconnect()
    assert all(flags_v1(d, ref) & (G.GTF_reading | G.GTF_writing) == 0
               for ref in [RING_REF, *range(DATA_REF, DATA_REF + 6)])
    assert d.evtchn.ports[front.guest_port].state == ECS_UNBOUND  # type: ignore[attr-defined]


def test_bad_requests_get_blkbacks_answers(disk, pool) -> None:
    d, front, back = connect(disk, pool)
    assert front.one(rw(99, 1, 0, [])) == (1, 99, B.BLKIF_RSP_EOPNOTSUPP)
    assert front.one(rw(B.BLKIF_OP_READ, 2, DISK_SECTORS, [(DATA_REF, 0, 0)]))[2] == \
        B.BLKIF_RSP_ERROR  # beyond the end
    assert front.one(rw(B.BLKIF_OP_READ, 3, 0, [(DATA_REF, 5, 2)]))[2] == B.BLKIF_RSP_ERROR
    assert front.one(rw(B.BLKIF_OP_READ, 4, 0, [(DATA_REF, 0, 8)]))[2] == B.BLKIF_RSP_ERROR
    assert front.one(rw(B.BLKIF_OP_READ, 5, 0, [(200, 0, 7)]))[2] == B.BLKIF_RSP_ERROR
    assert front.one(rw(B.BLKIF_OP_READ, 6, 0, []))[2] == B.BLKIF_RSP_ERROR  # no segments
    grant_v1(d, DATA_REF, 0, DATA_GFN, G.GTF_permit_access | G.GTF_readonly)
    assert front.one(rw(B.BLKIF_OP_READ, 7, 0, [(DATA_REF, 0, 7)]))[2] == B.BLKIF_RSP_ERROR
    assert front.one(rw(B.BLKIF_OP_WRITE, 8, 0, [(DATA_REF, 0, 7)]))[2] == B.BLKIF_RSP_OKAY
    assert front.one(struct.pack("<BBH4xQ", B.BLKIF_OP_FLUSH_DISKCACHE, 0, 0, 9).ljust(SLOT, b"\0")) \
        == (9, B.BLKIF_OP_FLUSH_DISKCACHE, 0)
    back.disconnect()


def test_barrier_write_comes_after_every_earlier_write(disk, pool) -> None:
    d, front, back = connect(disk, pool)
    for i in range(8):
        d.memory.write((DATA_GFN + i) << 12, bytes([i + 1]) * 4096)
    writes = [rw(B.BLKIF_OP_WRITE, i, i * 8, [(DATA_REF + i, 0, 7)]) for i in range(7)]
    barrier = rw(B.BLKIF_OP_WRITE_BARRIER, 99, 0, [(DATA_REF + 7, 0, 7)])  # over sector 0
    front.push(*writes, barrier)
    front.dom0.ring(back.port)
    answers = [struct.unpack_from("<QBxh", r) for r in front.responses(8, 16)]
    assert answers[-1] == (99, B.BLKIF_OP_WRITE_BARRIER, 0)  # the barrier answers last
    assert sorted(a[0] for a in answers[:-1]) == list(range(7))
    data = disk.read_bytes()
    assert data[:4096] == bytes([8]) * 4096  # the barrier's data won over write 0's
    assert data[4096 : 7 * 4096] == b"".join(bytes([i + 1]) * 4096 for i in range(1, 7))
    back.disconnect()


def test_read_only_disk_refuses_writes_flushes_and_discards(disk, pool) -> None:
    disk.write_bytes(pattern(DISK_SECTORS * 512))
    d, front, back = connect(disk, pool, readonly=True)
    assert front.one(rw(B.BLKIF_OP_WRITE, 1, 0, [(DATA_REF, 0, 7)]))[2] == B.BLKIF_RSP_ERROR
    discard = struct.pack("<BBH4xQQQ", B.BLKIF_OP_DISCARD, 0, 0, 2, 0, 8).ljust(SLOT, b"\0")
    assert front.one(discard)[2] == B.BLKIF_RSP_ERROR
    assert front.one(rw(B.BLKIF_OP_READ, 3, 8, [(DATA_REF, 0, 7)]))[2] == B.BLKIF_RSP_OKAY
    assert d.memory.read(DATA_GFN << 12, PAGE) == pattern(DISK_SECTORS * 512)[4096:8192]
    assert disk.read_bytes() == pattern(DISK_SECTORS * 512)
    back.disconnect()


def test_discard_punches_a_hole_the_host_sees(disk, pool) -> None:
    disk.write_bytes(pattern(DISK_SECTORS * 512))
    os.sync()
    before = os.stat(disk).st_blocks
    d, front, back = connect(disk, pool)
    discard = struct.pack("<BBH4xQQQ", B.BLKIF_OP_DISCARD, 0, 0, 1, 512, 1024).ljust(SLOT, b"\0")
    assert front.one(discard) == (1, B.BLKIF_OP_DISCARD, 0)
    data = disk.read_bytes()
    assert data[512 * 512 : 1536 * 512] == bytes(512 * 1024)
    assert data[: 512 * 512] == pattern(DISK_SECTORS * 512)[: 512 * 512]
    assert os.stat(disk).st_blocks < before
    with open(disk, "rb") as f:
        assert os.lseek(f.fileno(), 0, os.SEEK_HOLE) == 512 * 512
    back.disconnect()


def test_indirect_request_carries_many_segments(disk, pool) -> None:
    d, front, back = connect(disk, pool)
    data = pattern(16 * PAGE, seed=5)
    for i in range(15):
        d.memory.write((DATA_GFN + i) << 12, data[i * PAGE : (i + 1) * PAGE])
    segs = b"".join(struct.pack("<IBB2x", DATA_REF + i, 0, 7) for i in range(15))
    d.memory.write((DATA_GFN + 15) << 12, segs)  # the indirect page
    grefs = [DATA_REF + 15] + [0] * 7
    raw = struct.pack("<BBH4xQQH2x8I", B.BLKIF_OP_INDIRECT, B.BLKIF_OP_WRITE, 15, 0x77, 64, 0,
                      *grefs).ljust(SLOT, b"\0")
    assert front.one(raw) == (0x77, B.BLKIF_OP_WRITE, 0)  # the inner operation, as blkback
    assert disk.read_bytes()[64 * 512 : 64 * 512 + 15 * PAGE] == data[: 15 * PAGE]
    back.disconnect()


def test_impossible_ring_indices_stop_the_ring_only(disk, pool) -> None:
    d, front, back = connect(disk, pool)
    broken: list[str] = []
    back.on_broken = broken.append
    d.memory.write((RING_GFN << 12) + SRING_REQ_PROD, struct.pack("<I", 1000))
    front.dom0.ring(back.port)
    deadline = time.monotonic() + 10
    while not broken and time.monotonic() < deadline:
        time.sleep(0.01)
    assert broken and "1000 requests" in broken[0]
    assert front.u32(SRING_RSP_PROD) == 0
    back.disconnect()


def test_a_back_end_connected_again_carries_on_from_the_ring(disk, pool) -> None:
    """What a save or a migration does (DataPlane.suspend, then a new back end): the ring
    stays in the guest's memory, a request posted while no back end served it is taken
    when the next one connects, and its answer follows the earlier ones."""
    d, front, back = connect(disk, pool)
    d.memory.write(DATA_GFN << 12, pattern(PAGE))
    assert front.one(rw(B.BLKIF_OP_WRITE, 0x21, 8, [(DATA_REF, 0, 7)])) == (0x21, 1, 0)
    back.disconnect()  # the domain's back ends let go at the pause
    front.push(rw(B.BLKIF_OP_READ, 0x22, 8, [(DATA_REF + 1, 0, 7)]))  # the port is unbound
    dom0 = Dom0(d)  # the back end of the restored domain's process
    again = BlkBack(dom0, back.conn, os.open(disk, os.O_RDWR), pool)
    again.connect()
    front.back, front.dom0 = again, dom0
    try:
        assert struct.unpack_from("<QBxh", front.responses(1, 16)[0]) == (0x22, 0, 0)
        assert d.memory.read((DATA_GFN + 1) << 12, PAGE) == pattern(PAGE)
        assert front.u32(SRING_RSP_PROD) == 2  # after the first answer, not over it
    finally:
        again.disconnect()
