"""The timer queue survives deadlines a guest may set anywhere in 64 bits."""

from __future__ import annotations

import threading

from pyxen.hv.time import DomainClock
from pyxen.hv.timer import Timer, TimerQueue


def test_a_deadline_centuries_away_does_not_stop_the_other_timers() -> None:
    # Found by the fuzzing guest: set_timer_op(~0) made the queue's thread wait longer than
    # a lock can (threading.TIMEOUT_MAX, 292 years); it died of OverflowError, and every
    # timer of the domain with it.
    queue = TimerQueue(DomainClock(), "test")
    try:
        fired = threading.Event()
        far, near = Timer(lambda: None), Timer(fired.set)
        queue.set(far, (1 << 64) - 1)  # set_timer_op's largest
        threading.Event().wait(0.05)  # the queue's thread is now waiting for `far`
        queue.set(near, queue.clock.now() + 1_000_000)
        assert fired.wait(10), "a 1 ms timer armed after a far one never fired"
        assert queue._thread.is_alive()
    finally:
        queue.close()


def test_holding_waits_for_a_callback_already_firing() -> None:
    """A domain's pause holds its timers; a callback the timer thread had already started
    must have finished when hold(True) returns, or it sets an event in a paused domain
    whose state is being saved (seen as a paused counter's shared_info changing)."""
    queue = TimerQueue(DomainClock(), "test")
    try:
        started, done = threading.Event(), threading.Event()

        def slow() -> None:
            started.set()
            threading.Event().wait(0.3)
            done.set()

        queue.set(Timer(slow), 0)  # due now
        assert started.wait(10)
        queue.hold(True)
        assert done.is_set(), "hold(True) returned while a callback was still firing"
        fired = threading.Event()
        queue.set(Timer(fired.set), 0)
        assert not fired.wait(0.2), "a timer fired while held"
        queue.hold(False)
        assert fired.wait(10)
    finally:
        queue.close()
