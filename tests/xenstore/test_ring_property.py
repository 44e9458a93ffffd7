"""The guest ring transport under any interleaving: hypothesis plays the guest (a Python
writer and reader of the xenstore_domain_interface page) against a real GuestRing, with
requests and replies of random sizes that wrap around the 1 KiB rings, requests delivered
in random pieces, and replies consumed lazily so the response ring fills up and pyxen must
hold output back. Every request gets exactly its reply, in order."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from pyxen.abi.xs_wire import (
    XENSTORE_RING_SIZE,
    XS_READ,
    XS_WRITE,
    XSDI_REQ,
    XSDI_REQ_CONS,
    XSDI_REQ_PROD,
    XSDI_RSP,
    XSDI_RSP_CONS,
    XSDI_RSP_PROD,
)
from pyxen.xenstore import XenStored
from pyxen.xenstore.ring import GuestRing

HEADER = struct.Struct("<IIII")  # type, req_id, tx_id, len
MASK = XENSTORE_RING_SIZE - 1


class GuestSide:
    """What a guest's xenbus driver does with the page."""

    def __init__(self, page: memoryview) -> None:
        self.page = page
        self.received = bytearray()

    def u32(self, offset: int) -> int:
        return struct.unpack_from("<I", self.page, offset)[0]

    def put_u32(self, offset: int, value: int) -> None:
        struct.pack_into("<I", self.page, offset, value & 0xFFFF_FFFF)

    def send(self, data: bytes) -> int:
        """Write as much of `data` as fits; how much was written."""
        cons, prod = self.u32(XSDI_REQ_CONS), self.u32(XSDI_REQ_PROD)
        n = min(len(data), XENSTORE_RING_SIZE - ((prod - cons) & 0xFFFF_FFFF))
        for i in range(n):
            self.page[XSDI_REQ + ((prod + i) & MASK)] = data[i]
        self.put_u32(XSDI_REQ_PROD, prod + n)
        return n

    def receive(self, limit: int) -> None:
        cons, prod = self.u32(XSDI_RSP_CONS), self.u32(XSDI_RSP_PROD)
        n = min(limit, (prod - cons) & 0xFFFF_FFFF)  # indices are free-running u32s
        self.received += bytes(self.page[XSDI_RSP + ((cons + i) & MASK)] for i in range(n))
        self.put_u32(XSDI_RSP_CONS, cons + n)

    def replies(self) -> list[tuple[int, int, bytes]]:
        out, pos = [], 0
        while pos + HEADER.size <= len(self.received):
            type_, req_id, _, length = HEADER.unpack_from(self.received, pos)
            if pos + HEADER.size + length > len(self.received):
                break
            out.append((type_, req_id, bytes(self.received[pos + 16 : pos + 16 + length])))
            pos += HEADER.size + length
        return out


def request(type_: int, req_id: int, payload: bytes) -> bytes:
    return HEADER.pack(type_, req_id, 0, len(payload)) + payload


@settings(max_examples=60, deadline=None)
@given(
    start=st.integers(0, 0xFFFF_FFFF),  # where the indices begin (they wrap at 2^32 too)
    values=st.lists(st.binary(min_size=0, max_size=900), min_size=1, max_size=12),
    piece=st.integers(1, 700),
    drain=st.integers(1, 500),
)
def test_every_request_gets_its_reply_in_order(start, values, piece, drain) -> None:
    xsd = XenStored()
    page = memoryview(bytearray(4096))
    for offset in (XSDI_REQ_CONS, XSDI_REQ_PROD, XSDI_RSP_CONS, XSDI_RSP_PROD):
        struct.pack_into("<I", page, offset, start)
    ring = GuestRing(xsd, 0, page, notify=lambda: None)  # dom0: may write anywhere
    guest = GuestSide(page)
    stream = b""
    for i, value in enumerate(values):
        path = f"/ring/n{i}".encode() + b"\0"
        stream += request(XS_WRITE, 2 * i + 1, path + value)
        stream += request(XS_READ, 2 * i + 2, path)
    expected = 2 * len(values)
    for _ in range(10_000):
        if stream:
            stream = stream[guest.send(stream[:piece]):]
        ring.kick()  # the guest's notification
        guest.receive(drain)
        if not stream and len(guest.replies()) == expected:
            break
    replies = guest.replies()
    assert [r[1] for r in replies] == list(range(1, expected + 1))
    for i, value in enumerate(values):
        assert replies[2 * i][0] == XS_WRITE
        assert replies[2 * i + 1] == (XS_READ, 2 * i + 2, value)
    assert not ring.failed
