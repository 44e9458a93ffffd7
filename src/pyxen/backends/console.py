"""The PV console back end: xenconsoled's part for one domain's console ring.

The guest writes its output into the ring's `out` side, bumps out_prod and notifies its
console port; `kick` (called on that notification) copies everything outstanding to the
domain's console, moves out_cons and notifies back, so a writer waiting for space wakes.
Input goes the other way: `feed` puts bytes into `in`, bumps in_prod, notifies, and waits
for the guest to consume when the ring is full (the guest notifies; a slow poll covers
guests that do not). Nothing is ever dropped.

As xenconsoled (tools/console/daemon/io.c), a domain that notifies more than
RATE_LIMIT_ALLOWANCE times in a RATE_LIMIT_PERIOD is not serviced again until the next
period; its data waits in the ring and is drained then. Unlike xenconsoled, which ignores a
ring whose indices are impossible, pyxen stops serving it and says so once: the guest
broke its console, nothing else is affected.

Ordering: x86 keeps stores in order and loads in order, so reading the producer index before
the bytes (and writing the bytes before the index) is all a consistent ring needs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from pyxen.abi.console import (
    XENCONS_IN,
    XENCONS_IN_CONS,
    XENCONS_IN_PROD,
    XENCONS_IN_SIZE,
    XENCONS_OUT,
    XENCONS_OUT_CONS,
    XENCONS_OUT_PROD,
    XENCONS_OUT_SIZE,
)
from pyxen.hv import atomic

log = logging.getLogger("pyxen.console")
RATE_LIMIT_ALLOWANCE = 30  # notifications serviced per period (xenconsoled's figures)
RATE_LIMIT_PERIOD = 0.200  # seconds
PERIOD_FUZZ = 0.005  # xenconsoled starts a new period up to 5 ms early
INPUT_POLL = 0.1  # re-check a full `in` ring this often, for guests that never notify


class ConsoleBackend:
    """Serves one console ring; `page` is a writable 4 KiB view of it."""

    def __init__(self, page: memoryview, output: Callable[[bytes], None],
                 notify: Callable[[], None], name: str = "domain",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.page = page
        self._base = atomic.buffer_address(page)  # indices: single 32-bit accesses
        self.output = output
        self.notify = notify
        self.name = name
        self.clock = clock
        self.failed = False
        self.closed = False
        self.event_count = 0
        self.next_period = 0.0
        self.throttled_events = 0  # notifications held back by the rate limit (statistics)
        self._held = False  # a notification arrived while over the allowance
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()
        self._space = threading.Condition(self._lock)  # the guest notified: `in` may have room

    def _u32(self, offset: int) -> int:
        return atomic.load32(self._base + offset)

    def _set_u32(self, offset: int, value: int) -> None:
        atomic.store32(self._base + offset, value)

    # --- output: the guest's notifications ------------------------------------------------
    def kick(self) -> None:
        """The guest notified its console port."""
        with self._lock:
            self._space.notify_all()
            if self.failed or self.closed:
                return
            now = self.clock()
            self._new_period(now)
            if self.event_count >= RATE_LIMIT_ALLOWANCE:
                self.throttled_events += 1
                self._held = True
                self._arm_timer(now)
                return
            self.event_count += 1
            self._held = False
            self._drain()

    def _new_period(self, now: float) -> None:
        if now + PERIOD_FUZZ > self.next_period:
            self.next_period = now + RATE_LIMIT_PERIOD
            self.event_count = 0

    def _arm_timer(self, now: float) -> None:
        if self._timer is None:
            self._timer = threading.Timer(max(0.0, self.next_period - now), self._period_ends)
            self._timer.daemon = True
            self._timer.start()

    def _period_ends(self) -> None:
        """A throttled domain gets its allowance back: the held notification is handled."""
        with self._lock:
            self._timer = None
            if self.failed or self.closed or not self._held:
                return
            now = self.clock()
            self._new_period(max(now, self.next_period - PERIOD_FUZZ))
            self._held = False
            self.event_count += 1
            self._drain()

    def _drain(self) -> None:
        """Under the lock: everything outstanding in `out` to the console, in order."""
        cons, prod = self._u32(XENCONS_OUT_CONS), self._u32(XENCONS_OUT_PROD)
        size = (prod - cons) & 0xFFFF_FFFF
        if size > XENCONS_OUT_SIZE:
            self._fail(f"output indices cons={cons:#x} prod={prod:#x} are corrupt")
            return
        if not size:
            return
        start = cons & (XENCONS_OUT_SIZE - 1)
        first = min(size, XENCONS_OUT_SIZE - start)  # up to the ring's end, then from 0
        data = bytes(self.page[XENCONS_OUT + start : XENCONS_OUT + start + first]) + \
            bytes(self.page[XENCONS_OUT : XENCONS_OUT + size - first])
        self._set_u32(XENCONS_OUT_CONS, prod)
        self.notify()
        self.output(data)

    def _fail(self, why: str) -> None:
        log.warning("%s: console ring %s; no longer serving its console", self.name, why)
        self.failed = True
        self._space.notify_all()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # --- input -----------------------------------------------------------------------------
    def put_input(self, data: bytes) -> int:
        """Copy what fits of `data` into `in` and notify; how many bytes went in."""
        with self._lock:
            return self._put_input(data)

    def _put_input(self, data: bytes) -> int:
        if self.failed or self.closed or not data:
            return 0
        cons, prod = self._u32(XENCONS_IN_CONS), self._u32(XENCONS_IN_PROD)
        used = (prod - cons) & 0xFFFF_FFFF
        if used > XENCONS_IN_SIZE:
            self._fail(f"input indices cons={cons:#x} prod={prod:#x} are corrupt")
            return 0
        n = min(XENCONS_IN_SIZE - used, len(data))
        if not n:
            return 0
        start = prod & (XENCONS_IN_SIZE - 1)
        first = min(n, XENCONS_IN_SIZE - start)
        self.page[XENCONS_IN + start : XENCONS_IN + start + first] = data[:first]
        self.page[XENCONS_IN : XENCONS_IN + n - first] = data[first:n]
        self._set_u32(XENCONS_IN_PROD, prod + n)
        self.notify()
        return n

    def feed(self, data: bytes, stop: threading.Event | None = None) -> bool:
        """Put all of `data` into `in`, waiting for the guest to make room. False if the
        console stopped being served (closed, broken ring, `stop` set) before the end."""
        view = memoryview(data)
        with self._lock:
            while view:
                if self.failed or self.closed or (stop is not None and stop.is_set()):
                    return False
                n = self._put_input(bytes(view[:XENCONS_IN_SIZE]))
                view = view[n:]
                if view and not n:
                    self._space.wait(INPUT_POLL)
        return True

    # --- the end ---------------------------------------------------------------------------
    def close(self) -> None:
        """The domain is going: what it left in `out` is printed (rate limit or not), then
        nothing more is served and waiting feeders return."""
        with self._lock:
            if self.closed:
                return
            if not self.failed:
                self._drain()
            self.closed = True
            self._space.notify_all()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self.page.release()  # nothing touches the page once closed: guest memory may go
