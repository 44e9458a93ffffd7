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
    pfns = [word & PFN_MASK for word in words]
    kinds = [word >> TYPE_SHIFT for word in words]
    unknown = set(kinds) - {NOTAB, XALLOC, XTAB}
    if unknown:
        bad = kinds.index(min(unknown))
        raise StreamError(f"a PAGE_DATA record gives frame {pfns[bad]:#x} unknown type "
                          f"{kinds[bad]:#x}")
    if max(pfns) > memory.max_gfn:
        raise StreamError(f"a PAGE_DATA record names frame {max(pfns):#x}, outside the "
                          "domain's memory")
    if len(set(pfns)) != count:
        raise StreamError("a PAGE_DATA record names a frame twice")
    populated = memory.populated
    growth = sum((kind != XTAB) - populated[pfn] for pfn, kind in zip(pfns, kinds, strict=True))
    with_data = kinds.count(NOTAB)
    if memory.nr_populated + growth > max_frames:
        raise StreamError(f"the stream's pages exceed the domain's {max_frames} frames")
    if len(body) != head + with_data * PAGE_SIZE:
        raise StreamError(f"a PAGE_DATA record has {len(body) - head} bytes of data for "
                          f"{with_data} pages")
    offset, i = head, 0
    while i < count:  # a run of consecutive frames of one kind at a time
        kind, j = kinds[i], i + 1
        while j < count and pfns[j] == pfns[j - 1] + 1 and kinds[j] == kind:
            j += 1
        if kind == XTAB:
            for pfn in pfns[i:j]:
                memory.release(pfn)
        elif kind == XALLOC:
            memory.load_frames(pfns[i], j - i, None)
        else:
            memory.load_frames(pfns[i], j - i, body[offset : offset + (j - i) * PAGE_SIZE])
            offset += (j - i) * PAGE_SIZE
        i = j
    return pfns
