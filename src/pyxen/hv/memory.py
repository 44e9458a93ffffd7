"""HYPERVISOR_memory_op: the guest's physical memory map (xen/common/memory.c, x86 mm.c).

Reservation ops (increase/decrease_reservation, populate_physmap) return how many extents were
done, never an errno: a bad pointer, domain or order means 0 (or a partial count), as in Xen.
Guest RAM really grows and shrinks (GuestMemory.populate/release) within the domain's maximum.
"""

from __future__ import annotations

import ctypes as C
import os
from typing import TYPE_CHECKING

from pyxen.abi import memory as M
from pyxen.abi.errno import (
    EACCES,
    EDOM,
    EILSEQ,
    EINVAL,
    ENOENT,
    ENOSYS,
    EOPNOTSUPP,
    EPERM,
    ESRCH,
    XenError,
)
from pyxen.abi.xen import HYPERVISOR_memory_op
from pyxen.domain.memory import PAGE_SHIFT

from .hypercall import HypercallTable, subop_describer

if TYPE_CHECKING:
    from pyxen.domain.domain import Domain
    from pyxen.domain.vcpu import Vcpu

DOMU_MAX_ORDER = 9  # Xen's memop-max-order default for an unprivileged domain (2 MiB)
CTLDOM_MAX_ORDER = 12
INVALID_GFN = (1 << 64) - 1
SUBOPS = {v: k for k, v in vars(M).items() if k.startswith("XENMEM_")}


def host_max_page() -> int:
    """XENMEM_maximum_ram_page: the host's highest RAM page, as Xen reports it."""
    return os.sysconf("SC_PHYS_PAGES")


def _reservation(vcpu: Vcpu, arg: int):  # type: ignore[no-untyped-def]
    cls = M.compat_memory_reservation if vcpu.compat else M.xen_memory_reservation
    return vcpu.guest().read_struct(cls, arg)


def reservation_op(vcpu: Vcpu, op: int, arg: int, start: int) -> int:
    """increase_reservation, decrease_reservation, populate_physmap: extents done."""
    try:
        r = _reservation(vcpu, arg)
    except XenError:
        return start
    if r.nr_extents > (0xFFFF_FFFF >> M.MEMOP_EXTENT_SHIFT) or start >= r.nr_extents:
        return start
    target = vcpu.domain.lookup(r.domid)
    if target is None or not vcpu.domain.may_control(target):
        return start
    address_bits = r.mem_flags >> 8 & 0xFF
    if address_bits and address_bits <= PAGE_SHIFT:
        return start
    max_order = CTLDOM_MAX_ORDER if vcpu.domain.privileged else DOMU_MAX_ORDER
    if r.extent_order > max_order:
        return start
    guest = vcpu.guest()
    entry = 4 if vcpu.compat else 8
    pages = 1 << r.extent_order
    done = start
    mem = target.memory
    for i in range(start, r.nr_extents):
        if op == M.XENMEM_increase_reservation:
            # Translated guests get pages allocated but mapped nowhere (Xen's behaviour);
            # they count against the reservation until decreased away.
            if target.tot_pages + pages > target.max_pages:
                break
            target.extra_pages += pages
            done = i + 1
            continue
        try:
            gfn = (guest.read_u32 if vcpu.compat else guest.read_u64)(r.extent_start + i * entry)
        except XenError:
            break
        if op == M.XENMEM_populate_physmap:
            new = sum(1 for f in range(gfn, gfn + pages) if not mem.is_populated(f))
            if target.tot_pages + new > target.max_pages:
                break
            if not all(mem.gfn_backed(f) for f in range(gfn, gfn + pages)):
                break
            for f in range(gfn, gfn + pages):
                if mem.is_populated(f):
                    mem.release(f)  # the frame gets a fresh (zeroed) page
                mem.populate(f)
        else:  # decrease_reservation
            if not all(mem.is_populated(f) or target.special_frames.get(f)
                       for f in range(gfn, gfn + pages)):
                break
            for f in range(gfn, gfn + pages):
                target.special_frame_leaves(f)
                mem.release(f)
        done = i + 1
    return done


def reservation_query(vcpu: Vcpu, op: int, arg: int) -> int:
    domid = vcpu.guest().read(arg, 2)
    target = vcpu.domain.lookup(int.from_bytes(domid, "little"))
    if target is None:
        raise XenError(ESRCH)
    if not vcpu.domain.may_control(target):
        raise XenError(EPERM)
    if op == M.XENMEM_current_reservation:
        return target.tot_pages
    if op == M.XENMEM_maximum_reservation:
        return target.max_pages
    return target.memory.max_populated_gfn()


