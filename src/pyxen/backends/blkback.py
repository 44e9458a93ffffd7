"""The PV block back end's data path: Linux blkback's part for one connected vbd.

It runs in the process of the domain it serves (see `pyxen.backends.dom0`), on a thread
of its own: it takes requests off the ring, checks them as blkback does, and hands the
disk I/O to a pool of I/O threads, so a vCPU never waits for the disk and requests are
served concurrently (responses go back in completion order, each with its request's id).
The data moves between the disk file and the granted guest pages directly (preadv/
pwritev on views of guest memory), with no copy in between.

Grants: with `feature-persistent` negotiated, a data page's grant is mapped once, read-
write, and kept until the ring disconnects (up to MAX_PERSISTENT_GRANTS, Linux's default
`max_persistent_grants`; beyond that, per request). Otherwise each request maps its pages
for as long as the I/O takes, read-only where the back end only reads them (a disk write),
and unmaps them *before* its response is visible, so the front end can end access at once.

Answers as Linux blkback gives them: a malformed request (bad segment bounds, too many
segments, out of the disk, a grant that does not map) and a write to a read-only disk get
BLKIF_RSP_ERROR; an operation it does not know, and discard where it is off,
BLKIF_RSP_EOPNOTSUPP. A barrier waits for every request before it, then writes and syncs;
a flush waits likewise and syncs. Discard punches a hole (the file keeps its size)."""

from __future__ import annotations

import contextlib
import ctypes as C
import logging
import os
import struct
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from pyxen.abi import blkif as B
from pyxen.abi import grant_table as G
from pyxen.backends.dom0 import Dom0
from pyxen.backends.ring import BackRing, RingBroken
from pyxen.domain.memory import PAGE_SIZE

log = logging.getLogger("pyxen.blkback")

SECTOR = 1 << B.SECTOR_SHIFT
SECTORS_PER_PAGE = PAGE_SIZE // SECTOR
MAX_PERSISTENT_GRANTS = 1056  # Linux blkback's max_persistent_grants default
MAX_INDIRECT_SEGMENTS = 256  # what the back end offers (Linux's MAX_INDIRECT_SEGMENTS)
MAX_RING_PAGE_ORDER = 4  # Linux blkback's xen_blkif_max_ring_order default
IO_THREADS = 4

REQUEST = struct.Struct("<BBH4xQQ")  # operation, nr_segments, handle, id, sector_number
SEGMENT = struct.Struct("<IBB2x")  # gref, first_sect, last_sect
DISCARD = struct.Struct("<BBH4xQQQ")  # operation, flag, handle, id, sector, nr_sectors
INDIRECT = struct.Struct("<BBH4xQQH2x8I")  # op, indirect_op, nr_segments, id, sector, handle,
#                                              indirect_grefs[8]
RESPONSE = struct.Struct("<QBxh")  # id, operation, status
SEGMENTS_AT = B.blkif_request.seg.offset

_libc = C.CDLL(None, use_errno=True)  # the process's own libc (find_library would fork)
_libc.fallocate.argtypes = [C.c_int, C.c_int, C.c_int64, C.c_int64]
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Discard [offset, offset+length) of a file or block device, keeping its size."""
    if _libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length):
        err = C.get_errno()
        raise OSError(err, os.strerror(err))


@dataclass
class VbdConnection:
    """What the toolstack's xenbus half agreed with the front end (and knows of the disk)."""

    devid: int
    ring_refs: list[int]
    port: int
    sectors: int
    readonly: bool = False
    persistent: bool = False
    discard: bool = True
    protocol: str = B.XEN_ABI_X86_64


class BadRequest(Exception):
    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


@dataclass
class Request:
    id: int
    operation: int  # echoed in the response (an indirect request's inner operation)
    kind: int  # BLKIF_OP_READ/WRITE/... (an indirect request's indirect_op)
    sector: int = 0
    segments: list[tuple[int, int, int]] = field(default_factory=list)  # gref, first, last
    nr_sectors: int = 0
    pins: list[tuple[int, bool]] = field(default_factory=list)  # per-request pins held


