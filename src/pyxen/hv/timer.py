"""Xen timers: callbacks run at an absolute Xen system time (ns).

One thread per domain keeps a heap of deadlines and sleeps until the earliest, so an idle
domain with a timer far away costs no CPU. Cancelling or re-arming a timer invalidates its
old heap entry (lazy deletion) instead of searching the heap.
"""

from __future__ import annotations

import ctypes as C
import heapq
import threading
from collections.abc import Callable

from pyxen.threads import start_worker

from .time import DomainClock

PR_SET_TIMERSLACK = 29
MAX_WAIT_S = 3600.0  # the longest single wait for a timer; a later deadline is waited for again
_libc = C.CDLL(None, use_errno=True)


def tight_timer_slack() -> None:
    """Linux delays a sleeping thread's wake-up by up to its timer slack (50 us by default);
    timers and timed vCPU sleeps should be on time, so the calling thread asks for 1 us."""
    _libc.prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)


class Timer:
    """One timer (Xen's struct timer): a callback and, while armed, a deadline."""

    __slots__ = ("callback", "deadline", "generation")

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback
        self.deadline: int | None = None
        self.generation = 0


class TimerQueue:
    def __init__(self, clock: DomainClock, name: str) -> None:
        self.clock = clock
        self._heap: list[tuple[int, int, int, Timer]] = []
        self._seq = 0
        self._cond = threading.Condition()
        self._stopped = False
        self._held = False  # the domain is paused: deadlines that pass wait for unpause
        self._firing = False  # a callback runs now (outside the lock)
        self._thread = threading.Thread(target=self._run, name=f"{name}-timers", daemon=True)
        start_worker(self._thread)

    def set(self, timer: Timer, deadline: int) -> None:
        """Arm (or re-arm) `timer` for system time `deadline`; a past deadline fires at once."""
        with self._cond:
            timer.generation += 1
            timer.deadline = deadline
            self._seq += 1
            heapq.heappush(self._heap, (deadline, self._seq, timer.generation, timer))
            self._cond.notify_all()

    def stop(self, timer: Timer) -> None:
        with self._cond:
            timer.generation += 1
            timer.deadline = None

    def hold(self, held: bool) -> None:
        """Fire nothing while held (the domain is paused); what came due fires on release.
        Holding waits for a callback already firing on the timer thread, so that none
        runs once this returns (a pause's save would miss what it sets)."""
        with self._cond:
            self._held = held
            self._cond.notify_all()
            if held and threading.current_thread() is not self._thread:
                self._cond.wait_for(lambda: not self._firing or self._stopped)

    def close(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        tight_timer_slack()
        while True:
            with self._cond:
                due = self._next_due()
                if due is None:
                    return
                self._firing = True
            try:
                due.callback()
            finally:
                with self._cond:
                    self._firing = False
                    self._cond.notify_all()

    def _next_due(self) -> Timer | None:
        """Under the lock: wait for and pop the next live timer (None once stopped)."""
        while not self._stopped:
            while self._heap and self._heap[0][2] != self._heap[0][3].generation:
                heapq.heappop(self._heap)  # cancelled or re-armed since
            if not self._heap or self._held:
                self._cond.wait()
                continue
            deadline, _, _, timer = self._heap[0]
            delay = deadline - self.clock.now()
            if delay > 0:
                # A guest may arm a timer centuries away: wait in bounded steps (a wait
                # past time_t's range raises, and would end every timer of the domain).
                self._cond.wait(min(delay / 1e9, MAX_WAIT_S))
                continue
            heapq.heappop(self._heap)
            timer.deadline = None
            return timer
        return None
