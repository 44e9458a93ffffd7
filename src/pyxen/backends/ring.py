"""The back end's half of an io/ring.h ring (Xen's BACK_RING macros), for every split driver.

The front end produces requests and consumes responses; the back end consumes requests
and produces responses. Indices are free-running 32-bit counters in the ring's header;
each side keeps a private copy of its own (`req_cons`, `rsp_prod_pvt`) and publishes the
producer index after the slots it covers are written. The `*_event` indices say when the
other side wants a notification (Xen's RING_FINAL_CHECK_FOR_REQUESTS and
RING_PUSH_RESPONSES_AND_CHECK_NOTIFY rules).

A ring of several pages (blkif's `ring-page-order`) is one byte range spread over pages
the front end granted separately, so a slot may straddle two of them: slots are read and
written through `_read`/`_write`, which split at page boundaries.

Ordering: x86 keeps loads in order and stores in order; the one place a store must be
seen before a later load (publishing an event index, then re-reading the producer) uses a
sequentially consistent store, a locked instruction.
"""

from __future__ import annotations

from pyxen.abi.ring import (
    RING_SIZE,
    SRING_REQ_EVENT,
    SRING_REQ_PROD,
    SRING_RING,
    SRING_RSP_EVENT,
    SRING_RSP_PROD,
)
from pyxen.hv import atomic

PAGE = 4096
MASK32 = 0xFFFF_FFFF


class RingBroken(Exception):
    """The front end's indices are impossible: the back end stops serving the ring (as
    blkback and netback do), and the guest only harmed its own device."""


class BackRing:
    """One ring, `pages` its writable page views in ring order, `header` the host address
    of the first page (where the indices are)."""

    def __init__(self, pages: list[memoryview], header: int, slot_size: int) -> None:
        self.pages = pages
        self.header = header
        self.slot_size = slot_size
        self.size = RING_SIZE(len(pages) * PAGE, slot_size)
        # Where the responses stand: 0 on a ring the front end just set up; on a ring it
        # kept while the back end went and came back (a save or a migration, which drain
        # every request taken first), every request up to there was answered.
        self.req_cons = self.rsp_prod_pvt = self._index(SRING_RSP_PROD)

    # --- bytes of the ring, across page boundaries --------------------------------------------
    def _read(self, offset: int, length: int) -> bytes:
        page, at = divmod(offset, PAGE)
        if at + length <= PAGE:
            return bytes(self.pages[page][at : at + length])
        first = PAGE - at
        return bytes(self.pages[page][at:]) + bytes(self.pages[page + 1][: length - first])

    def _write(self, offset: int, data: bytes) -> None:
        page, at = divmod(offset, PAGE)
        if at + len(data) <= PAGE:
            self.pages[page][at : at + len(data)] = data
            return
        first = PAGE - at
        self.pages[page][at:] = data[:first]
        self.pages[page + 1][: len(data) - first] = data[first:]

    def _slot(self, index: int) -> int:
        return SRING_RING + (index & (self.size - 1)) * self.slot_size

    def _index(self, offset: int) -> int:
        return atomic.load32(self.header + offset)

    # --- requests -----------------------------------------------------------------------------
    def unconsumed(self) -> int:
        """RING_HAS_UNCONSUMED_REQUESTS: requests the back end may take now (never more
        than there are response slots for)."""
        req_prod = self._index(SRING_REQ_PROD)
        pending = (req_prod - self.req_cons) & MASK32
        if pending > self.size:
            raise RingBroken(f"front end published {pending} requests on a ring of "
                             f"{self.size} (req_prod {req_prod}, req_cons {self.req_cons})")
        room = self.size - ((self.req_cons - self.rsp_prod_pvt) & MASK32)
        return min(pending, room)

    def final_check_for_requests(self) -> int:
        """RING_FINAL_CHECK_FOR_REQUESTS: the unconsumed count, after asking to be notified
        of the next request when there are none (and looking again, to close the race)."""
        work = self.unconsumed()
        if work:
            return work
        atomic.store32(self.header + SRING_REQ_EVENT, (self.req_cons + 1) & MASK32)
        return self.unconsumed()

    def take_request(self) -> bytes:
        """A copy of the next request's slot (the front end may rewrite the slot once it is
        consumed, so the back end works from the copy: no double fetch)."""
        data = self._read(self._slot(self.req_cons), self.slot_size)
        self.req_cons = (self.req_cons + 1) & MASK32
        return data

    # --- responses ----------------------------------------------------------------------------
    def put_response(self, data: bytes) -> None:
        self._write(self._slot(self.rsp_prod_pvt), data)
        self.rsp_prod_pvt = (self.rsp_prod_pvt + 1) & MASK32

    def push_responses_and_check_notify(self) -> bool:
        """Publish the responses written; whether the front end asked to be notified of
        one of them."""
        old = self._index(SRING_RSP_PROD)
        new = self.rsp_prod_pvt
        atomic.store32(self.header + SRING_RSP_PROD, new)
        event = self._index(SRING_RSP_EVENT)
        return (new - event) & MASK32 < (new - old) & MASK32
