"""Guest-physical memory: one sparse memfd, mapped into pyxen and (populated runs only) into
the vCPU backend.

A domain's physical address space is backed 1:1 by a sparse memfd (offset == guest-physical
address), but only *populated* frames — RAM the domain owns, within its page budget — are
visible to the guest: the backend gets one memory slot per run of populated frames. An access
to any other frame is not RAM (on Xen, with no device model behind it, reads are all-ones and
writes vanish). Populating allocates a zeroed page, releasing punches it out of the memfd, so
host memory really follows the domain's reservation. The memfd also lets another process map
a granted page (fd passing), the way Xen remaps pages between domains.

A layout change reaches the backend as several slot calls (a release in the middle of a run
unmaps the run's slot, then maps the two halves). vCPUs keep running meanwhile, so each
`commit()` is one `LayoutChange`: a backend that cannot let a vCPU see the state between two
of those calls joins it and finishes its work when the change ends (see `layout_change`).
"""

from __future__ import annotations

import contextlib
import ctypes as C
import mmap
import os
import struct
import threading
from collections.abc import Callable, Iterator

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
MMIO_HOLE_START = 0xF000_0000
FOUR_GIB = 1 << 32
GIB = 1 << 30

Run = tuple[int, int]  # (first gfn, number of frames)


class LayoutChange:
    """The backend slot calls of one layout change, made on one thread. A backend whose
    intermediate states must not reach a running vCPU registers, once per change, what to do
    when the change is whole (publish it, let paused vCPUs run again)."""

    def __init__(self) -> None:
        self._at_end: dict[object, Callable[[], None]] = {}

    def at_end(self, key: object, done: Callable[[], None]) -> bool:
        """Run `done` when the change ends (once per key); True if `key` is new to it."""
        if key in self._at_end:
            return False
        self._at_end[key] = done
        return True

    def finish(self) -> None:
        """Every backend's end runs, even if one fails (paused vCPUs must not stay paused)."""
        failed: Exception | None = None
        for done in self._at_end.values():
            try:
                done()
            except Exception as e:  # noqa: BLE001 - re-raised below, after the others ran
                failed = failed or e
        if failed is not None:
            raise failed


_current = threading.local()


def current_layout_change() -> LayoutChange | None:
    """The layout change this thread is making, if any (backends call this in map_memory)."""
    return getattr(_current, "change", None)


@contextlib.contextmanager
def layout_change() -> Iterator[LayoutChange]:
    """Bracket a batch of slot calls; nested brackets join the outermost one."""
    outer = current_layout_change()
    if outer is not None:
        yield outer
        return
    change = _current.change = LayoutChange()
    try:
        yield change
    finally:
        _current.change = None
        change.finish()


class GuestMemoryError(ValueError):
    """A guest-physical range is outside the domain's address space or not populated."""


def initial_ram(ram_bytes: int) -> list[Run]:
    """Xen's HVM layout: RAM from 0 up to the MMIO hole at 0xF0000000, the rest above 4 GiB."""
    low = min(ram_bytes, MMIO_HOLE_START)
    runs = [(0, low >> PAGE_SHIFT)]
    if ram_bytes > low:
        runs.append((FOUR_GIB >> PAGE_SHIFT, (ram_bytes - low) >> PAGE_SHIFT))
    return runs


