"""Guest-physical RAM as the soft backend sees it: the populated runs pyxen maps.

The domain's memfd mapping has offset == guest-physical address, so every slot's host
address minus its guest address is the same base. `PhysicalRam` views that mapping the way
`pyxen.hv.pagewalk` and `GuestAccess` read a GuestMemory (`map` + `check_populated`), which
lets the soft CPU walk the guest's page tables and touch its IDT, GDT, TSS and stacks with
the hypervisor's own code instead of a second page walker.
"""

from __future__ import annotations

import ctypes as C
from collections.abc import Callable

from pyxen.domain.memory import GuestMemoryError


class PhysicalRam:
    """The slots of one machine: (gpa, size) per slot number, over one host mapping."""

    def __init__(self) -> None:
        self.slots: dict[int, tuple[int, int, int]] = {}  # slot → (gpa, size, host address)
        self.readonly_slots: set[int] = set()
        # Frames of the read-only slots, changed in place: every engine's write hook reads it.
        self.readonly_frames: set[int] = set()
        self.generation = 0  # bumped on every change; vCPUs resync their engine's map
        self.map: C.Array[C.c_char] | None = None
        # Writes through GuestAccess here are the emulated CPU's own (interrupt frames on the
        # guest stack): guest writes, which dirty logging must see.
        self.on_write: Callable[[int, int], None] | None = None

    def add(self, slot: int, gpa: int, size: int, host_address: int,
            readonly: bool = False) -> None:
        self.slots[slot] = (gpa, size, host_address)
        if readonly:
            self.readonly_slots.add(slot)
        else:
            self.readonly_slots.discard(slot)
        self._changed()

    def remove(self, slot: int) -> None:
        self.slots.pop(slot, None)
        self.readonly_slots.discard(slot)
        self._changed()

    def views(self) -> set[tuple[int, int, int, bool]]:
        """(gpa, size, host address, read-only) of every slot: what each engine maps."""
        return {(*self.slots[n], n in self.readonly_slots) for n in self.slots}

    def _changed(self) -> None:
        self.generation += 1
        frames = {f for n in self.readonly_slots
                  for f in range(self.slots[n][0] >> 12, sum(self.slots[n][:2]) >> 12)}
        self.readonly_frames |= frames  # added before the stale ones go: no gap
        self.readonly_frames &= frames
        if not self.slots:
            self.map = None
            return
        # The largest slot is domain RAM (granted pages are single-page slots elsewhere).
        gpa, _, host = max(self.slots.values(), key=lambda s: s[1])
        end = max(g + s for g, s, _ in self.slots.values())
        self.map = (C.c_char * end).from_address(host - gpa)

    def note_write(self, gpa: int, length: int) -> None:
        """GuestAccess's hook for every write it makes (GuestMemory's contract)."""
        if self.on_write is not None:
            self.on_write(gpa, length)

    def check_populated(self, gpa: int, length: int) -> int:
        """`gpa` if [gpa, gpa+length) lies in one slot (GuestMemory's contract)."""
        for start, size, _ in self.slots.values():
            if start <= gpa and gpa + max(length, 1) <= start + size:
                return gpa
        raise GuestMemoryError(f"guest-physical range {gpa:#x}+{length:#x} is not RAM")
