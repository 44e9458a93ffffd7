"""HYPERVISOR_grant_table_op and each domain's grant table (xen/common/grant_table.c).

A domain's shared grant frames (v1 or v2 entries) and, for v2, its status frames are Xen's
pages: while the guest has one mapped (XENMEM_add_to_physmap) it lives in guest RAM at that
frame, which is the page the guest writes; while unmapped pyxen keeps its contents aside, as
Xen keeps the page. The active entries (pin counts) and the maptrack (handles of the grants
this domain mapped) are pyxen's own, as in Xen. GTF_reading/GTF_writing are set and cleared
with real atomic instructions, because the granting guest updates the same words itself.

An HVM guest reaches only the sub-ops Xen's hvm_grant_table_op lets through (query_size,
setup_table, set_version, get_version, copy, map/unmap_grant_ref, swap_grant_ref); the others
are -ENOSYS, as on Xen. GNTTABOP_map_grant_ref puts the granted page itself at the
guest-physical host_addr: one more memory slot of the vCPU backend over the granting
domain's memfd page (Domain.grant_maps), so both frames show the same page. With
GNTMAP_readonly the slot is read-only (Xen's p2m_grant_map_ro): the guest's writes there are
dropped (see Vcpu._mmio).
GrantMapper is the backend side (what dom0 does through gntdev).

Between domain processes (host mode) the granting domain's checks and pins run in its own
process (`RemotePeer.map_grant`, `acquire_for_copy`...); the mapping domain's process
then maps only the granted page of the granter's memfd (`RemotePeer.page`), and grant copy
reads and writes only the granted range of it. A GNTTABOP_copy batch acquires all the
remote grants it names in one call per granting process and releases them in one
(`RemoteCopies`).
"""

from __future__ import annotations

import ctypes as C
import logging
import struct
import threading
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyxen.abi import grant_table as G
from pyxen.abi.errno import EBUSY, EINVAL, ENOSYS, EPERM, ERANGE, ESRCH, XenError
from pyxen.abi.hvm import HVM_PARAM_CONSOLE_PFN, HVM_PARAM_STORE_PFN
from pyxen.abi.memory import XENMAPIDX_grant_table_status
from pyxen.abi.xen import DOMID_FIRST_RESERVED, DOMID_SELF, HYPERVISOR_grant_table_op
from pyxen.domain.memory import PAGE_SHIFT, PAGE_SIZE
from pyxen.domain.saved import Saved

from . import atomic
from .event_channel import BACKEND_DOMID
from .hypercall import HypercallTable, subop_describer
from .remote import ForeignPage, Links, RemotePeer, travels_with

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from pyxen.domain.domain import Domain
    from pyxen.domain.vcpu import Vcpu

    from .guest_access import GuestAccess

INITIAL_NR_GRANT_FRAMES = 1
V1_PER_PAGE = PAGE_SIZE // 8
V2_PER_PAGE = PAGE_SIZE // 16
STATUS_PER_PAGE = PAGE_SIZE // 2
MAPTRACK_PER_PAGE = PAGE_SIZE // 16
MAX_MAPTRACK_FRAMES = 1024  # Xen's gnttab_max_maptrack_frames default
INVALID_GFN = (1 << 64) - 1
PIN_HSTW, PIN_HSTR, PIN_DEVW, PIN_DEVR = 1, 1 << 8, 1 << 16, 1 << 24
PIN_WRITERS = 0xFF | 0xFF << 16  # host + device writable mappings
PIN_OVERFLOW = 0x80808080
HVM_SUBOPS = {G.GNTTABOP_query_size, G.GNTTABOP_setup_table, G.GNTTABOP_set_version,
              G.GNTTABOP_get_version, G.GNTTABOP_copy, G.GNTTABOP_map_grant_ref,
              G.GNTTABOP_unmap_grant_ref, G.GNTTABOP_swap_grant_ref}
SUBOPS = {v: k for k, v in vars(G).items() if k.startswith("GNTTABOP_")}