class GuestMemory:
    """A domain's guest-physical memory."""

    def __init__(self, initial_bytes: int, max_bytes: int, name: str = "pyxen-guest") -> None:
        if initial_bytes <= 0 or initial_bytes % PAGE_SIZE or max_bytes % PAGE_SIZE:
            raise ValueError("guest memory sizes must be positive multiples of 4 KiB")
        if max_bytes < initial_bytes:
            raise ValueError("maximum memory is below the initial memory")
        # Room for the whole maximum above 4 GiB, so any frame the guest may populate exists.
        self.limit = -(-(FOUR_GIB + max_bytes) // GIB) * GIB
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC)
        os.ftruncate(self.fd, self.limit)
        self.map = mmap.mmap(self.fd, self.limit, mmap.MAP_SHARED,
                             mmap.PROT_READ | mmap.PROT_WRITE)
        self._anchor = C.c_char.from_buffer(self.map)
        self.host_address = C.addressof(self._anchor)
        self.populated = bytearray(self.limit >> PAGE_SHIFT)
        self.nr_populated = 0
        self.on_layout_change: Callable[[list[Run]], None] | None = None
        self.host_dirty: set[int] | None = None  # frames pyxen wrote, while dirty logging
        for first, count in initial_ram(initial_bytes):
            self.populated[first : first + count] = b"\1" * count
            self.nr_populated += count

    # --- address checks -----------------------------------------------------------------------
    @property
    def max_gfn(self) -> int:
        return (self.limit >> PAGE_SHIFT) - 1

    def gfn_backed(self, gfn: int) -> bool:
        """Whether frame `gfn` can hold RAM."""
        return 0 <= gfn <= self.max_gfn

    def offset_of(self, gpa: int, length: int = 1) -> int:
        if gpa < 0 or length < 0 or gpa + length > self.limit:
            raise GuestMemoryError(f"guest-physical range {gpa:#x}+{length:#x} is out of range")
        return gpa

    def is_populated(self, gfn: int) -> bool:
        return 0 <= gfn <= self.max_gfn and bool(self.populated[gfn])

    def check_populated(self, gpa: int, length: int) -> int:
        """`gpa` if every frame of [gpa, gpa+length) is populated RAM."""
        self.offset_of(gpa, length)
        first, last = gpa >> PAGE_SHIFT, (gpa + max(length, 1) - 1) >> PAGE_SHIFT
        if self.populated.find(0, first, last + 1) >= 0:
            raise GuestMemoryError(f"guest-physical range {gpa:#x}+{length:#x} is not RAM")
        return gpa

    # --- populate / release -------------------------------------------------------------------
    def note_write(self, gpa: int, length: int) -> None:
        """Record frames pyxen itself changed (the backend records the guest's writes)."""
        if self.host_dirty is not None and length:
            self.host_dirty.update(range(gpa >> PAGE_SHIFT, (gpa + length - 1 >> PAGE_SHIFT) + 1))

    def take_host_dirty(self) -> set[int]:
        dirty, self.host_dirty = self.host_dirty, set() if self.host_dirty is not None else None
        return dirty or set()

    def populate(self, gfn: int) -> bool:
        """Give frame `gfn` to the guest, zeroed. False if it is outside the address space.
        Call `commit()` after a batch so the guest sees the new layout."""
        if not self.gfn_backed(gfn):
            return False
        if not self.populated[gfn]:
            offset = gfn << PAGE_SHIFT
            self.map[offset : offset + PAGE_SIZE] = bytes(PAGE_SIZE)
            self.populated[gfn] = 1
            self.nr_populated += 1
            self.note_write(offset, PAGE_SIZE)
        return True

    def release_all(self) -> None:
        """No frame populated any more, all host memory given back (a restore starts from
        nothing: the stream populates what the saved domain had)."""
        self.map.madvise(mmap.MADV_REMOVE, 0, self.limit)
        self.populated[:] = bytes(len(self.populated))
        self.nr_populated = 0

    def load_frames(self, first: int, count: int, data: bytes | None) -> None:
        """Frames first..first+count-1 become populated, holding `data` (count pages) or
        zeroes (their host memory freed): a restore's page records, a run at a time.
        The caller has checked the frames can hold RAM; call `commit()` after."""
        offset, length = first << PAGE_SHIFT, count << PAGE_SHIFT
        if data is None:
            self.map.madvise(mmap.MADV_REMOVE, offset, length)
        else:
            self.map[offset : offset + length] = data
        self.nr_populated += count - self.populated.count(1, first, first + count)
        self.populated[first : first + count] = b"\1" * count
        self.note_write(offset, length)

    def release(self, gfn: int) -> bool:
        """Take frame `gfn` from the guest and free its host memory. False if unpopulated."""
        if not self.is_populated(gfn):
            return False
        self.populated[gfn] = 0
        self.nr_populated -= 1
        self.map.madvise(mmap.MADV_REMOVE, gfn << PAGE_SHIFT, PAGE_SIZE)
        return True

    def runs(self) -> list[Run]:
        """Maximal runs of populated frames (what the guest can reach)."""
        result: list[Run] = []
        pos, end = 0, len(self.populated)
        while True:
            start = self.populated.find(1, pos)
            if start < 0:
                return result
            stop = self.populated.find(0, start)
            stop = end if stop < 0 else stop
            result.append((start, stop - start))
            pos = stop

    def commit(self) -> None:
        """Publish the populated layout to the backend (after populate/release), as one
        change: no vCPU sees a range that stays RAM unmapped on the way."""
        if self.on_layout_change:
            with layout_change():
                self.on_layout_change(self.runs())

    def max_populated_gfn(self) -> int:
        return max(self.populated.rfind(1), 0)

    # --- access (pyxen side; the guest uses the same pages through the backend) ---------------
    def read(self, gpa: int, length: int) -> bytes:
        offset = self.offset_of(gpa, length)
        return self.map[offset : offset + length]

    def write(self, gpa: int, data: bytes) -> None:
        offset = self.offset_of(gpa, len(data))
        self.map[offset : offset + len(data)] = data
        self.note_write(gpa, len(data))

    def read_u64(self, gpa: int) -> int:
        return struct.unpack_from("<Q", self.map, self.offset_of(gpa, 8))[0]

    def struct_at(self, cls: type[C.Structure], gpa: int) -> C.Structure:
        """A ctypes view (shared, not a copy) of a struct in guest memory."""
        return cls.from_buffer(self.map, self.offset_of(gpa, C.sizeof(cls)))

    def close(self) -> None:
        del self._anchor
        with contextlib.suppress(BufferError):  # a ctypes view still alive: unmapped with it
            self.map.close()
        os.close(self.fd)
