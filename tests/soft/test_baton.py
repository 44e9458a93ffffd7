"""The software CPU's baton (soft/baton.py): engines take turns, and a waiting vCPU always
gets its turn by kicking whoever holds the baton too long."""

from __future__ import annotations

import threading

from pyxen.soft.baton import Baton


class Engine:
    """A vCPU whose engine runs until kicked, then gives the baton back (as run() does)."""

    def __init__(self, baton: Baton, stops: bool = True) -> None:
        self.baton = baton
        self.stops = stops
        self.kicks = 0

    def kick(self) -> None:
        self.kicks += 1
        if self.stops:
            threading.Thread(target=self.baton.release).start()  # its engine stopped


def test_a_waiter_that_saw_the_baton_free_still_kicks_the_next_holder() -> None:
    """A waiter behind the head of the queue may look while nobody holds the baton (the head
    has not yet woken up to take it). It used to wait for a release with no time limit then,
    and a holder that never exits by itself (a vCPU spinning for the waiter) kept the baton
    for good: three vCPUs on a busy host stalled for minutes."""
    baton = Baton()
    head, waiter = Engine(baton), Engine(baton)
    with baton._cond:
        baton._queue.append(head)  # queued first, not yet woken
    got = threading.Event()

    def wait_for_turn() -> None:
        baton.acquire(waiter)
        got.set()

    threading.Thread(target=wait_for_turn, daemon=True).start()
    assert not got.wait(0.05)  # the baton is the head's, which has not taken it yet
    with baton._cond:  # the head wakes up and takes it; it will not exit by itself
        baton._queue.popleft()
        baton._take(head)
    assert got.wait(5), "the waiter never got the baton"
    assert head.kicks >= 1
    baton.release()


def test_turns_go_in_arrival_order() -> None:
    baton = Baton()
    first, second, third = (Engine(baton, stops=False) for _ in range(3))
    baton.acquire(first)
    order: list[str] = []

    def take(engine: Engine, name: str) -> None:
        baton.acquire(engine)
        order.append(name)
        baton.release()

    t2 = threading.Thread(target=take, args=(second, "second"))
    t2.start()
    while not baton._queue:
        pass
    t3 = threading.Thread(target=take, args=(third, "third"))
    t3.start()
    while len(baton._queue) < 2:
        pass
    baton.release()
    t2.join(5)
    t3.join(5)
    assert order == ["second", "third"]
