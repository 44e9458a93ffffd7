"""PAGE_DATA records: guest frames in the stream, as libxc sends them.

A record holds up to MAX_BATCH frames: a count, the frame numbers with libxc's page type in
their top four bits, then 4 KiB of data for each frame that carries some. The types are
libxc's XEN_DOMCTL_PFINFO values: NOTAB (a page with data), XALLOC (populated, all zeroes:
no data sent; libxc uses it for pages that need allocating only) and XTAB (not populated:
a frame the guest gave back since an earlier round sent it).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator

from pyxen.domain.memory import PAGE_SHIFT, PAGE_SIZE, GuestMemory

from .stream import StreamError

MAX_BATCH = 1024  # frames per record (libxc's MAX_BATCH_SIZE)
TYPE_SHIFT = 60
NOTAB, XALLOC, XTAB = 0x0, 0xE, 0xF
PFN_MASK = (1 << TYPE_SHIFT) - 1
COUNT = struct.Struct("<II")  # count, reserved
ZERO_PAGE = bytes(PAGE_SIZE)


def page_records(memory: GuestMemory, pfns: Iterable[int]) -> Iterator[bytes]:
    """PAGE_DATA bodies for `pfns` as they are now (the caller keeps the layout still)."""
    batch: list[int] = []
    for pfn in pfns:
        batch.append(pfn)
        if len(batch) == MAX_BATCH:
            yield _record(memory, batch)
            batch = []
    if batch:
        yield _record(memory, batch)


def _record(memory: GuestMemory, pfns: list[int]) -> bytes:
    words, data = [], []
    for pfn in pfns:
        if not memory.is_populated(pfn):
            words.append(pfn | XTAB << TYPE_SHIFT)
            continue
        page = memory.read(pfn << PAGE_SHIFT, PAGE_SIZE)
        if page == ZERO_PAGE:
            words.append(pfn | XALLOC << TYPE_SHIFT)
        else:
            words.append(pfn)
            data.append(page)
    return COUNT.pack(len(words), 0) + struct.pack(f"<{len(words)}Q", *words) + b"".join(data)


def apply_page_data(memory: GuestMemory, body: bytes, max_frames: int) -> list[int]:
    """Put a PAGE_DATA record's frames into `memory` (populating or releasing them), never
    populating more than `max_frames` in all; the caller commits the layout. Returns the frames it
    named. Checked whole before any frame changes, so a bad record changes nothing."""
    if len(body) < COUNT.size:
        raise StreamError("a PAGE_DATA record is too short for its count")
    count, _ = COUNT.unpack_from(body)
    if not 0 < count <= MAX_BATCH:
        raise StreamError(f"a PAGE_DATA record names {count} frames (1 to {MAX_BATCH})")
    head = COUNT.size + 8 * count
    if len(body) < head:
        raise StreamError(f"a PAGE_DATA record is too short for its {count} frame numbers")
    words = struct.unpack_from(f"<{count}Q", body, COUNT.size)
    growth = 0
    for word in set(words):
        pfn, kind = word & PFN_MASK, word >> TYPE_SHIFT
        if kind not in (NOTAB, XALLOC, XTAB):
            raise StreamError(f"a PAGE_DATA record gives frame {pfn:#x} unknown type {kind:#x}")
        if not memory.gfn_backed(pfn):
            raise StreamError(f"a PAGE_DATA record names frame {pfn:#x}, outside the domain's "
                              "memory")
        growth += (kind != XTAB) - memory.is_populated(pfn)
    with_data = sum(word >> TYPE_SHIFT == NOTAB for word in words)
    if len({word & PFN_MASK for word in words}) != count:
        raise StreamError("a PAGE_DATA record names a frame twice")
    if memory.nr_populated + growth > max_frames:
        raise StreamError(f"the stream's pages exceed the domain's {max_frames} frames")
    if len(body) != head + with_data * PAGE_SIZE:
        raise StreamError(f"a PAGE_DATA record has {len(body) - head} bytes of data for "
                          f"{with_data} pages")
    offset = head
    pfns = []
    for word in words:
        pfn, kind = word & PFN_MASK, word >> TYPE_SHIFT
        pfns.append(pfn)
        if kind == XTAB:
            memory.release(pfn)
            continue
        memory.populate(pfn)  # zeroed if it was not populated
        if kind == NOTAB:
            memory.write(pfn << PAGE_SHIFT, body[offset : offset + PAGE_SIZE])
            offset += PAGE_SIZE
        elif memory.read(pfn << PAGE_SHIFT, PAGE_SIZE) != ZERO_PAGE:
            memory.write(pfn << PAGE_SHIFT, ZERO_PAGE)
    return pfns