def _permission(vcpu: Vcpu, domid: int, space: int) -> Domain:
    target = vcpu.domain.lookup(domid)
    if target is None:
        raise XenError(ESRCH)
    if space == M.XENMAPSPACE_dev_mmio and not (vcpu.domain.privileged and target is vcpu.domain):
        raise XenError(EACCES)
    if not vcpu.domain.may_control(target):
        raise XenError(EPERM)
    return target


def _place_xen_page(d: Domain, kind: str, gfn: int) -> None:
    """Map one of Xen's pages (shared_info, a grant frame) at `gfn`, unmapping it from its old
    frame, freeing guest RAM that was at `gfn` (Xen frees it to avoid a leak)."""
    if not d.memory.gfn_backed(gfn):
        raise XenError(EINVAL, f"gfn {gfn:#x} is outside the domain's physical memory")
    old = next((f for f, k in d.special_frames.items() if k == kind), None)
    if old == gfn:
        return
    d.special_frame_leaves(gfn)  # a grant frame there leaves the physmap, as on Xen
    if kind == "shared_info":
        d.shared_info.map_at(gfn)
    else:
        contents = d.memory.read(old << PAGE_SHIFT, 1 << PAGE_SHIFT) if old is not None else None
        d.memory.populate(gfn)
        if contents is not None:
            d.memory.write(gfn << PAGE_SHIFT, contents)
    d.special_frames[gfn] = kind
    if old is not None and d.special_frames.get(old) == kind:
        del d.special_frames[old]
        d.memory.release(old)  # the old frame is left empty, as in Xen


def add_to_physmap_one(vcpu: Vcpu, d: Domain, space: int, idx: int, gpfn: int) -> None:
    if space == M.XENMAPSPACE_shared_info:
        if idx != 0:
            raise XenError(EINVAL)
        _place_xen_page(d, "shared_info", gpfn)
    elif space == M.XENMAPSPACE_grant_table:
        d.grant_table.map_frame(idx, gpfn)  # shared or (v2, XENMAPIDX_...) status frame
    elif space == M.XENMAPSPACE_gmfn:
        if not d.memory.is_populated(idx) or idx in d.special_frames:
            raise XenError(EINVAL)
        if idx == gpfn:
            return
        if not d.memory.gfn_backed(gpfn):
            raise XenError(EINVAL)
        contents = d.memory.read(idx << PAGE_SHIFT, 1 << PAGE_SHIFT)
        d.memory.populate(gpfn)
        d.memory.write(gpfn << PAGE_SHIFT, contents)
        d.memory.release(idx)
    else:
        raise XenError(EINVAL)


def add_to_physmap(vcpu: Vcpu, arg: int, start: int) -> int:
    if start & ~0xFFFF:
        raise XenError(EDOM)
    cls = M.compat_add_to_physmap if vcpu.compat else M.xen_add_to_physmap
    xatp = vcpu.guest().read_struct(cls, arg)
    if xatp.space == M.XENMAPSPACE_gmfn_foreign:
        raise XenError(ENOSYS)
    d = _permission(vcpu, xatp.domid, xatp.space)
    gpfn = xatp.gpfn if not vcpu.compat or xatp.gpfn != 0xFFFF_FFFF else INVALID_GFN
    if gpfn == INVALID_GFN:
        raise XenError(EINVAL)
    if xatp.space != M.XENMAPSPACE_gmfn_range:
        add_to_physmap_one(vcpu, d, xatp.space, xatp.idx, gpfn)
        return 0
    if xatp.size < start:
        raise XenError(EILSEQ)
    for i in range(start, xatp.size):
        add_to_physmap_one(vcpu, d, M.XENMAPSPACE_gmfn, xatp.idx + i, gpfn + i)
    return 0