class BlkBack:
    """Serves one vbd's ring until `disconnect`."""

    def __init__(self, dom0: Dom0, conn: VbdConnection, disk_fd: int,
                 pool: ThreadPoolExecutor, on_broken: Callable[[str], None] | None = None) -> None:
        if conn.protocol not in ("", B.XEN_ABI_X86_64):
            raise ValueError(f"front end protocol {conn.protocol!r} is not supported "
                             f"(only {B.XEN_ABI_X86_64})")
        if not conn.ring_refs or len(conn.ring_refs) > 1 << MAX_RING_PAGE_ORDER:
            raise ValueError(f"{len(conn.ring_refs)} ring pages (1 to "
                             f"{1 << MAX_RING_PAGE_ORDER} allowed)")
        self.dom0, self.conn, self.fd, self.pool = dom0, conn, disk_fd, pool
        self.on_broken = on_broken
        self.persistent: dict[int, int] = {}  # gref -> gfn, mapped read-write until the end
        self.wake = threading.Event()
        self.stopping = False
        self.inflight = 0
        self.idle = threading.Condition()
        self.rsp_lock = threading.Lock()
        self.ring_pins: list[tuple[int, bool]] = []
        self.port = 0
        self.thread: threading.Thread | None = None

    # --- connect / disconnect -----------------------------------------------------------------
    def connect(self) -> None:
        """Map the ring, bind the channel, start serving (ValueError: refused)."""
        gfns = []
        try:
            for ref in self.conn.ring_refs:
                rc, gfn = self.dom0.pin(ref, readonly=False)
                if rc != G.GNTST_okay:
                    raise ValueError(f"ring grant {ref} does not map (GNTST {rc})")
                self.ring_pins.append((ref, False))
                gfns.append(gfn)
            self.ring = BackRing([self.dom0.page(g) for g in gfns], self.dom0.address(gfns[0]),
                                 B.BLKIF_SLOT_SIZE)
            try:
                self.port = self.dom0.bind_interdomain(self.conn.port, self._notified)
            except Exception as e:
                raise ValueError(f"event channel {self.conn.port} does not bind: {e}") from None
        except BaseException:
            self.dom0.unpin_all(self.ring_pins)
            self.ring_pins.clear()
            raise
        self.wake.set()  # requests the front end posted while no back end served the ring
        self.thread = threading.Thread(target=self._serve, daemon=True,
                                       name=f"blkback-{self.conn.devid}")
        self.thread.start()

    def disconnect(self) -> None:
        """Stop taking requests, let those under way finish, release every grant and the
        channel (what blkback's xen_blkif_disconnect does)."""
        self.stopping = True
        self.wake.set()
        if self.thread is not None:
            self.thread.join()
        with self.idle:
            self.idle.wait_for(lambda: self.inflight == 0)
        self.dom0.unpin_all([(ref, False) for ref in self.persistent])
        self.persistent.clear()
        self.dom0.unpin_all(self.ring_pins)
        self.ring_pins.clear()
        if self.port:
            self.dom0.close(self.port)
            self.port = 0
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.fd = -1

    def _notified(self) -> None:
        self.wake.set()

    # --- the ring thread ----------------------------------------------------------------------
    def _serve(self) -> None:
        try:
            while not self.stopping:
                self.wake.wait()
                self.wake.clear()
                while not self.stopping:
                    work = self.ring.final_check_for_requests()
                    if not work:
                        break
                    for _ in range(work):
                        self._dispatch(self.ring.take_request())
        except RingBroken as e:
            log.warning("vbd %d: %s: no longer served", self.conn.devid, e)
            if self.on_broken is not None:
                self.on_broken(str(e))

    def _dispatch(self, raw: bytes) -> None:
        operation, _, _, req_id, sector = REQUEST.unpack_from(raw)
        req = Request(req_id, operation, operation, sector)
        try:
            self._parse(req, raw)
            self._check(req)
            if req.kind in (B.BLKIF_OP_WRITE_BARRIER, B.BLKIF_OP_FLUSH_DISKCACHE):
                self._drain()
            self._map(req)
        except BadRequest as e:
            log.debug("vbd %d: request %#x: %s", self.conn.devid, req_id, e)
            self._respond(req, e.status)
            return
        with self.idle:
            self.inflight += 1
        self.pool.submit(self._do, req)

    def _parse(self, req: Request, raw: bytes) -> None:
        op = req.operation
        if op in (B.BLKIF_OP_READ, B.BLKIF_OP_WRITE, B.BLKIF_OP_WRITE_BARRIER):
            nr = raw[1]
            if nr == 0 and op != B.BLKIF_OP_WRITE_BARRIER or nr > B.BLKIF_MAX_SEGMENTS_PER_REQUEST:
                raise BadRequest(B.BLKIF_RSP_ERROR, f"{nr} segments")
            req.segments = [SEGMENT.unpack_from(raw, SEGMENTS_AT + i * SEGMENT.size)[:3]
                            for i in range(nr)]
        elif op == B.BLKIF_OP_FLUSH_DISKCACHE:
            pass
        elif op == B.BLKIF_OP_DISCARD:
            if not self.conn.discard:
                raise BadRequest(B.BLKIF_RSP_EOPNOTSUPP, "discard is off")
            req.nr_sectors = DISCARD.unpack_from(raw)[5]
        elif op == B.BLKIF_OP_INDIRECT:
            fields = INDIRECT.unpack_from(raw)
            req.kind = req.operation = fields[1]  # blkback answers with the inner operation
            nr = fields[2]
            if req.kind not in (B.BLKIF_OP_READ, B.BLKIF_OP_WRITE):
                raise BadRequest(B.BLKIF_RSP_ERROR, f"indirect operation {req.kind}")
            if not 0 < nr <= MAX_INDIRECT_SEGMENTS:
                raise BadRequest(B.BLKIF_RSP_ERROR, f"{nr} indirect segments")
            req.segments = self._indirect_segments(fields[6:], nr)
        else:
            raise BadRequest(B.BLKIF_RSP_EOPNOTSUPP, f"operation {op}")

    def _indirect_segments(self, grefs: tuple[int, ...], nr: int) -> list[tuple[int, int, int]]:
        pages = -(-nr // B.SEGMENTS_PER_INDIRECT_FRAME)
        segments: list[tuple[int, int, int]] = []
        for gref in grefs[:pages]:
            gfn = self.persistent.get(gref)
            pinned = gfn is None
            if gfn is None:
                rc, gfn = self.dom0.pin(gref, readonly=True)
                if rc != G.GNTST_okay:
                    raise BadRequest(B.BLKIF_RSP_ERROR, f"indirect page grant {gref}: GNTST {rc}")
            try:
                data = bytes(self.dom0.page(gfn))
            finally:
                if pinned:
                    self.dom0.unpin(gref, readonly=True)
            count = min(nr - len(segments), B.SEGMENTS_PER_INDIRECT_FRAME)
            segments += [SEGMENT.unpack_from(data, i * SEGMENT.size)[:3] for i in range(count)]
        return segments

    def _check(self, req: Request) -> None:
        """xen_vbd_translate's and the segment checks."""
        if req.kind == B.BLKIF_OP_FLUSH_DISKCACHE:
            if self.conn.readonly:
                raise BadRequest(B.BLKIF_RSP_ERROR, "flush of a read-only disk")
            return
        if req.kind != B.BLKIF_OP_DISCARD:
            for _, first, last in req.segments:
                if first > last or last >= SECTORS_PER_PAGE:
                    raise BadRequest(B.BLKIF_RSP_ERROR, f"segment sectors {first}..{last}")
            req.nr_sectors = sum(last - first + 1 for _, first, last in req.segments)
        if req.kind != B.BLKIF_OP_READ and self.conn.readonly:
            raise BadRequest(B.BLKIF_RSP_ERROR, "write to a read-only disk")
        if req.sector + req.nr_sectors > self.conn.sectors or req.sector >= 1 << 55:
            raise BadRequest(B.BLKIF_RSP_ERROR,
                             f"sectors {req.sector}+{req.nr_sectors} beyond the disk's "
                             f"{self.conn.sectors}")

    def _map(self, req: Request) -> None:
        """The data pages, as frames: persistent where negotiated, else pinned now."""
        readonly = req.kind != B.BLKIF_OP_READ  # the back end only reads what it writes out
        frames = []
        for gref, first, last in req.segments:
            gfn = self.persistent.get(gref)
            if gfn is None and self.conn.persistent and len(self.persistent) < MAX_PERSISTENT_GRANTS:
                rc, mapped = self.dom0.pin(gref, readonly=False)
                if rc == G.GNTST_okay:
                    gfn = self.persistent[gref] = mapped
            if gfn is None:  # not persistent (or granted read-only): for this request only
                rc, gfn = self.dom0.pin(gref, readonly)
                if rc != G.GNTST_okay:
                    self._unmap(req)
                    raise BadRequest(B.BLKIF_RSP_ERROR, f"grant {gref}: GNTST {rc}")
                req.pins.append((gref, readonly))
            frames.append((gfn, first, last))
        req.segments = frames

    def _unmap(self, req: Request) -> None:
        self.dom0.unpin_all(req.pins)
        req.pins.clear()

    def _drain(self) -> None:
        with self.idle:
            self.idle.wait_for(lambda: self.inflight == 0)

    # --- on an I/O thread ---------------------------------------------------------------------
    def _do(self, req: Request) -> None:
        status = B.BLKIF_RSP_OKAY
        try:
            try:
                self._io(req)
            except OSError as e:
                log.warning("vbd %d: %s of sectors %d+%d: %s", self.conn.devid,
                            _OP_NAMES.get(req.kind, req.kind), req.sector, req.nr_sectors, e)
                status = B.BLKIF_RSP_ERROR
            self._unmap(req)
            self._respond(req, status)
        except Exception:  # a bug of ours: logged, and never a request left in flight
            log.exception("vbd %d: request %#x", self.conn.devid, req.id)
        finally:
            with self.idle:
                self.inflight -= 1
                self.idle.notify_all()

    def _io(self, req: Request) -> None:
        offset = req.sector * SECTOR
        if req.kind == B.BLKIF_OP_DISCARD:
            if req.nr_sectors:
                punch_hole(self.fd, offset, req.nr_sectors * SECTOR)
            return
        if req.kind == B.BLKIF_OP_FLUSH_DISKCACHE:
            os.fdatasync(self.fd)
            return
        views = [self.dom0.page(gfn)[first * SECTOR : (last + 1) * SECTOR]
                 for gfn, first, last in req.segments]
        try:
            if req.kind == B.BLKIF_OP_READ:
                _transfer(os.preadv, self.fd, views, offset)
                for gfn, first, last in req.segments:
                    self.dom0.wrote(gfn, first * SECTOR, (last - first + 1) * SECTOR)
            else:
                if req.kind == B.BLKIF_OP_WRITE_BARRIER:
                    os.fdatasync(self.fd)
                _transfer(os.pwritev, self.fd, views, offset)
                if req.kind == B.BLKIF_OP_WRITE_BARRIER:
                    os.fdatasync(self.fd)
        finally:
            for view in views:
                view.release()

    def _respond(self, req: Request, status: int) -> None:
        with self.rsp_lock:
            if self.stopping and self.port == 0:
                return
            self.ring.put_response(RESPONSE.pack(req.id, req.operation, status))
            notify = self.ring.push_responses_and_check_notify()
        if notify:
            self.dom0.notify(self.port)


_OP_NAMES = {B.BLKIF_OP_READ: "read", B.BLKIF_OP_WRITE: "write",
             B.BLKIF_OP_WRITE_BARRIER: "barrier write", B.BLKIF_OP_FLUSH_DISKCACHE: "flush",
             B.BLKIF_OP_DISCARD: "discard"}


def _transfer(call: Callable[..., int], fd: int, views: list[memoryview], offset: int) -> None:
    """preadv/pwritev until every byte moved (a short transfer continues; end of file on a
    read is an error: the disk shrank under the domain)."""
    total = sum(len(v) for v in views)
    done = 0
    while done < total:
        n = call(fd, views, offset + done)
        if n <= 0:
            raise OSError(5, "end of disk")  # EIO
        done += n
        if done < total:
            views = _advance(views, n)


def _advance(views: list[memoryview], n: int) -> list[memoryview]:
    while n:
        if n >= len(views[0]):
            n -= len(views[0])
            views = views[1:]
        else:
            views = [views[0][n:], *views[1:]]
            n = 0
    return views
