"""Dirty-page logging for the software CPU (`set_dirty_logging` / `fetch_dirty`).

How a guest write is seen, while logging is on:

- **Stores by the emulated CPU.** Each engine maps the RAM slots read-only (`TRACKED`:
  read + execute) with `mem_map_ptr`, and a `UC_HOOK_MEM_WRITE_PROT` hook (a raw ctypes
  callback, installed once per engine) adds the frame to the vCPU's private set and returns
  True, so the store goes ahead. Unicorn sends *every* store through its C store helper
  (while any unbounded memory hook exists, this one included, TLB entries keep their
  not-dirty bit and TCG never writes RAM inline), which checks the region's permissions on
  each access, atomics included (Unicorn never generates parallel code): no store escapes; a
  page-crossing store comes back byte by byte with each byte's own guest-physical address,
  so the second frame is right even when the two virtual pages are not contiguous. When
  logging is off the slots are mapped read-write and the hook never runs: no cost.
- **Frames the CPU pushes while delivering an interrupt or exception**: the soft CPU
  delivers them in Python (`interrupts.deliver`), through a GuestAccess over `PhysicalRam`,
  which reports each write, after making it, to `PhysicalRam.on_write`: `note_write` here.

Why not "write-protect, trap the first write, re-enable that page" (KVM's way)? Measured on
Unicorn 2.1.4 (256 MiB slot, a loop writing 64 qwords into each of N pages):

- re-enabling one page (`mem_protect(page, 4 KiB, ALL)`) splits the region: an unmap of the
  whole region (a TLB flush per 4 KiB page, its translations dropped) and up to three
  re-maps, each rebuilding the flat view in O(regions). 1,024 first writes took 4.5 s and
  4,096 took 121 s (~30 ms each, growing with the region count), against 0.11 s for the
  hook below on every store of the 1,024-page run (0.017 s with logging off);
- `mem_protect` marks the region read-only for QEMU too: a store that the hook lets through
  is then *discarded* (its TLB entry says "ROM"), the MMU's accessed/dirty-bit updates to
  protected page tables are dropped (guest-visible), and re-enabling the page from inside
  the hook flushes the TLB under the running store helper (a segfault).
Mapping with `mem_map_ptr` and read-only permissions avoids all three (Unicorn then checks
only the permission bits), but re-enabling a page would still mean splitting the region.
So the per-store hook it is: ~0.2 µs per guest store while logging, nothing otherwise.

Coordination with running vCPUs: the hook records into the vCPU's own set (no lock on the
hot path); the vCPU moves it into the machine's record when it leaves `emu_start`, when all
the stores it recorded have completed. `fetch_dirty` and `set_dirty_logging` kick every
vCPU that is running guest code and wait until each has left it once, so a fetch reports
every write that completed before it was called, and a write is never in a returned set
before it has landed. A vCPU re-maps its slots when it next enters guest code if logging
was switched meanwhile.

Not seen (a limitation of Unicorn, shared by every hook it offers): the accessed/dirty bits
that the emulated MMU sets in the guest's page-table entries during a page walk, which
QEMU writes straight to RAM (`x86_stl_phys_notdirty`). A migration loses one only if the
CPU sets it in a page-table page already copied, which the guest then does not write again.
"""

from __future__ import annotations

import ctypes as C
import threading

from unicorn import UC_PROT_EXEC, UC_PROT_READ

from pyxen.domain.memory import PAGE_SHIFT

TRACKED = UC_PROT_READ | UC_PROT_EXEC  # RAM permissions while logging: stores reach the hook
# uc_cb_eventmem_t: bool (uc_engine *, uc_mem_type, uint64_t address, int size, int64_t
# value, void *user_data)
HOOK_MEM_CFUNC = C.CFUNCTYPE(C.c_bool, C.c_void_p, C.c_int, C.c_uint64, C.c_int, C.c_int64,
                             C.c_void_p)
QUIESCE_RETRY_S = 0.05


class DirtyLog:
    """A machine's record of the frames its guest wrote, and the lock vCPUs share for it."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.enabled = False
        self.record: set[int] = set()

    def merge(self, frames: set[int]) -> None:
        """Add frames whose writes have landed (caller holds `cond`)."""
        if self.enabled:
            self.record |= frames

    def note_write(self, gpa: int, length: int) -> None:
        """A write the soft CPU made from Python (interrupt delivery), already done."""
        if length > 0:
            with self.cond:
                self.merge(set(range(gpa >> PAGE_SHIFT, ((gpa + length - 1) >> PAGE_SHIFT) + 1)))
