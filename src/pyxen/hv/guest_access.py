"""copy_from_guest / copy_to_guest: hypercall handlers' only way to touch guest pointers.

Guest-virtual ranges are translated page by page through the guest's page tables and must
land in populated RAM; anything else is XenError(EFAULT), exactly where Xen's copy would fail.
"""

from __future__ import annotations

import ctypes as C
import struct
from typing import TypeVar

from pyxen.abi.errno import EFAULT, XenError
from pyxen.domain.memory import PAGE_SIZE, GuestMemory, GuestMemoryError

from .pagewalk import PageFault, PagingState, translate

T = TypeVar("T", bound=C.Structure)
MAX_COPY = 1 << 26  # no single copy is larger; bigger requests are a guest bug → -EFAULT


class GuestAccess:
    """Access to one vCPU's guest-virtual address space, as of the current hypercall."""

    __slots__ = ("mem", "paging")

    def __init__(self, mem: GuestMemory, paging: PagingState) -> None:
        self.mem = mem
        self.paging = paging

    def _chunks(self, va: int, length: int, write: bool):  # type: ignore[no-untyped-def]
        """Yield (memfd offset, size) for each page-bounded piece of [va, va+length)."""
        if length < 0 or length > MAX_COPY:
            raise XenError(EFAULT, f"copy of {length} bytes")
        end = va + length
        while va < end:
            size = min(end - va, PAGE_SIZE - (va & (PAGE_SIZE - 1)))
            try:
                gpa = translate(self.mem, self.paging, va & 0xFFFF_FFFF_FFFF_FFFF, write)
                offset = self.mem.check_populated(gpa, size)
            except (PageFault, GuestMemoryError) as e:
                raise XenError(EFAULT, str(e)) from e
            yield offset, size
            va += size

    def read(self, va: int, length: int) -> bytes:
        m = self.mem.map
        parts = [m[o : o + n] for o, n in self._chunks(va, length, False)]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def write(self, va: int, data: bytes | bytearray | memoryview) -> None:
        m = self.mem.map
        pos = 0
        for o, n in self._chunks(va, len(data), True):
            m[o : o + n] = data[pos : pos + n]
            self.mem.note_write(o, n)  # the memfd offset is the guest-physical address
            pos += n

    def read_struct(self, cls: type[T], va: int) -> T:
        return cls.from_buffer_copy(self.read(va, C.sizeof(cls)))

    def write_struct(self, va: int, value: C.Structure) -> None:
        self.write(va, bytes(value))

    def read_u32(self, va: int) -> int:
        return struct.unpack("<I", self.read(va, 4))[0]

    def write_u32(self, va: int, value: int) -> None:
        self.write(va, struct.pack("<I", value & 0xFFFF_FFFF))

    def read_u64(self, va: int) -> int:
        return struct.unpack("<Q", self.read(va, 8))[0]

    def write_u64(self, va: int, value: int) -> None:
        self.write(va, struct.pack("<Q", value & 0xFFFF_FFFF_FFFF_FFFF))
