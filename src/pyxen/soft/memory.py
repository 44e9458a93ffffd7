"""Guest-physical RAM as the soft backend sees it: the populated runs pyxen maps.

The domain's memfd mapping has offset == guest-physical address, so every slot's host
address minus its guest address is the same base. `PhysicalRam` views that mapping the way
`pyxen.hv.pagewalk` and `GuestAccess` read a GuestMemory (`map` + `check_populated`), which
lets the soft CPU walk the guest's page tables and touch its IDT, GDT, TSS and stacks with
the hypervisor's own code instead of a second page walker.

Slot calls change a *pending* table; vCPUs read only a published `Layout`, an immutable
snapshot replaced in one assignment. The machine publishes once a whole layout change has been
made (a split run is unmapped and mapped again in two halves: no vCPU may see the gap), under
`lock`, which an engine takes to read the layout it is about to map.
"""

from __future__ import annotations

import ctypes as C
import threading
from collections.abc import Callable
from dataclasses import dataclass

from pyxen.domain.memory import GuestMemoryError

View = tuple[int, int, int, bool]  # (gpa, size, host address, read-only)


@dataclass(frozen=True)
class Layout:
    """One published state of the machine's RAM: what every engine maps."""

    generation: int
    views: frozenset[View]
    readonly_frames: frozenset[int]
    map: C.Array[C.c_char] | None  # guest-physical bytes, for pyxen's own page walks

    # The largest view (the domain's RAM), which nearly every access hits: tried first.
    ram: tuple[int, int] = (0, 0)

    def check_populated(self, gpa: int, length: int) -> int:
        start, end = self.ram
        if start <= gpa and gpa + max(length, 1) <= end:
            return gpa
        for start, size, _, _ in self.views:
            if start <= gpa and gpa + max(length, 1) <= start + size:
                return gpa
        raise GuestMemoryError(f"guest-physical range {gpa:#x}+{length:#x} is not RAM")


EMPTY = Layout(0, frozenset(), frozenset(), None)


class PhysicalRam:
    """The slots of one machine: (gpa, size) per slot number, over one host mapping."""

    def __init__(self) -> None:
        self._slots: dict[int, View] = {}  # pending: what the next publish() shows
        self.layout = EMPTY
        # Held while a layout is published and until every engine left the previous one;
        # an engine reads the layout it maps under it.
        self.lock = threading.Lock()
        # Frames of the read-only slots, changed in place: every engine's write hook reads it.
        # It grows at publish() and shrinks at settle(), when no engine maps the old layout.
        self.readonly_frames: set[int] = set()
        # Writes through GuestAccess here are the emulated CPU's own (interrupt frames on the
        # guest stack): guest writes, which dirty logging must see.
        self.on_write: Callable[[int, int], None] | None = None
        # Whether native code may touch this RAM directly (native_window): the machine
        # decides once, when it knows the native code can be used.
        self.native = False

    # --- pending changes (the thread making a layout change) -----------------------------------
    def add(self, slot: int, gpa: int, size: int, host_address: int,
            readonly: bool = False) -> None:
        self._slots[slot] = (gpa, size, host_address, readonly)

    def remove(self, slot: int) -> None:
        self._slots.pop(slot, None)

    def publish(self) -> Layout:
        """Make the pending slots the layout engines map; the old read-only frames stay
        refused until settle()."""
        views = frozenset(self._slots.values())
        ro = frozenset(f for gpa, size, _, readonly in views if readonly
                       for f in range(gpa >> 12, gpa + size >> 12))
        self.readonly_frames |= ro  # added before the stale ones go: no gap
        ram = max(views, key=lambda v: v[1], default=None)  # the domain's RAM
        self.layout = Layout(self.layout.generation + 1, views, ro, _guest_bytes(views, ram),
                             (0, 0) if ram is None else (ram[0], ram[0] + ram[1]))
        return self.layout

    def settle(self) -> None:
        """No engine maps an older layout any more: drop its read-only frames."""
        self.readonly_frames &= self.layout.readonly_frames

    # --- the published layout (any thread) ---------------------------------------------------
    @property
    def generation(self) -> int:
        return self.layout.generation

    @property
    def map(self) -> C.Array[C.c_char] | None:
        return self.layout.map

    def views(self) -> frozenset[View]:
        """(gpa, size, host address, read-only) of every slot: what each engine maps."""
        return self.layout.views

    def note_write(self, gpa: int, length: int) -> None:
        """GuestAccess's hook for every write it makes (GuestMemory's contract)."""
        if self.on_write is not None:
            self.on_write(gpa, length)

    def native_window(self, layout: Layout | None = None) -> tuple[int, int, int] | None:
        """(host address of guest-physical 0, start, end) of the domain's RAM view in
        `layout` (by default the current one), every byte of which is RAM: what native code
        (native_deliver.c, native_send.c) may touch directly."""
        layout = layout or self.layout
        if not self.native or layout.map is None:
            return None
        return (C.addressof(layout.map), *layout.ram)

    def check_populated(self, gpa: int, length: int) -> int:
        """`gpa` if [gpa, gpa+length) lies in one slot (GuestMemory's contract)."""
        return self.layout.check_populated(gpa, length)


def _guest_bytes(views: frozenset[View], ram: View | None) -> C.Array[C.c_char] | None:
    """The domain's memfd mapping seen from guest-physical 0: `ram`, the largest slot, is
    domain RAM (granted pages are single-page slots elsewhere)."""
    if ram is None:
        return None
    gpa, _, host, _ = ram
    end = max(g + s for g, s, _, _ in views)
    return (C.c_char * end).from_address(host - gpa)
