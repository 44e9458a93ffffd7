"""One engine at a time: the software CPU's answer to locked instructions between vCPUs.

Unicorn translates guest code without QEMU's CF_PARALLEL (its curr_cflags() is 0), so a
`lock`-prefixed read-modify-write, `xchg` with memory or `cmpxchg` becomes a plain load and a
plain store. Two engines running at once on two host threads then lose updates to shared
memory: measured with the kit guest `smp_atomic`, about one `lock incl` in 2000 was lost and a
cmpxchg spinlock let both vCPUs in. For Linux that is two CPUs inside one spinlock, soft
lockups and BUG()s in whatever it guarded -- what an SMP Linux guest did on the software CPU.

So the engines of one machine take turns, as QEMU's single-threaded TCG does (round-robin
vCPUs): a vCPU holds the baton only while its engine runs, and gives it back at every exit
(hypercall, MMIO, HLT, ...). A vCPU that wants to run waits first for the holder to give it
back by itself, at most one time slice, then kicks it out of its engine. Waiting vCPUs are
served in arrival order, so a vCPU that spins cannot starve the one it waits for. A machine
with one vCPU never waits here.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Protocol

SLICE_S = 0.001  # how long a waiting vCPU lets the running one go on before kicking it


class Kickable(Protocol):
    def kick(self) -> None: ...


class Baton:
    """Who may run an engine now."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._holder: Kickable | None = None
        self._queue: collections.deque[Kickable] = collections.deque()

    def acquire(self, vcpu: Kickable) -> None:
        with self._cond:
            if self._holder is None and not self._queue:
                self._holder = vcpu
                return
            self._queue.append(vcpu)
            deadline = time.monotonic() + SLICE_S
            while True:
                if self._holder is None and self._queue[0] is vcpu:
                    self._queue.popleft()
                    self._holder = vcpu
                    return
                holder = self._holder
                left = deadline - time.monotonic()
                if holder is None or left > 0:
                    self._cond.wait(left if left > 0 else None)
                    continue
                deadline = time.monotonic() + SLICE_S  # one kick per slice
                holder.kick()  # it leaves at the end of its current run (RUN_COUNT)

    def release(self) -> None:
        with self._cond:
            self._holder = None
            if self._queue:
                self._cond.notify_all()
