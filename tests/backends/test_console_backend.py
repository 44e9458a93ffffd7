"""The console back end against a Python guest writing and reading the xencons_interface
page: every byte out in order (indices wrapping at 2^32), input never dropped, the rate
limit holding data in the ring instead of losing it, and a broken ring cut off alone."""

from __future__ import annotations

import struct
import threading

from hypothesis import given, settings
from hypothesis import strategies as st

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
from pyxen.backends.console import RATE_LIMIT_ALLOWANCE, RATE_LIMIT_PERIOD, ConsoleBackend

U32 = 0xFFFF_FFFF


class Guest:
    """What a guest's console driver does with the page."""

    def __init__(self, page: memoryview) -> None:
        self.page = page
        self.received = bytearray()

    def u32(self, offset: int) -> int:
        return struct.unpack_from("<I", self.page, offset)[0]

    def put_u32(self, offset: int, value: int) -> None:
        struct.pack_into("<I", self.page, offset, value & U32)

    def write(self, data: bytes) -> int:
        cons, prod = self.u32(XENCONS_OUT_CONS), self.u32(XENCONS_OUT_PROD)
        n = min(len(data), XENCONS_OUT_SIZE - ((prod - cons) & U32))
        for i in range(n):
            self.page[XENCONS_OUT + ((prod + i) & (XENCONS_OUT_SIZE - 1))] = data[i]
        self.put_u32(XENCONS_OUT_PROD, prod + n)
        return n

    def read(self, limit: int) -> None:
        cons, prod = self.u32(XENCONS_IN_CONS), self.u32(XENCONS_IN_PROD)
        n = min(limit, (prod - cons) & U32)
        self.received += bytes(self.page[XENCONS_IN + ((cons + i) & (XENCONS_IN_SIZE - 1))]
                               for i in range(n))
        self.put_u32(XENCONS_IN_CONS, cons + n)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(start: int = 0, clock: Clock | None = None):  # type: ignore[no-untyped-def]
    page = memoryview(bytearray(4096))
    guest = Guest(page)
    for off in (XENCONS_OUT_CONS, XENCONS_OUT_PROD, XENCONS_IN_CONS, XENCONS_IN_PROD):
        guest.put_u32(off, start)
    out = bytearray()
    notes: list[int] = []
    backend = ConsoleBackend(page, out.extend, lambda: notes.append(1), name="test",
                             clock=clock or Clock())
    return guest, backend, out, notes


@settings(max_examples=200, deadline=None)
@given(start=st.sampled_from([0, 1, 2047, U32 - 5000, U32 - 1, U32]),
       chunks=st.lists(st.binary(min_size=0, max_size=3000), max_size=12))
def test_output_arrives_in_order_across_index_wrap(start: int, chunks: list[bytes]) -> None:
    clock = Clock()
    guest, backend, out, notes = make(start, clock)
    sent = bytearray()
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            n = guest.write(bytes(view))
            sent += view[:n]
            view = view[n:]
            clock.now += RATE_LIMIT_PERIOD  # never over the allowance here
            backend.kick()
    assert out == sent
    assert guest.u32(XENCONS_OUT_CONS) == guest.u32(XENCONS_OUT_PROD)
    assert len(notes) >= (1 if sent else 0)


@settings(max_examples=100, deadline=None)
@given(start=st.sampled_from([0, 1000, U32 - 700, U32]),
       data=st.binary(min_size=1, max_size=5000),
       reads=st.lists(st.integers(min_value=1, max_value=1500), min_size=1, max_size=20))
def test_input_never_dropped_and_waits_for_room(start: int, data: bytes, reads: list[int]) -> None:
    guest, backend, _, notes = make(start)
    fed = threading.Event()
    feeder = threading.Thread(target=lambda: fed.set() if backend.feed(data) else None)
    feeder.start()
    i = 0
    while len(guest.received) < len(data):
        guest.read(reads[i % len(reads)])
        i += 1
        backend.kick()  # the guest notifies after consuming: the feeder wakes
        feeder.join(0.001)
    feeder.join(5)
    assert fed.is_set()
    assert bytes(guest.received) == data
    assert notes  # the guest was told about its input


def test_rate_limit_holds_data_until_the_next_period() -> None:
    clock = Clock()
    guest, backend, out, _ = make(clock=clock)
    for i in range(RATE_LIMIT_ALLOWANCE):
        guest.write(b"%d," % i)
        backend.kick()
    assert out.endswith(b"%d," % (RATE_LIMIT_ALLOWANCE - 1))
    held = len(out)
    guest.write(b"later")
    backend.kick()  # over the allowance: not serviced, not lost
    assert len(out) == held and backend.throttled_events == 1
    clock.now += RATE_LIMIT_PERIOD
    backend._period_ends()  # what the back end's timer does at the period's end
    assert out.endswith(b"later")
    backend.close()


def test_throttled_data_is_drained_by_the_timer() -> None:
    guest, backend, out, _ = make(clock=Clock())  # a clock that never moves: stays throttled
    for _ in range(RATE_LIMIT_ALLOWANCE + 1):
        guest.write(b"x")
        backend.kick()
    assert len(out) == RATE_LIMIT_ALLOWANCE
    backend.clock = lambda: 2000.0  # time passes; the real timer fires after the period
    deadline = threading.Event()
    for _ in range(100):
        if len(out) == RATE_LIMIT_ALLOWANCE + 1:
            break
        deadline.wait(0.05)
    assert len(out) == RATE_LIMIT_ALLOWANCE + 1
    backend.close()


def test_corrupt_indices_stop_the_service_only() -> None:
    guest, backend, out, _ = make()
    guest.write(b"fine\n")
    backend.kick()
    guest.put_u32(XENCONS_OUT_PROD, guest.u32(XENCONS_OUT_CONS) + 0x10000)
    backend.kick()
    assert backend.failed
    guest.put_u32(XENCONS_OUT_PROD, guest.u32(XENCONS_OUT_CONS))
    guest.write(b"ignored\n")
    backend.kick()
    assert out == b"fine\n"
    assert not backend.feed(b"input")  # no more input either, and no waiting


def test_corrupt_input_indices_stop_the_service() -> None:
    guest, backend, _, _ = make()
    guest.put_u32(XENCONS_IN_CONS, guest.u32(XENCONS_IN_PROD) - 5000)
    assert not backend.feed(b"abc")
    assert backend.failed


def test_close_prints_what_the_guest_left_and_stops_feeders() -> None:
    guest, backend, out, _ = make(clock=Clock())
    for _ in range(RATE_LIMIT_ALLOWANCE):
        guest.write(b".")
        backend.kick()
    guest.write(b"last words")
    backend.kick()  # held by the rate limit
    result: list[bool] = []
    feeder = threading.Thread(target=lambda: result.append(backend.feed(b"y" * 3000)))
    feeder.start()  # 3000 bytes never fit: it waits for the guest
    backend.close()
    feeder.join(5)
    assert out.endswith(b"last words")
    assert result == [False]