def add_to_physmap_batch(vcpu: Vcpu, arg: int, start: int) -> int:
    if start & ~0xFFFF:
        raise XenError(EDOM)
    guest = vcpu.guest()
    cls = M.compat_add_to_physmap_batch if vcpu.compat else M.xen_add_to_physmap_batch
    b = guest.read_struct(cls, arg)
    width, read = (4, guest.read_u32) if vcpu.compat else (8, guest.read_u64)
    if b.space == M.XENMAPSPACE_gmfn_range:
        raise XenError(EOPNOTSUPP)
    d = _permission(vcpu, b.domid, b.space)
    if b.size < start:
        raise XenError(EILSEQ)
    if b.size == start:
        if start:
            raise XenError(EILSEQ)
        return 0
    if b.space == M.XENMAPSPACE_dev_mmio and b.foreign_domid:
        raise XenError(EOPNOTSUPP)
    for i in range(start, b.size):
        idx = read(b.idxs + width * i)
        gpfn = read(b.gpfns + width * i)
        try:
            if b.space == M.XENMAPSPACE_gmfn_foreign:
                raise XenError(ENOSYS, "foreign mappings come with the inter-domain issue")
            add_to_physmap_one(vcpu, d, b.space, idx, gpfn)
            rc = 0
        except XenError as e:
            rc = -e.errno
        guest.write_u32(b.errs + 4 * i, rc)
    return 0


def remove_from_physmap(vcpu: Vcpu, arg: int, start: int) -> int:
    if start:
        raise XenError(EDOM)
    cls = M.compat_remove_from_physmap if vcpu.compat else M.xen_remove_from_physmap
    x = vcpu.guest().read_struct(cls, arg)
    d = vcpu.domain.lookup(x.domid)
    if d is None:
        raise XenError(ESRCH)
    if not vcpu.domain.may_control(d):
        raise XenError(EPERM)
    if not d.memory.is_populated(x.gpfn):
        raise XenError(ENOENT)
    d.special_frame_leaves(x.gpfn)
    d.memory.release(x.gpfn)
    return 0


def memory_map(vcpu: Vcpu, arg: int) -> int:
    guest = vcpu.guest()
    cls = M.compat_memory_map if vcpu.compat else M.xen_memory_map
    m = guest.read_struct(cls, arg)
    e820 = vcpu.domain.e820
    if not e820:
        raise XenError(ENOSYS)
    n = min(m.nr_entries, len(e820))
    size = C.sizeof(M.e820entry)
    for i, (addr, length, kind) in enumerate(e820[:n]):
        guest.write_struct(m.buffer + i * size, M.e820entry(addr=addr, size=length, type=kind))
    m.nr_entries = n
    guest.write_struct(arg, m)
    return 0


MUTATING = {M.XENMEM_increase_reservation, M.XENMEM_decrease_reservation,
            M.XENMEM_populate_physmap, M.XENMEM_add_to_physmap, M.XENMEM_add_to_physmap_batch,
            M.XENMEM_remove_from_physmap}


def do_memory_op(vcpu: Vcpu, cmd: int, arg: int, *_: int) -> int:
    op = cmd & M.MEMOP_CMD_MASK
    if op not in MUTATING:
        return _memory_op(vcpu, cmd, arg)
    # One vCPU's layout change must not interleave with another's; the backend then gets
    # the new layout of every domain the op may have touched (a privileged caller may act
    # on another). commit() costs no backend call when a layout did not change.
    with vcpu.domain.memory_lock:
        try:
            return _memory_op(vcpu, cmd, arg)
        finally:
            for d in vcpu.domain.peers.values():
                d.memory.commit()


def _memory_op(vcpu: Vcpu, cmd: int, arg: int) -> int:
    op, start = cmd & M.MEMOP_CMD_MASK, cmd >> M.MEMOP_EXTENT_SHIFT
    if op in (M.XENMEM_increase_reservation, M.XENMEM_decrease_reservation,
              M.XENMEM_populate_physmap):
        return reservation_op(vcpu, op, arg, start)
    if op == M.XENMEM_maximum_ram_page:
        if start:
            raise XenError(EINVAL)
        return host_max_page()
    if op in (M.XENMEM_current_reservation, M.XENMEM_maximum_reservation,
              M.XENMEM_maximum_gpfn):
        if start:
            raise XenError(EINVAL)
        return reservation_query(vcpu, op, arg)
    if op == M.XENMEM_add_to_physmap:
        return add_to_physmap(vcpu, arg, start)
    if op == M.XENMEM_add_to_physmap_batch:
        return add_to_physmap_batch(vcpu, arg, start)
    if op == M.XENMEM_remove_from_physmap:
        return remove_from_physmap(vcpu, arg, start)
    if op == M.XENMEM_memory_map:
        return memory_map(vcpu, arg)
    raise XenError(ENOSYS)


def register(table: HypercallTable) -> None:
    table.register(HYPERVISOR_memory_op, do_memory_op, subop_describer(SUBOPS, 2))




