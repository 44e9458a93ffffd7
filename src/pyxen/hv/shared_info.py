"""shared_info and vcpu_info placement.

Before the guest maps shared_info (XENMEM_add_to_physmap, XENMAPSPACE_shared_info), pyxen keeps
it in a private page; mapping it copies the contents into the chosen guest frame, and from then
on pyxen and the guest share that page (no copies, like Xen's remapping). vcpu_info for vCPU n
lives in shared_info.vcpu_info[n] until the guest moves it with VCPUOP_register_vcpu_info.
"""

from __future__ import annotations

import ctypes as C
from collections.abc import Callable

from pyxen.abi.xen import XEN_LEGACY_MAX_VCPUS, shared_info, vcpu_info
from pyxen.domain.memory import PAGE_SHIFT, PAGE_SIZE, GuestMemory
from pyxen.domain.saved import Saved


class SharedInfo:
    def __init__(self, mem: GuestMemory, on_move: Callable[[], None]) -> None:
        self.mem = mem
        self.on_move = on_move  # vCPUs cache views into the page
        self._private = bytearray(PAGE_SIZE)
        self.page = shared_info.from_buffer(self._private)
        self.gfn: int | None = None

    def map_at(self, gfn: int) -> bool:
        """Place shared_info at guest frame `gfn`; False if that frame cannot hold RAM."""
        if not self.mem.populate(gfn):
            return False
        self.mem.commit()
        contents = bytes(C.string_at(C.addressof(self.page), PAGE_SIZE))
        offset = self.mem.offset_of(gfn << PAGE_SHIFT, PAGE_SIZE)
        self.mem.map[offset : offset + PAGE_SIZE] = contents
        self.page = shared_info.from_buffer(self.mem.map, offset)
        self.gfn = gfn
        self.on_move()
        return True

    def unmap(self) -> None:
        """The guest removed shared_info from its physmap: pyxen keeps a private copy."""
        self._private[:] = C.string_at(C.addressof(self.page), PAGE_SIZE)
        self.page = shared_info.from_buffer(self._private)
        self.gfn = None
        self.on_move()

    def save_state(self) -> dict[str, object]:
        """Where the page is; its contents too while it is private (a mapped page travels
        with the guest's memory)."""
        return {"gfn": self.gfn, "private": None if self.gfn is not None else
                C.string_at(C.addressof(self.page), PAGE_SIZE).hex()}

    def load_state(self, saved: Saved) -> None:
        gfn = saved.opt_int("gfn", hi=self.mem.max_gfn)
        if gfn is None:
            self._private[:] = saved.hex("private", PAGE_SIZE)
            self.page = shared_info.from_buffer(self._private)
        elif not self.mem.is_populated(gfn):
            raise ValueError(f"the saved shared_info is at {gfn:#x}, which is not RAM")
        else:
            self.page = shared_info.from_buffer(self.mem.map, gfn << PAGE_SHIFT)
        self.gfn = gfn
        self.on_move()

    def default_vcpu_info(self, vcpu_id: int) -> vcpu_info | None:
        """vcpu_info inside shared_info (only the first 32 vCPUs have one there)."""
        if vcpu_id >= XEN_LEGACY_MAX_VCPUS:
            return None
        return self.page.vcpu_info[vcpu_id]
