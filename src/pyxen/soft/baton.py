"""One engine at a time: the software CPU's answer to locked instructions.

Unicorn translates guest code without QEMU's CF_PARALLEL (its curr_cflags() is 0), so a
`lock`-prefixed read-modify-write, `xchg` with memory or `cmpxchg` becomes a plain load and a
plain store. Two engines running at once on two host threads then lose updates to shared
memory: measured with the kit guest `smp_atomic`, about one `lock incl` in 2000 was lost and a
cmpxchg spinlock let both vCPUs in. The same holds between an engine and pyxen itself: the
hypervisor sets event-channel bits (evtchn_pending, a FIFO event word's PENDING/LINKED) with
the host's atomic instructions while the guest clears neighbouring bits of the same word with
`lock btr`/`cmpxchg`; a guest RMW that straddles pyxen's store writes the word back without
it, and the event is lost. A Linux guest under the daemon, its timer events set from the
timer thread, then slept forever.

So the engines of one machine take turns, as QEMU's single-threaded TCG does (round-robin
vCPUs): a vCPU holds the baton only while its engine runs, and gives it back at every exit
(hypercall, MMIO, HLT, ...). A vCPU that wants to run waits first for the holder to give it
back by itself, at most one time slice, then kicks it out of its engine. Waiting vCPUs are
served in arrival order, so a vCPU that spins cannot starve the one it waits for. And pyxen's
own writes to words a guest changes with locked instructions are made under `exclusive()`:
it takes the baton at once (kicking a running engine, which stops exactly at its next block),
so no engine runs while they happen.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Protocol

SLICE_S = 0.001  # how long a waiting vCPU lets the running one go on before kicking it


class Kickable(Protocol):
    def kick(self) -> None: ...


class _Writer:
    """pyxen itself, holding the baton for an exclusive() write."""

    def kick(self) -> None:
        """Nothing to stop: it gives the baton back as soon as its write is made."""


class Baton:
    """Who may run an engine (or write guest words engines change) now."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._holder: Kickable | None = None
        self._owner = 0  # the holding thread
        self._queue: collections.deque[Kickable] = collections.deque()

    def acquire(self, vcpu: Kickable, urgent: bool = False) -> None:
        with self._cond:
            if self._holder is None and not self._queue:
                self._take(vcpu)
                return
            if urgent:
                self._queue.appendleft(vcpu)
                deadline = time.monotonic()  # no slice: kick the running engine at once
            else:
                self._queue.append(vcpu)
                deadline = time.monotonic() + SLICE_S
            seen = self._holder
            while True:
                if self._holder is None and self._queue[0] is vcpu:
                    self._queue.popleft()
                    self._take(vcpu)
                    return
                holder = self._holder
                if holder is None:  # the head of the queue is about to take it: look again
                    self._cond.wait(SLICE_S)  # soon, and kick it if it keeps it too long
                    continue
                if holder is not seen:  # a new holder gets its own slice
                    seen = holder
                    deadline = time.monotonic() + (0 if urgent else SLICE_S)
                left = deadline - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                deadline = time.monotonic() + SLICE_S  # one kick per slice
                holder.kick()  # it stops at its next block and gives the baton back

    def _take(self, holder: Kickable) -> None:
        self._holder, self._owner = holder, threading.get_ident()

    def release(self) -> None:
        with self._cond:
            self._holder, self._owner = None, 0
            if self._queue:
                self._cond.notify_all()

    def held_here(self) -> bool:
        return self._owner == threading.get_ident()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """No engine runs inside this block (a no-op where this thread holds the baton)."""
        if self.held_here():
            yield
            return
        self.acquire(_Writer(), urgent=True)
        try:
            yield
        finally:
            self.release()