def grant_to_status_frames(frames: int) -> int:
    return -(-frames * V2_PER_PAGE // STATUS_PER_PAGE)


def status_to_grant_frames(frames: int) -> int:
    return -(-frames * STATUS_PER_PAGE // V2_PER_PAGE)


class GrantStatus(Exception):
    """A grant operation failed with a GNTST_* status (the backend API raises it)."""

    def __init__(self, status: int, why: str = "") -> None:
        super().__init__(f"GNTST {status}: {why}" if why else f"GNTST {status}")
        self.status = status


@dataclass
class Active:
    """Xen's active_grant_entry: who uses a granted entry and how often (pin counts)."""

    pin: int = 0
    domid: int = 0
    gfn: int = 0  # the granting (or, transitive, the final) domain's frame
    start: int = 0
    length: int = PAGE_SIZE
    is_sub_page: bool = False
    trans_domain: Domain | None = None
    trans_gref: int = 0


@dataclass
class Mapping:
    """Xen's grant_mapping: one maptrack handle of the domain that mapped a grant."""

    ref: int
    flags: int
    domid: int
    host_gfn: int = 0
    host: int = 0  # where this process sees the granted page (0: not host-mapped)
    granter: RemotePeer | None = None  # a granting domain in another process
    page: ForeignPage | None = None  # that domain's page, mapped here


class GrantTable:
    """One domain's grant table: frames, version, active entries, maptrack."""

    def __init__(self, domain: Domain, max_frames: int) -> None:
        self.d = domain
        self.version = 1
        self.max_frames = max_frames
        self.nr_frames = 0
        self.nr_status = 0
        self.gfns: dict[str, int] = {}  # "grant_table:i" / "grant_status:i" → guest frame
        self.aside: dict[str, bytearray] = {}  # contents of the frames not mapped now
        self.active: dict[int, Active] = {}
        self.maptrack: list[Mapping | None] = []
        self.free_handles: deque[int] = deque()
        # after a restore: mappings of other domains' grants to make again, and the domains
        # that pinned this domain's grants (see save_state)
        self.to_reattach: list[tuple[int, int, int, int, int]] = []
        self.mapped_by: set[int] = set()
        self.lock = threading.RLock()
        self.grow(INITIAL_NR_GRANT_FRAMES)

    # --- frames ----------------------------------------------------------------------------
    def grow(self, frames: int) -> None:
        """gnttab_grow_table: at least `frames` shared frames (and v2 status frames)."""
        frames = max(frames, INITIAL_NR_GRANT_FRAMES)
        for i in range(self.nr_frames, frames):
            self.aside[f"grant_table:{i}"] = bytearray(PAGE_SIZE)
        self.nr_frames = max(self.nr_frames, frames)
        if self.version == 2:
            self._populate_status(self.nr_frames)

    def _populate_status(self, frames: int) -> None:
        want = grant_to_status_frames(frames)
        for i in range(self.nr_status, want):
            self.aside[f"grant_status:{i}"] = bytearray(PAGE_SIZE)
        self.nr_status = max(self.nr_status, want)

    def nr_entries(self) -> int:
        return self._entries(self.version, self.nr_frames)

    @staticmethod
    def _entries(version: int, frames: int) -> int:
        return frames * (V1_PER_PAGE if version == 1 else V2_PER_PAGE)

    def frame_gfn(self, key: str) -> int:
        """The guest frame a grant (or status) frame is mapped at, INVALID_GFN if none."""
        return self.gfns.get(key, INVALID_GFN)

    def _where(self, key: str, offset: int) -> tuple[bytearray | C.Array, int, int | None]:
        """(buffer, offset in it, host address or None) of byte `offset` of frame `key`."""
        gfn = self.gfns.get(key)
        if gfn is None:
            return self.aside[key], offset, None
        gpa = (gfn << PAGE_SHIFT) + offset
        return self.d.memory.map, gpa, self.d.memory.host_address + gpa  # type: ignore[return-value]

    def page_bytes(self, key: str) -> bytes:
        buf, off, _ = self._where(key, 0)
        return bytes(buf[off : off + PAGE_SIZE])

    def map_frame(self, raw_idx: int, gfn: int) -> None:
        """XENMEM_add_to_physmap(XENMAPSPACE_grant_table): gnttab_map_frame."""
        with self.lock:
            if self.version == 2 and raw_idx & XENMAPIDX_grant_table_status:
                idx = raw_idx & ~XENMAPIDX_grant_table_status
                if idx >= self.nr_status:
                    nr_grant = status_to_grant_frames(idx + 1)
                    if grant_to_status_frames(nr_grant) == idx + 1 and \
                            nr_grant <= self.max_frames:
                        self.grow(nr_grant)
                    if idx >= self.nr_status:
                        raise XenError(EINVAL)
                key = f"grant_status:{idx}"
            else:
                idx = raw_idx
                if idx >= self.nr_frames and idx + 1 <= self.max_frames:
                    self.grow(idx + 1)
                if idx >= self.nr_frames:
                    raise XenError(EINVAL)
                key = f"grant_table:{idx}"
            self._place(key, gfn)

    def _place(self, key: str, gfn: int) -> None:
        d = self.d
        if not d.memory.gfn_backed(gfn):
            raise XenError(EINVAL, f"gfn {gfn:#x} is outside the domain's physical memory")
        old = self.gfns.get(key)
        if old == gfn:
            return
        contents = self.page_bytes(key)
        d.special_frame_leaves(gfn)  # a Xen page there (another grant frame, shared_info)
        d.memory.populate(gfn)
        d.memory.write(gfn << PAGE_SHIFT, contents)
        d.special_frames[gfn] = key
        self.gfns[key] = gfn
        self.aside.pop(key, None)
        if old is not None and d.special_frames.get(old) == key:
            del d.special_frames[old]
            d.memory.release(old)  # the old frame is left empty, as in Xen

    def frame_unmapped(self, key: str) -> None:
        """The guest removed frame `key` from its physmap: keep its contents aside."""
        with self.lock:
            gfn = self.gfns.get(key)
            if gfn is None:
                return
            self.aside[key] = bytearray(self.page_bytes(key))
            del self.gfns[key]

    def _drop_status_frames(self) -> None:
        """Leaving v2: the status frames go, from the physmap too (as Xen's p2m removal)."""
        with self.d.memory_lock:
            for i in range(self.nr_status):
                key = f"grant_status:{i}"
                gfn = self.gfns.pop(key, None)
                if gfn is not None:
                    self.d.special_frames.pop(gfn, None)
                    self.d.memory.release(gfn)
                self.aside.pop(key, None)
            self.nr_status = 0
            self.d.memory.commit()

    # --- save / restore ------------------------------------------------------------------------
    def save_state(self, links: Links = False) -> dict[str, object]:
        """Version, frames and where they are mapped; a frame not in the physmap travels
        here, a mapped one as a page. Grants in use between this domain and domains in
        other processes that `links` covers travel too: its mappings of their grants
        ("maps", mapped again by `reattach`), and which of its grants they pin ("pinned":
        their processes map them again when asked, `remap_for_peer`). Other grants in
        use: ValueError says so."""
        with self.lock:
            pinned = {}
            for ref, act in self.active.items():  # domain 0's back ends: see EventChannels
                if act.pin and act.domid != BACKEND_DOMID and \
                        (act.domid in self.d.peers or not travels_with(links, act.domid)):
                    raise ValueError(f"grant {ref} is in use by domain {act.domid}, "
                                     "which stays on this host")
                if act.pin:
                    pinned[str(ref)] = act.domid
            maps = []
            for handle, m in enumerate(self.maptrack):
                if m is not None and (m.granter is None or not travels_with(links, m.domid)):
                    raise ValueError(f"the domain maps a grant of domain {m.domid}, which "
                                     "stays on this host")
                if m is not None:
                    maps.append([handle, m.ref, m.flags, m.domid, m.host_gfn])
            return {"version": self.version, "nr_frames": self.nr_frames,
                    "nr_status": self.nr_status, "gfns": dict(self.gfns),
                    "aside": {key: bytes(page).hex() for key, page in self.aside.items()},
                    "maps": maps, "pinned": pinned}

    def writable_granted_frames(self) -> set[int]:
        """The frames this domain grants writable access to: another domain may write them
        (a copy, a mapping) without this domain's dirty log seeing it, so a migration's last
        round sends them whatever the log says."""
        frames = set()
        with self.lock:
            for ref in range(self.nr_entries()):
                flags, _ = self.header(ref)
                if flags & G.GTF_type_mask == G.GTF_permit_access and \
                        not flags & G.GTF_readonly:
                    frames.add(self.entry_frame(ref))
        return {gfn for gfn in frames if self.d.memory.is_populated(gfn)}

    def load_state(self, state: object) -> None:
        """The counterpart of save_state, into a fresh table (the frames' guest pages are
        in memory already, and the domain's special frames name them)."""
        saved = Saved(state, "grant table")
        version = saved.int("version", 1, 2)
        nr_frames = saved.int("nr_frames", INITIAL_NR_GRANT_FRAMES, self.max_frames)
        nr_status = saved.int("nr_status", hi=grant_to_status_frames(self.max_frames))
        keys = {f"grant_table:{i}" for i in range(nr_frames)} | \
            {f"grant_status:{i}" for i in range(nr_status)}
        gfns, aside = saved.sub("gfns"), saved.sub("aside")
        placed = {key: gfns.int(key, hi=self.d.memory.max_gfn) for key in gfns.data}
        kept = {key: bytearray(aside.hex(key, PAGE_SIZE)) for key in aside.data}
        if set(placed) | set(kept) != keys or set(placed) & set(kept) or \
                len(set(placed.values())) != len(placed):
            raise ValueError("the saved grant table's frames do not add up")
        for key, gfn in placed.items():
            if not self.d.memory.is_populated(gfn):
                raise ValueError(f"the saved grant table's {key} is at {gfn:#x}, not in RAM")
        rows = saved.data.get("maps", [])  # older saves had none
        if not isinstance(rows, list) or len(rows) > MAX_MAPTRACK_FRAMES * MAPTRACK_PER_PAGE:
            raise ValueError("the saved grant table's mappings are not a list of them")
        maps = [self._saved_mapping(row) for row in rows]
        pinned = Saved(saved.data.get("pinned", {}), "grant table pinned")
        pins = {}  # ref -> the domain that pinned it
        for key in pinned.data:
            if not key.isdigit() or int(key) >= self._entries(version, nr_frames):
                raise ValueError("the saved grant table's pinned grants are not its entries")
            pins[int(key)] = pinned.int(key, hi=DOMID_FIRST_RESERVED - 1)
        with self.lock:
            self.version, self.nr_frames, self.nr_status = version, nr_frames, nr_status
            self.gfns, self.aside = placed, kept
            # Their pins went with the old process: the domains that hold them pin again
            # (remap_for_peer), which sets the flags again.
            for ref in pins:
                self.clear_status_bits(ref, G.GTF_reading | G.GTF_writing)
            self.mapped_by = set(pins.values())
            self.to_reattach = maps
            if maps:
                top = max(row[0] for row in maps)
                pages = top // MAPTRACK_PER_PAGE + 1
                self.maptrack = [None] * (pages * MAPTRACK_PER_PAGE)
                held = {row[0] for row in maps}
                self.free_handles = deque(h for h in range(len(self.maptrack))
                                          if h not in held)

    def _saved_mapping(self, row: object) -> tuple[int, int, int, int, int]:
        """One saved mapping of another domain's grant: (handle, ref, flags, domid, gfn)."""
        if not isinstance(row, list) or len(row) != 5 or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in row):
            raise ValueError("a saved grant mapping is malformed")
        handle, ref, flags, domid, gfn = row
        if not (0 <= handle < MAX_MAPTRACK_FRAMES * MAPTRACK_PER_PAGE and 0 <= ref < 1 << 32
                and flags & ~(G.GNTMAP_host_map | G.GNTMAP_readonly) == 0
                and flags & G.GNTMAP_host_map and 0 < domid < DOMID_FIRST_RESERVED
                and domid != self.d.domid and self.d.memory.gfn_backed(gfn)):
            raise ValueError(f"the saved grant mapping {row} is not one pyxen makes")
        return handle, ref, flags, domid, gfn

    # --- entries ------------------------------------------------------------------------------
    def _entry(self, ref: int) -> tuple[bytearray | C.Array, int, int | None]:
        per = V1_PER_PAGE if self.version == 1 else V2_PER_PAGE
        size = PAGE_SIZE // per
        return self._where(f"grant_table:{ref // per}", ref % per * size)

    def _status(self, ref: int) -> tuple[bytearray | C.Array, int, int | None]:
        if self.version == 1:
            return self._entry(ref)
        return self._where(f"grant_status:{ref // STATUS_PER_PAGE}", ref % STATUS_PER_PAGE * 2)

    def header(self, ref: int) -> tuple[int, int]:
        """(flags, domid) of entry `ref`."""
        buf, off, _ = self._entry(ref)
        return struct.unpack_from("<HH", buf, off)  # type: ignore[return-value]

    def entry_frame(self, ref: int) -> int:
        buf, off, _ = self._entry(ref)
        return struct.unpack_from("<I" if self.version == 1 else "<Q", buf,
                                  off + (4 if self.version == 1 else 8))[0]

    def sub_page(self, ref: int) -> tuple[int, int]:
        buf, off, _ = self._entry(ref)
        return struct.unpack_from("<HH", buf, off + 4)  # type: ignore[return-value]

    def transitive(self, ref: int) -> tuple[int, int]:
        """(trans_domid, gref) of a v2 transitive entry."""
        buf, off, _ = self._entry(ref)
        domid = struct.unpack_from("<H", buf, off + 4)[0]
        return domid, struct.unpack_from("<I", buf, off + 8)[0]

    def status_word(self, ref: int) -> int:
        buf, off, _ = self._status(ref)
        return struct.unpack_from("<H", buf, off)[0]

    def set_status_bits(self, ref: int, bits: int) -> None:
        buf, off, addr = self._status(ref)
        if addr is None:
            struct.pack_into("<H", buf, off, struct.unpack_from("<H", buf, off)[0] | bits)
        else:
            atomic.or16(addr, bits)

    def clear_status_bits(self, ref: int, bits: int) -> None:
        buf, off, addr = self._status(ref)
        if addr is None:
            struct.pack_into("<H", buf, off, struct.unpack_from("<H", buf, off)[0] & ~bits)
        else:
            atomic.and_not16(addr, bits)

    def _cmpxchg_header(self, ref: int, old: int, new: int) -> int:
        """Compare-and-swap the (flags, domid) word of entry `ref`; the value found."""
        buf, off, addr = self._entry(ref)
        if addr is None:
            cur = struct.unpack_from("<I", buf, off)[0]
            if cur == old:
                struct.pack_into("<I", buf, off, new)
            return cur
        return atomic.cmpxchg32(addr, old, new)

    def write_v1(self, ref: int, flags: int, domid: int, frame: int) -> None:
        buf, off, _ = self._entry(ref)
        struct.pack_into("<HHI", buf, off, flags, domid, frame)

    def seed_reserved(self, backend_domid: int = 0) -> None:
        """xc_dom_gnttab_seed: entries 0 (console ring) and 1 (xenstore ring), granted to the
        backend domain, for the rings whose HVM params are set when the domain starts."""
        params = self.d.hvm_params
        with self.lock:
            for ref, param in ((G.GNTTAB_RESERVED_CONSOLE, HVM_PARAM_CONSOLE_PFN),
                               (G.GNTTAB_RESERVED_XENSTORE, HVM_PARAM_STORE_PFN)):
                if params[param] and self.version == 1:
                    self.write_v1(ref, G.GTF_permit_access, backend_domid, params[param])

    # --- pin / status (Xen's _set_status) -------------------------------------------------
    def set_status(self, ref: int, act: Active, readonly: bool, mapflag: bool,
                   ldomid: int) -> int:
        mask = G.GTF_type_mask | (G.GTF_sub_page if mapflag else 0)
        if self.version == 1:
            flags, domid = self.header(ref)
            for retry in range(5):
                if not act.pin and ((flags & mask) != G.GTF_permit_access or domid != ldomid):
                    return G.GNTST_general_error
                new = flags | G.GTF_reading
                if not readonly:
                    if flags & G.GTF_readonly:
                        return G.GNTST_general_error
                    new |= G.GTF_writing
                old = flags | domid << 16
                found = self._cmpxchg_header(ref, old, new | domid << 16)
                if found == old:
                    return G.GNTST_okay
                flags, domid = found & 0xFFFF, found >> 16
                del retry
            return G.GNTST_general_error

        def bad(flags: int, domid: int) -> bool:
            kind = flags & mask
            return kind not in (G.GTF_permit_access, G.GTF_transitive) or domid != ldomid

        flags, domid = self.header(ref)
        if not act.pin and bad(flags, domid):
            return G.GNTST_general_error
        if not readonly and flags & G.GTF_readonly:
            return G.GNTST_general_error
        self.set_status_bits(ref, G.GTF_reading | (0 if readonly else G.GTF_writing))
        flags, domid = self.header(ref)
        if not act.pin:
            if bad(flags, domid) or (not readonly and flags & G.GTF_readonly):
                self.clear_status_bits(ref, G.GTF_reading | G.GTF_writing)
                return G.GNTST_general_error
        elif flags & G.GTF_readonly:
            self.clear_status_bits(ref, G.GTF_writing)
            return G.GNTST_general_error
        return G.GNTST_okay

    def release_flags(self, ref: int, act: Active, readonly: bool) -> None:
        """Clear GTF_writing/GTF_reading once no pin needs them."""
        bits = 0
        if not readonly and not act.pin & PIN_WRITERS:
            bits |= G.GTF_writing
        if not act.pin:
            bits |= G.GTF_reading
        if bits:
            self.clear_status_bits(ref, bits)

    # --- maptrack -------------------------------------------------------------------------------
    def get_handle(self) -> int | None:
        if not self.free_handles:
            if len(self.maptrack) >= MAX_MAPTRACK_FRAMES * MAPTRACK_PER_PAGE:
                return None
            first = len(self.maptrack)
            self.maptrack.extend([None] * MAPTRACK_PER_PAGE)
            self.free_handles.extend(range(first + 1, first + MAPTRACK_PER_PAGE))
            return first
        return self.free_handles.popleft()

    def put_handle(self, handle: int) -> None:
        self.maptrack[handle] = None
        self.free_handles.append(handle)


def gnttab(d: Domain) -> GrantTable:
    return d.grant_table  # type: ignore[no-any-return]


def get_paged_frame(rd: Domain, gfn: int) -> int:
    """GNTST_okay if `gfn` is RAM of `rd` that a grant may name, else GNTST_bad_page."""
    return G.GNTST_okay if rd.memory.is_populated(gfn) else G.GNTST_bad_page


# --- copy (acquire_grant_for_copy / release_grant_for_copy) --------------------------------------
@dataclass
class CopyBuf:
    domain: Domain | None  # None: `remote`'s
    gfn: int
    offset: int
    length: int
    ref: int | None = None  # the grant held, if any
    readonly: bool = True
    holder: Domain | None = None  # the domain whose grant `ref` is
    remote: RemotePeer | None = None  # a granting domain in another process

    def read(self, offset: int, length: int) -> bytes:
        """The bytes; a remote page that cannot be read gives fewer (see copy_one)."""
        if self.remote is not None:
            try:
                return self.remote.read(self.gfn, offset, length)
            except OSError:
                return b""
        assert self.domain is not None
        return self.domain.memory.read((self.gfn << PAGE_SHIFT) + offset, length)

    def write(self, offset: int, data: bytes) -> bool:
        """Whether the bytes landed (a remote page may fail)."""
        if self.remote is not None:
            try:
                self.remote.write(self.gfn, offset, data)
            except OSError:
                return False
            return True
        assert self.domain is not None
        self.domain.memory.write((self.gfn << PAGE_SHIFT) + offset, data)
        return True


def acquire_grant_for_copy(rd: Domain, gref: int, ldom: int, readonly: bool,
                           allow_transitive: bool) -> tuple[int, CopyBuf | None]:
    rgt = gnttab(rd)
    with rgt.lock:
        if gref >= rgt.nr_entries():
            return G.GNTST_bad_gntref, None
        rc, buf = _acquire_for_copy(rd, rgt, gref, ldom, readonly, allow_transitive)
        if rc != G.GNTST_okay and not rgt.active[gref].pin:
            del rgt.active[gref]  # a refusal leaves the entry inactive, as it found it
        return rc, buf


def _acquire_for_copy(rd: Domain, rgt: GrantTable, gref: int, ldom: int, readonly: bool,
                      allow_transitive: bool) -> tuple[int, CopyBuf | None]:
    """acquire_grant_for_copy's checks and pin, under rgt.lock."""
    act = rgt.active.setdefault(gref, Active())
    if act.pin and (act.domid != ldom or act.pin & PIN_OVERFLOW):
        return G.GNTST_general_error, None
    old_pin = act.pin
    flags = rgt.header(gref)[0]
    if rgt.version == 2 and flags & G.GTF_type_mask == G.GTF_transitive:
        if not old_pin or (not readonly and not old_pin & PIN_WRITERS):
            rc = rgt.set_status(gref, act, readonly, False, ldom)
            if rc != G.GNTST_okay:
                return rc, None
        trans_domid, trans_gref = rgt.transitive(gref)
        td = rd.peers.get(trans_domid) if trans_domid != rd.domid else None
        if not allow_transitive or td is None:
            rgt.release_flags(gref, act, readonly)
            return G.GNTST_general_error, None
        rc, inner = acquire_grant_for_copy(td, trans_gref, rd.domid, readonly, False)
        if rc != G.GNTST_okay or inner is None:
            rgt.release_flags(gref, act, readonly)
            return rc, None
        if not old_pin:
            act.domid, act.start, act.length = ldom, inner.offset, inner.length
            act.trans_domain, act.trans_gref, act.gfn = td, trans_gref, inner.gfn
            act.is_sub_page = True
    elif not old_pin or (not readonly and not old_pin & PIN_WRITERS):
        rc = rgt.set_status(gref, act, readonly, False, ldom)
        if rc != G.GNTST_okay:
            return rc, None
        if rgt.version == 2 and flags & G.GTF_sub_page:
            start, length = rgt.sub_page(gref)
            sub = True
        else:
            start, length, sub = 0, PAGE_SIZE, False
        gfn = rgt.entry_frame(gref)
        rc = get_paged_frame(rd, gfn)
        if rc != G.GNTST_okay:
            rgt.release_flags(gref, act, readonly)
            return rc, None
        if not act.pin:
            act.domid, act.is_sub_page, act.start, act.length = ldom, sub, start, length
            act.trans_domain, act.trans_gref, act.gfn = rd, gref, gfn
    act.pin += PIN_HSTR if readonly else PIN_HSTW
    owner = act.trans_domain or rd
    return G.GNTST_okay, CopyBuf(owner, act.gfn, act.start, act.length, gref, readonly)


def release_grant_for_copy(rd: Domain, gref: int, readonly: bool) -> None:
    rgt = gnttab(rd)
    with rgt.lock:
        act = rgt.active[gref]
        act.pin -= PIN_HSTR if readonly else PIN_HSTW
        if rgt.version == 2:
            td, trans_gref = act.trans_domain, act.trans_gref
        else:
            td, trans_gref = rd, gref
        rgt.release_flags(gref, act, readonly)
        if not act.pin:
            del rgt.active[gref]
    if td is not None and td is not rd:
        release_grant_for_copy(td, trans_gref, readonly)


COPY_WINDOW = 256  # segments of one GNTTABOP_copy whose remote grants are acquired together


class RemoteCopies:
    """The grants of domains in other processes that a run of GNTTABOP_copy segments names,
    acquired with ONE request per granting process before the run's first segment and
    released with one after its last, so a batch costs two round trips per peer, not two
    per segment. Xen acquires each grant when its segment comes and keeps it while the next
    segments name the same one (gnttab_copy_buf_valid); here a grant named in the run is
    held for the whole run: its GTF_reading/GTF_writing are set for that long (only during
    the hypercall), once per (grant, readonly) however many segments name it. Each segment
    still gets its own status: the answer for its grant, in Xen's order of checks.
    A grant not acquired beforehand (no run, or a segment read differently than planned)
    is acquired when its segment comes, and released with the others."""

    def __init__(self, ld: Domain) -> None:
        self.ld = ld
        self.peers: dict[int, RemotePeer | None] = {}
        self.held: dict[tuple[RemotePeer, int, bool], tuple[int, int, int, int]] = {}

    def peer(self, domid: int) -> RemotePeer | None:
        """The domain process `domid` (looked up once per run), None if none."""
        if domid not in self.peers:
            self.peers[domid] = self.ld.remote_peer(domid)
        return self.peers[domid]

    def remote_claims(self, op: C.Structure) -> list[tuple[RemotePeer, int, bool]]:
        """The remote grants `op` names, (peer, ref, readonly), source first."""
        found: list[tuple[RemotePeer, int, bool]] = []
        for ptr, is_gref, readonly in ((op.source, op.flags & G.GNTCOPY_source_gref, True),
                                       (op.dest, op.flags & G.GNTCOPY_dest_gref, False)):
            if not is_gref or self.ld.lookup(ptr.domid) is not None:
                continue
            peer = self.peer(ptr.domid)
            if peer is not None:
                found.append((peer, ptr.u & 0xFFFF_FFFF, readonly))
        return found

    def acquire(self, ops: list[C.Structure]) -> None:
        """acquire_grant_for_copy of every remote grant `ops` name: one request per peer."""
        wanted: dict[RemotePeer, list[tuple[int, bool]]] = {}
        seen = set(self.held)
        for op in ops:
            for claim in self.remote_claims(op):
                if claim not in seen:
                    seen.add(claim)
                    peer, ref, readonly = claim
                    wanted.setdefault(peer, []).append((ref, readonly))
        for peer, grants in wanted.items():
            for (ref, readonly), answer in zip(grants, peer.acquire_for_copy(grants),
                                               strict=True):
                self.held[peer, ref, readonly] = answer

    def claim(self, peer: RemotePeer, ref: int, readonly: bool) -> tuple[int, int, int, int]:
        """(GNTST status, gfn, offset, length) of the peer's grant for this segment."""
        answer = self.held.get((peer, ref, readonly))
        if answer is None:
            answer = self.held[peer, ref, readonly] = peer.acquire_for_copy([(ref, readonly)])[0]
        return answer

    def release(self) -> None:
        """release_grant_for_copy of every grant acquired: one request per peer."""
        done: dict[RemotePeer, list[tuple[int, bool]]] = {}
        for (peer, ref, readonly), answer in self.held.items():
            if answer[0] == G.GNTST_okay:
                done.setdefault(peer, []).append((ref, readonly))
        self.held.clear()
        for peer, grants in done.items():
            peer.release_for_copy(grants)


def _copy_claim(ld: Domain, where: tuple[Domain | None, RemotePeer | None], ptr: C.Structure,
                is_gref: bool, readonly: bool,
                remote_copies: RemoteCopies) -> tuple[int, CopyBuf | None]:
    dom, remote = where
    if remote is not None:  # a granting domain in another process (only by grant)
        ref = ptr.u & 0xFFFF_FFFF
        rc, gfn, start, length = remote_copies.claim(remote, ref, readonly)
        if rc != G.GNTST_okay:
            return rc, None
        return rc, CopyBuf(None, gfn, start, length, ref, readonly, remote=remote)
    assert dom is not None
    if is_gref:
        rc, buf = acquire_grant_for_copy(dom, ptr.u & 0xFFFF_FFFF, ld.domid, readonly, True)
        if buf is not None:
            buf.ref, buf.readonly, buf.holder = ptr.u & 0xFFFF_FFFF, readonly, dom
        return rc, buf
    rc = get_paged_frame(dom, ptr.u)
    if rc != G.GNTST_okay:
        return rc, None
    return G.GNTST_okay, CopyBuf(dom, ptr.u, 0, PAGE_SIZE)


def _copy_release(buf: CopyBuf | None) -> None:
    """A grant of this process's domains, after its segment (remote ones: RemoteCopies)."""
    if buf is not None and buf.ref is not None and buf.remote is None and \
            buf.holder is not None:
        release_grant_for_copy(buf.holder, buf.ref, buf.readonly)


def copy_one(ld: Domain, op: C.Structure, remote_copies: RemoteCopies | None = None) -> int:
    """One gnttab_copy entry: its GNTST status. Grants of domains in other processes come
    from `remote_copies` (the batch's); without one, this segment acquires and releases its
    own."""
    if remote_copies is None:
        own = RemoteCopies(ld)
        try:
            return copy_one(ld, op, own)
        finally:
            own.release()
    doms: list[tuple[Domain | None, RemotePeer | None]] = []
    for ptr, is_gref in ((op.source, op.flags & G.GNTCOPY_source_gref),
                         (op.dest, op.flags & G.GNTCOPY_dest_gref)):
        if ptr.domid != DOMID_SELF and not is_gref:
            return G.GNTST_permission_denied  # only DOMID_SELF may name a frame
        dom = ld.lookup(ptr.domid)
        remote = remote_copies.peer(ptr.domid) if dom is None else None
        if dom is None and remote is None:
            return G.GNTST_bad_domain
        doms.append((dom, remote))
    src = dest = None
    try:
        rc, src = _copy_claim(ld, doms[0], op.source, bool(op.flags & G.GNTCOPY_source_gref),
                              True, remote_copies)
        if rc != G.GNTST_okay:
            return rc
        rc, dest = _copy_claim(ld, doms[1], op.dest, bool(op.flags & G.GNTCOPY_dest_gref),
                               False, remote_copies)
        if rc != G.GNTST_okay:
            return rc
        assert src is not None and dest is not None
        if op.source.offset + op.len > PAGE_SIZE or op.dest.offset + op.len > PAGE_SIZE:
            return G.GNTST_bad_copy_arg
        if op.source.offset < src.offset or \
                op.source.offset + op.len > src.offset + src.length:
            return G.GNTST_general_error
        if op.dest.offset < dest.offset or op.dest.offset + op.len > dest.offset + dest.length:
            return G.GNTST_general_error
        data = src.read(op.source.offset, op.len)
        if len(data) != op.len or not dest.write(op.dest.offset, data):
            return G.GNTST_general_error  # a remote page that could not be reached
        return G.GNTST_okay
    finally:
        _copy_release(dest)
        _copy_release(src)


def _read_ahead(guest: GuestAccess, cls: type[C.Structure], uop: int,
                count: int) -> list[C.Structure]:
    """The `count` entries at `uop` as they read now, up to the first that cannot be read."""
    size = C.sizeof(cls)
    try:
        data = guest.read(uop, count * size)
    except XenError:
        ops = []
        for i in range(count):
            try:
                ops.append(guest.read_struct(cls, uop + i * size))
            except XenError:
                break
        return ops
    return [cls.from_buffer_copy(data, i * size) for i in range(count)]


def _copy_batch(vcpu: Vcpu, uop: int, count: int, cls: type[C.Structure]) -> int:
    """gnttab_copy: entry by entry as Xen (each read when its turn comes, its status written
    back), with the remote grants of each COPY_WINDOW entries acquired and released together
    (RemoteCopies)."""
    ld = vcpu.domain
    guest = vcpu.guest()
    size = C.sizeof(cls)
    status_at = cls.status.offset  # type: ignore[attr-defined]
    for first in range(0, count, COPY_WINDOW):
        n = min(COPY_WINDOW, count - first)
        remote_copies = RemoteCopies(ld)
        try:
            if n > 1:  # (one entry acquires its grants as it comes: the same one call)
                remote_copies.acquire(_read_ahead(guest, cls, uop + first * size, n))
            for i in range(first, first + n):
                if ld.stopping:
                    return 0
                at = uop + i * size
                op = guest.read_struct(cls, at)
                op.status = copy_one(ld, op, remote_copies)
                guest.write(at + status_at, struct.pack("<h", op.status))
        finally:
            remote_copies.release()
    return 0


# --- map / unmap -------------------------------------------------------------------------------
def pin_for_map(rd: Domain, ref: int, ldomid: int, flags: int) -> tuple[int, Active | None]:
    """map_grant_ref's checks on the granting side; pins entry `ref` (host or device)."""
    rgt = gnttab(rd)
    readonly = bool(flags & G.GNTMAP_readonly)
    with rgt.lock:
        if ref >= rgt.nr_entries():
            return G.GNTST_bad_gntref, None
        act = rgt.active.setdefault(ref, Active())
        if act.pin and (act.domid != ldomid or act.pin & PIN_OVERFLOW or act.is_sub_page):
            return G.GNTST_general_error, None
        if not act.pin or (not readonly and not act.pin & PIN_WRITERS):
            rc = rgt.set_status(ref, act, readonly, True, ldomid)
            if rc != G.GNTST_okay:
                if not act.pin:
                    del rgt.active[ref]
                return rc, None
            if not act.pin:
                gfn = rgt.entry_frame(ref)
                rc = get_paged_frame(rd, gfn)
                if rc != G.GNTST_okay:
                    rgt.release_flags(ref, act, readonly)
                    del rgt.active[ref]
                    return rc, None
                act.domid, act.gfn, act.start, act.length = ldomid, gfn, 0, PAGE_SIZE
                act.is_sub_page, act.trans_domain, act.trans_gref = False, rd, ref
        if flags & G.GNTMAP_device_map:
            act.pin += PIN_DEVR if readonly else PIN_DEVW
        if flags & G.GNTMAP_host_map:
            act.pin += PIN_HSTR if readonly else PIN_HSTW
        return G.GNTST_okay, act


def unpin_for_map(rd: Domain, ref: int, flags: int) -> None:
    rgt = gnttab(rd)
    readonly = bool(flags & G.GNTMAP_readonly)
    with rgt.lock:
        act = rgt.active[ref]
        if flags & G.GNTMAP_device_map:
            act.pin -= PIN_DEVR if readonly else PIN_DEVW
        if flags & G.GNTMAP_host_map:
            act.pin -= PIN_HSTR if readonly else PIN_HSTW
        rgt.release_flags(ref, act, readonly)
        if not act.pin:
            del rgt.active[ref]


def machine_address(act: Active) -> int:
    """dev_bus_addr for a mapped grant: pyxen has no machine frames, so the granting
    domain's guest frame stands for one."""
    return act.gfn << PAGE_SHIFT


def create_grant_p2m_mapping(ld: Domain, host: int, addr: int, flags: int) -> int:
    """Put the granted page (this process sees it at `host`) at guest-physical `addr` of
    `ld`: the same page, not a copy."""
    if flags & ~G.GNTMAP_readonly != G.GNTMAP_host_map:
        return G.GNTST_general_error
    readonly = bool(flags & G.GNTMAP_readonly)
    if readonly and not ld.machine.readonly_memory:
        # A backend without read-only slots (KVM lacking KVM_CAP_READONLY_MEM): refuse
        # rather than give write access to a read-only mapping.
        return G.GNTST_general_error
    gfn = addr >> PAGE_SHIFT
    if not ld.memory.gfn_backed(gfn) or gfn in ld.grant_maps or gfn in ld.special_frames:
        return G.GNTST_general_error
    with ld.memory_lock:
        ld.memory.release(gfn)  # RAM there leaves the physmap, as Xen's p2m entry is replaced
        ld.grant_maps[gfn] = (host, readonly)
        ld.memory.commit()
    return G.GNTST_okay


def replace_grant_p2m_mapping(ld: Domain, host: int, addr: int, new_addr: int) -> int:
    gfn = addr >> PAGE_SHIFT
    if new_addr:
        return G.GNTST_general_error
    if ld.grant_maps.get(gfn, (None, False))[0] != host:
        return G.GNTST_general_error
    with ld.memory_lock:
        del ld.grant_maps[gfn]
        ld.memory.commit()
    return G.GNTST_okay


def map_grant_ref(ld: Domain, op: C.Structure) -> None:
    """One gnttab_map_grant_ref entry from an HVM guest (status, handle, dev_bus_addr)."""
    if not op.flags & (G.GNTMAP_device_map | G.GNTMAP_host_map):
        op.status = G.GNTST_bad_gntref
        return
    if op.flags & (G.GNTMAP_device_map | G.GNTMAP_application_map | G.GNTMAP_contains_pte):
        op.status = G.GNTST_general_error  # no device mapping in an HVM domain
        return
    rd = ld.peers.get(op.dom)  # rcu_lock_domain_by_id: DOMID_SELF is no domain here
    granter = ld.remote_peer(op.dom) if rd is None else None
    if rd is None and granter is None:
        op.status = G.GNTST_bad_domain
        return
    lgt = gnttab(ld)
    with lgt.lock:
        handle = lgt.get_handle()
    if handle is None:
        op.status = G.GNTST_no_device_space
        return
    page = None
    if rd is not None:
        rc, act = pin_for_map(rd, op.ref, ld.domid, op.flags)
        gfn = act.gfn if act is not None else 0
        host = rd.memory.host_address + (gfn << PAGE_SHIFT)
    else:
        assert granter is not None
        rc, gfn = granter.map_grant(op.ref, op.flags)
        if rc == G.GNTST_okay:
            page = granter.page(gfn)
        host = page.address if page is not None else 0
    if rc == G.GNTST_okay:
        rc = create_grant_p2m_mapping(ld, host, op.host_addr, op.flags)
        if rc == G.GNTST_okay:
            with lgt.lock:
                lgt.maptrack[handle] = Mapping(op.ref, op.flags, op.dom, op.host_addr >> 12,
                                               host, granter, page)
            op.dev_bus_addr, op.handle, op.status = gfn << PAGE_SHIFT, handle, rc
            return
        if rd is not None:
            unpin_for_map(rd, op.ref, op.flags)
        else:
            assert granter is not None and page is not None
            granter.unmap_grant(op.ref, op.flags, 0)
            page.close()
    with lgt.lock:
        lgt.put_handle(handle)
    op.status = rc


def reattach(ld: Domain) -> set[int]:
    """After a restore, before the guest runs: map again the grants of domains in other
    processes that the domain had mapped (GrantTable.save_state's "maps"), at the same
    frames under the same handles. A grant that is no longer there (revoked, or its domain
    gone) leaves its frame empty and its handle free, so an unmap of it answers
    GNTST_bad_handle. The domids mapped from."""
    lgt = gnttab(ld)
    mapped = set()
    for handle, ref, flags, domid, gfn in lgt.to_reattach:
        granter = ld.remote_peer(domid)
        rc, page = G.GNTST_bad_domain, None
        if granter is not None:
            rc, granted = granter.map_grant(ref, flags)
            if rc == G.GNTST_okay:
                page = granter.page(granted)
                rc = create_grant_p2m_mapping(ld, page.address, gfn << PAGE_SHIFT, flags)
                if rc != G.GNTST_okay:
                    granter.unmap_grant(ref, flags, 0)
                    page.close()
                    page = None
        with lgt.lock:
            if page is None:
                lgt.put_handle(handle)
                log.warning("dom%d: domain %d's grant %d cannot be mapped again at frame "
                            "%#x (GNTST %d)", ld.domid, domid, ref, gfn, rc)
                continue
            lgt.maptrack[handle] = Mapping(ref, flags, domid, gfn, page.address, granter, page)
        mapped.add(domid)
    lgt.to_reattach = []
    return mapped


def remap_for_peer(ld: Domain, granter: RemotePeer) -> int:
    """The domain `granter` stands for was restored into a new process: move our mappings
    of its grants from its old process's pages to the new one's. Each page's latest
    contents are what we see in the old page (both sides wrote there; the granter saved
    it earlier), so they are copied into the new page first, with our domain paused so
    that no write of ours falls in between. A grant the new process refuses stays mapped
    to the old page, as Xen keeps a dead domain's granted page. The mappings moved."""
    lgt = gnttab(ld)
    with lgt.lock:
        stale = [m for m in lgt.maptrack if m is not None and m.domid == granter.domid
                 and m.granter is not None and m.granter is not granter
                 and m.flags & G.GNTMAP_host_map and m.page is not None]
    moved = 0
    if not stale:
        return moved
    ld.pause()
    try:
        for m in stale:
            flags = m.flags & (G.GNTMAP_host_map | G.GNTMAP_readonly)
            rc, granted = granter.map_grant(m.ref, flags)
            if rc != G.GNTST_okay:
                log.warning("dom%d: domain %d's grant %d stays on its old page (GNTST %d)",
                            ld.domid, granter.domid, m.ref, rc)
                continue
            page = granter.page(granted)
            C.memmove(page.address, m.host, PAGE_SIZE)
            with ld.memory_lock:
                if ld.grant_maps.get(m.host_gfn, (None, False))[0] == m.host:
                    ld.grant_maps[m.host_gfn] = (page.address, bool(flags & G.GNTMAP_readonly))
                    ld.memory.commit()
            old = m.page
            assert old is not None
            m.granter, m.page, m.host = granter, page, page.address
            old.close()
            moved += 1
    finally:
        ld.unpause()
    return moved


def unmap_grant_ref(ld: Domain, op: C.Structure, new_addr: int = 0) -> None:
    """unmap_common + unmap_common_complete for one entry."""
    lgt = gnttab(ld)
    with lgt.lock:
        m = lgt.maptrack[op.handle] if op.handle < len(lgt.maptrack) else None
    if m is None:
        op.status = G.GNTST_bad_handle
        return
    if m.granter is not None:
        _unmap_remote(ld, op, m, new_addr)
        return
    rd = ld.peers.get(m.domid)
    if rd is None:
        op.status = G.GNTST_bad_handle
        return
    rgt = gnttab(rd)
    with rgt.lock:
        if m.ref >= rgt.nr_entries() or m.ref not in rgt.active:
            op.status = G.GNTST_bad_handle
            return
        act = rgt.active[m.ref]
        if op.dev_bus_addr and op.dev_bus_addr != machine_address(act):
            op.status = G.GNTST_general_error
            return
        done = 0
        if op.host_addr and m.flags & G.GNTMAP_host_map:
            rc = replace_grant_p2m_mapping(ld, m.host, op.host_addr, new_addr)
            if rc != G.GNTST_okay:
                op.status = rc
                return
            m.flags &= ~G.GNTMAP_host_map
            done = G.GNTMAP_host_map | (m.flags & G.GNTMAP_readonly)
        if not m.flags & (G.GNTMAP_device_map | G.GNTMAP_host_map):
            with lgt.lock:
                lgt.put_handle(op.handle)
        if done:
            unpin_for_map(rd, m.ref, done)
    op.status = G.GNTST_okay


def _unmap_remote(ld: Domain, op: C.Structure, m: Mapping, new_addr: int) -> None:
    """unmap_grant_ref of a grant of a domain in another process: the p2m here, the pin
    there. A granter that is gone (destroyed while we mapped its page, which Xen keeps
    until the last mapping goes) has no pin left to drop."""
    assert m.granter is not None
    if not op.host_addr or not m.flags & G.GNTMAP_host_map:
        op.status = G.GNTST_okay
        return
    if ld.grant_maps.get(op.host_addr >> PAGE_SHIFT, (None, False))[0] != m.host or new_addr:
        op.status = G.GNTST_general_error
        return
    rc = m.granter.unmap_grant(m.ref, m.flags & (G.GNTMAP_host_map | G.GNTMAP_readonly),
                               op.dev_bus_addr)
    if rc != G.GNTST_okay:
        op.status = rc
        return
    replace_grant_p2m_mapping(ld, m.host, op.host_addr, 0)
    if m.page is not None:
        m.page.close()
    lgt = gnttab(ld)
    with lgt.lock:
        lgt.put_handle(op.handle)
    op.status = G.GNTST_okay


def unmap_for_peer(rd: Domain, ref: int, flags: int, dev_bus_addr: int) -> int:
    """The granting side of `_unmap_remote` (in the granter's process)."""
    rgt = gnttab(rd)
    with rgt.lock:
        act = rgt.active.get(ref) if ref < rgt.nr_entries() else None
        if act is None:
            return G.GNTST_bad_handle
        if dev_bus_addr and dev_bus_addr != machine_address(act):
            return G.GNTST_general_error
        unpin_for_map(rd, ref, flags)
    return G.GNTST_okay


def swap_grant_ref(d: Domain, ref_a: int, ref_b: int) -> int:
    gt = gnttab(d)
    with gt.lock:
        n = gt.nr_entries()
        if ref_a >= n or ref_b >= n:
            return G.GNTST_bad_gntref
        if ref_a == ref_b:
            return G.GNTST_okay
        if ref_a in gt.active or ref_b in gt.active:
            return G.GNTST_eagain
        size = 8 if gt.version == 1 else 16
        bufa, offa, _ = gt._entry(ref_a)
        bufb, offb, _ = gt._entry(ref_b)
        a, b = bytes(bufa[offa : offa + size]), bytes(bufb[offb : offb + size])
        bufa[offa : offa + size], bufb[offb : offb + size] = b, a
        if gt.version == 2:
            sa, sb = gt.status_word(ref_a), gt.status_word(ref_b)
            for ref, value in ((ref_a, sb), (ref_b, sa)):
                buf, off, _ = gt._status(ref)
                struct.pack_into("<H", buf, off, value)
        return G.GNTST_okay


# --- set_version --------------------------------------------------------------------------------
def set_version(d: Domain, version: int) -> int:
    """gnttab_set_version: 0 or -errno; the table's version afterwards is in d.grant_table."""
    gt = gnttab(d)
    if version not in (1, 2):
        return -EINVAL
    if gt.version == version:
        return 0
    with gt.lock:
        if any(ref >= G.GNTTAB_NR_RESERVED_ENTRIES and act.pin
               for ref, act in gt.active.items()):
            return -EBUSY
        reserved: list[tuple[int, int, int]] = []
        if gt.version == 2:
            for ref in range(G.GNTTAB_NR_RESERVED_ENTRIES):
                kind = gt.header(ref)[0] & G.GTF_type_mask
                if kind == G.GTF_transitive or \
                        (kind == G.GTF_permit_access and gt.entry_frame(ref) >> 32):
                    return -ERANGE
        for ref in range(G.GNTTAB_NR_RESERVED_ENTRIES):
            flags, domid = gt.header(ref)
            if gt.version == 1:
                reserved.append((flags, domid, gt.entry_frame(ref)))
            elif flags & G.GTF_type_mask == G.GTF_permit_access:
                reserved.append((flags | gt.status_word(ref), domid, gt.entry_frame(ref)))
            else:
                reserved.append((0, 0, 0))
        if gt.version == 1:
            gt._populate_status(gt.nr_frames)
        else:
            gt._drop_status_frames()
        for i in range(gt.nr_frames):
            buf, off, _ = gt._where(f"grant_table:{i}", 0)
            buf[off : off + PAGE_SIZE] = bytes(PAGE_SIZE)
        gt.version = version
        for ref, (flags, domid, frame) in enumerate(reserved):
            buf, off, _ = gt._entry(ref)
            if version == 1:
                struct.pack_into("<HHI", buf, off, flags, domid, frame & 0xFFFF_FFFF)
            else:
                struct.pack_into("<HHIQ", buf, off, flags & ~(G.GTF_reading | G.GTF_writing),
                                 domid, 0, frame)
                sbuf, soff, _ = gt._status(ref)
                struct.pack_into("<H", sbuf, soff, flags & (G.GTF_reading | G.GTF_writing))
        return 0


# --- the hypercall ------------------------------------------------------------------------------
def _controlled(vcpu: Vcpu, domid: int) -> tuple[Domain | None, int]:
    """The domain a setup_table/query_size names, or the GNTST status refusing it."""
    d = vcpu.domain.lookup(domid)
    if d is None:
        return None, G.GNTST_bad_domain
    if not vcpu.domain.may_control(d):
        return None, G.GNTST_permission_denied
    return d, G.GNTST_okay


def _setup_table(vcpu: Vcpu, uop: int, count: int) -> int:
    if count != 1:
        raise XenError(EINVAL)
    guest = vcpu.guest()
    cls = G.compat_gnttab_setup_table if vcpu.compat else G.gnttab_setup_table
    op = guest.read_struct(cls, uop)
    d, op.status = _controlled(vcpu, op.dom)
    if d is not None:
        gt = gnttab(d)
        with gt.lock:
            if op.nr_frames > gt.max_frames:
                op.status = G.GNTST_general_error
            else:
                if op.nr_frames > gt.nr_frames:
                    gt.grow(op.nr_frames)
                op.status = G.GNTST_okay
                width = 4 if vcpu.compat else 8
                for i in range(op.nr_frames):
                    gfn = gt.frame_gfn(f"grant_table:{i}")
                    if vcpu.compat and gfn >> 32:
                        op.status = G.GNTST_address_too_big
                        break
                    try:
                        guest.write(op.frame_list + i * width, gfn.to_bytes(width, "little"))
                    except XenError:
                        op.status = G.GNTST_bad_virt_addr
                        break
    guest.write(uop + cls.status.offset, struct.pack("<h", op.status))
    return 0


def _query_size(vcpu: Vcpu, uop: int, count: int) -> int:
    if count != 1:
        raise XenError(EINVAL)
    guest = vcpu.guest()
    op = guest.read_struct(G.gnttab_query_size, uop)
    d, op.status = _controlled(vcpu, op.dom)
    if d is not None:
        gt = gnttab(d)
        op.nr_frames, op.max_nr_frames, op.status = gt.nr_frames, gt.max_frames, G.GNTST_okay
    guest.write_struct(uop, op)
    return 0


def _set_version(vcpu: Vcpu, uop: int) -> int:
    guest = vcpu.guest()
    op = guest.read_struct(G.gnttab_set_version, uop)
    rc = set_version(vcpu.domain, op.version)
    op.version = gnttab(vcpu.domain).version
    guest.write_struct(uop, op)
    return rc


def _get_version(vcpu: Vcpu, uop: int) -> int:
    guest = vcpu.guest()
    op = guest.read_struct(G.gnttab_get_version, uop)
    d = vcpu.domain.lookup(op.dom)
    if d is None:
        raise XenError(ESRCH)
    if not vcpu.domain.may_control(d):
        raise XenError(EPERM)
    guest.write_u32(uop + G.gnttab_get_version.version.offset, gnttab(d).version)
    return 0


def _batch(vcpu: Vcpu, uop: int, count: int, cls: type[C.Structure],
           one: object, status_only: bool = True) -> int:
    """The per-entry loop of map/unmap/swap: read, do, write back (status or all)."""
    guest = vcpu.guest()
    size = C.sizeof(cls)
    status_at = cls.status.offset  # type: ignore[attr-defined]
    for i in range(count):
        if vcpu.domain.stopping:
            return 0
        at = uop + i * size
        op = guest.read_struct(cls, at)
        one(vcpu.domain, op)  # type: ignore[operator]
        if status_only:
            guest.write(at + status_at, struct.pack("<h", op.status))
        else:
            guest.write_struct(at, op)
    return 0


def _swap_entry(d: Domain, op: C.Structure) -> None:
    op.status = swap_grant_ref(d, op.ref_a, op.ref_b)


def do_grant_table_op(vcpu: Vcpu, cmd: int, uop: int, count: int, *_: int) -> int:
    cmd &= 0xFFFF_FFFF
    count &= 0xFFFF_FFFF
    if cmd not in HVM_SUBOPS:
        raise XenError(ENOSYS)  # hvm_grant_table_op: everything else "needs auditing"
    if count >= 1 << 31:
        raise XenError(EINVAL)
    compat = vcpu.compat
    if cmd == G.GNTTABOP_setup_table:
        return _setup_table(vcpu, uop, count)
    if cmd == G.GNTTABOP_query_size:
        return _query_size(vcpu, uop, count)
    if cmd == G.GNTTABOP_set_version:
        return _set_version(vcpu, uop)
    if cmd == G.GNTTABOP_get_version:
        return _get_version(vcpu, uop)
    if cmd == G.GNTTABOP_copy:
        return _copy_batch(vcpu, uop, count, G.compat_gnttab_copy if compat else G.gnttab_copy)
    if cmd == G.GNTTABOP_map_grant_ref:
        return _batch(vcpu, uop, count,
                      G.compat_gnttab_map_grant_ref if compat else G.gnttab_map_grant_ref,
                      map_grant_ref, status_only=False)
    if cmd == G.GNTTABOP_unmap_grant_ref:
        return _batch(vcpu, uop, count,
                      G.compat_gnttab_unmap_grant_ref if compat else G.gnttab_unmap_grant_ref,
                      unmap_grant_ref)
    return _batch(vcpu, uop, count, G.gnttab_swap_grant_ref, _swap_entry)


def register(table: HypercallTable) -> None:
    table.register(HYPERVISOR_grant_table_op, do_grant_table_op, subop_describer(SUBOPS, 3))


# --- the backend side (dom0's gntdev) ------------------------------------------------------------
@dataclass
class GrantMap:
    """A granted page mapped by a backend: `page` is the real page (the domain's memfd)."""

    domain: Domain
    ref: int
    readonly: bool
    page: memoryview


class GrantMapper:
    """Map and copy other domains' grants as backend domain `domid` does through gntdev,
    with Xen's checks (GTF_permit_access to `domid`, GTF_readonly, pin counts) and status
    updates (GTF_reading/GTF_writing while mapped)."""

    def __init__(self, domid: int = 0) -> None:
        self.domid = domid

    def map(self, rd: Domain, ref: int, readonly: bool = False) -> GrantMap:
        flags = G.GNTMAP_host_map | (G.GNTMAP_readonly if readonly else 0)
        rc, act = pin_for_map(rd, ref, self.domid, flags)
        if rc != G.GNTST_okay or act is None:
            raise GrantStatus(rc, f"map of d{rd.domid} ref {ref}")
        gpa = act.gfn << PAGE_SHIFT
        view = memoryview(rd.memory.map)[gpa : gpa + PAGE_SIZE]
        return GrantMap(rd, ref, readonly, view.toreadonly() if readonly else view)

    def unmap(self, m: GrantMap) -> None:
        if not m.readonly:
            rd = m.domain
            rd.memory.note_write(gnttab(rd).active[m.ref].gfn << PAGE_SHIFT, PAGE_SIZE)
        m.page.release()
        unpin_for_map(m.domain, m.ref, G.GNTMAP_host_map |
                      (G.GNTMAP_readonly if m.readonly else 0))

    def _copy(self, rd: Domain, ref: int, offset: int, length: int,
              data: bytes | None) -> bytes:
        if length < 0 or offset < 0 or offset + length > PAGE_SIZE:
            raise GrantStatus(G.GNTST_bad_copy_arg)
        readonly = data is None
        rc, buf = acquire_grant_for_copy(rd, ref, self.domid, readonly, True)
        if rc != G.GNTST_okay or buf is None:
            raise GrantStatus(rc, f"copy through d{rd.domid} ref {ref}")
        try:
            if offset < buf.offset or offset + length > buf.offset + buf.length:
                raise GrantStatus(G.GNTST_general_error, "outside the sub-page grant")
            gpa = (buf.gfn << PAGE_SHIFT) + offset
            if data is None:
                return buf.domain.memory.read(gpa, length)
            buf.domain.memory.write(gpa, data)
            return b""
        finally:
            release_grant_for_copy(rd, ref, readonly)

    def copy_from(self, rd: Domain, ref: int, offset: int = 0, length: int = PAGE_SIZE) -> bytes:
        """GNTTABOP_copy from the grant into the backend."""
        return self._copy(rd, ref, offset, length, None)

    def copy_to(self, rd: Domain, ref: int, data: bytes, offset: int = 0) -> None:
        """GNTTABOP_copy from the backend into the (writable) grant."""
        self._copy(rd, ref, offset, len(data), bytes(data))


__all__ = ["GrantMapper", "GrantStatus", "GrantTable", "do_grant_table_op"]
