"""The guest transport: a xenstore_domain_interface ring in the guest's store page.

The guest writes requests into `req` and bumps req_prod, then notifies its store event
channel; pyxen consumes them (req_cons), feeds them to the domain's Connection, and writes
replies and watch events into `rsp`, bumping rsp_prod and notifying back. Replies that do
not fit wait until the guest consumes and notifies again.

Ordering: on x86, stores are not reordered with other stores nor loads with other loads, so
writing the data before the producer index (and reading the index before the data) is all
the guest needs to see a consistent ring — the same argument Xen's C xenstored relies on.
A guest that scribbles on the indices (more than a ring's worth outstanding) gets
XENSTORE_ERROR_RINGIDX in the page's error field and its connection closed; nobody else is
affected.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from pyxen.abi.xs_wire import (
    XENSTORE_ERROR_RINGIDX,
    XENSTORE_RING_SIZE,
    XSDI_ERROR,
    XSDI_REQ,
    XSDI_REQ_CONS,
    XSDI_REQ_PROD,
    XSDI_RSP,
    XSDI_RSP_CONS,
    XSDI_RSP_PROD,
)
from pyxen.hv import atomic
from pyxen.xenstore.xenstored import XenStored

log = logging.getLogger("pyxen.xenstore")
MASK = XENSTORE_RING_SIZE - 1


class GuestRing:
    """Serves domain `domid`'s store ring, `page` being a writable 4 KiB buffer of it."""

    def __init__(self, xenstored: XenStored, domid: int, page: memoryview,
                 notify: Callable[[], None]) -> None:
        self.page = page
        self._base = atomic.buffer_address(page)  # indices: single 32-bit accesses
        self.notify = notify
        self.out = bytearray()
        self.failed = False
        self.lock = threading.Lock()  # the vCPU (requests) and other clients (events) race
        self.feeding = threading.Lock()  # one kick at a time: requests are handled in order
        self.notifications = 0  # times the guest was notified of output
        self.conn = xenstored.connect(domid, self._write, self._closed)

    def _u32(self, offset: int) -> int:
        return atomic.load32(self._base + offset)

    def _set_u32(self, offset: int, value: int) -> None:
        atomic.store32(self._base + offset, value)

    def _copy_out(self, ring: int, index: int, n: int) -> bytes:
        start = index & MASK
        first = min(n, XENSTORE_RING_SIZE - start)  # up to the ring's end, then from 0
        return bytes(self.page[ring + start : ring + start + first]) + \
            bytes(self.page[ring : ring + n - first])

    def kick(self) -> None:
        """The guest notified its store port: take its requests, push out pending output.

        A guest adds requests without notifying while earlier ones are still unconsumed
        (Linux's xb_write notifies only when it finds req_cons caught up with its old
        req_prod), so the ring is looked at again after each batch until it is empty, as
        xenstored's main loop does before it sleeps; req_cons is made visible before
        req_prod is read again, or both sides could miss each other's update.

        The requests are marked consumed (req_cons) only once handled and answered, so a
        daemon killed in between leaves them in the ring for the next one (which may then
        answer one twice; a guest drops a reply to a request id it no longer waits for)."""
        with self.feeding:
            while self._take_requests():
                atomic.fence()

    def _take_requests(self) -> bool:
        """Handle what the ring holds now; whether there was anything."""
        with self.lock:
            if self.failed:
                return False
            indices = self._indices(XSDI_REQ_CONS, XSDI_REQ_PROD, "request")
            if indices is None:
                return False
            cons, prod, avail = indices
            data = self._copy_out(XSDI_REQ, cons, avail)
            notified = self.notifications
        if data:
            self.conn.feed(data)  # replies come back through _write
        with self.lock:
            if data and not self.failed:
                self._set_u32(XSDI_REQ_CONS, prod)
            self._flush()
            if data and self.notifications == notified:
                # no reply yet (part of a request longer than the ring): the guest may
                # be waiting for the space, as xenstored notifies after reading
                self.notify()
            return bool(data) and not self.failed

    def _indices(self, cons_at: int, prod_at: int, what: str) -> tuple[int, int, int] | None:
        """A ring's consumer and producer indices and the bytes between them; None (and the
        connection failed) if the guest made them impossible."""
        cons, prod = self._u32(cons_at), self._u32(prod_at)
        used = (prod - cons) & 0xFFFF_FFFF
        if used > XENSTORE_RING_SIZE:
            self._fail(f"{what} indices {cons:#x}/{prod:#x} are corrupt")
            return None
        return cons, prod, used

    def _write(self, data: bytes) -> None:
        with self.lock:
            self.out += data
            self._flush()

    def _flush(self) -> None:
        if self.failed or not self.out:
            return
        indices = self._indices(XSDI_RSP_CONS, XSDI_RSP_PROD, "response")
        if indices is None:
            return
        cons, prod, used = indices
        n = min(XENSTORE_RING_SIZE - used, len(self.out))
        if not n:
            return  # ring full: the guest notifies us when it has consumed some
        start = prod & MASK
        first = min(n, XENSTORE_RING_SIZE - start)  # up to the ring's end, then from 0
        self.page[XSDI_RSP + start : XSDI_RSP + start + first] = self.out[:first]
        self.page[XSDI_RSP : XSDI_RSP + n - first] = self.out[first:n]
        del self.out[:n]
        self._set_u32(XSDI_RSP_PROD, prod + n)
        self.notifications += 1
        self.notify()

    def _fail(self, why: str) -> None:
        log.warning("dom%d store ring: %s; closing the connection", self.conn.domid, why)
        self.failed = True
        self._set_u32(XSDI_ERROR, XENSTORE_ERROR_RINGIDX)
        self.out.clear()
        self.conn.close()
        self.notify()

    def _closed(self) -> None:
        """The daemon dropped the connection (protocol error, domain released)."""
        with self.lock:
            self.failed = True
            self.out.clear()
