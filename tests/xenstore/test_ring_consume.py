"""When the guest ring's requests count as consumed: only once handled and answered (a daemon
killed in between leaves them for the next one), and a request longer than the ring gets
the guest notified of the space it freed, as xenstored notifies after reading."""

from __future__ import annotations

from pyxen.abi.xs_wire import XS_WRITE, XSDI_REQ_CONS, XSDI_RSP_PROD
from pyxen.xenstore import XenStored
from pyxen.xenstore.ring import GuestRing
from xenstore.test_ring_property import GuestSide
from xenstore.test_ring_property import request as framed


def request(req_id: int, path: str, value: bytes) -> bytes:
    return framed(XS_WRITE, req_id, path.encode() + b"\0" + value)


def make_ring() -> tuple[XenStored, GuestRing, GuestSide, list[int]]:
    xenstored = XenStored()
    page = memoryview(bytearray(4096))
    notes: list[int] = []
    ring = GuestRing(xenstored, 0, page, notify=lambda: notes.append(1))
    return xenstored, ring, GuestSide(page), notes


def test_requests_are_consumed_only_once_answered() -> None:
    xenstored, ring, guest, _ = make_ring()
    seen: list[tuple[int, int]] = []
    feed = ring.conn.feed

    def feed_and_look(data: bytes) -> None:  # what the page says while the request is handled
        seen.append((guest.u32(XSDI_REQ_CONS), guest.u32(XSDI_RSP_PROD)))
        feed(data)

    ring.conn.feed = feed_and_look  # type: ignore[method-assign]
    message = request(7, "/a", b"x")
    guest.send(message)
    ring.kick()
    assert seen == [(0, 0)]  # still unconsumed, nothing answered, while it was handled
    assert guest.u32(XSDI_REQ_CONS) == len(message)  # consumed once answered
    guest.receive(4096)
    assert guest.replies()[0][:2] == (XS_WRITE, 7)
    assert xenstored.store.nodes["/a"].value == b"x"


def test_a_request_longer_than_the_ring_is_taken_in_parts_with_notifications() -> None:
    xenstored, ring, guest, notes = make_ring()
    message = request(9, "/big", b"v" * 3000)
    sent = guest.send(message)
    assert sent < len(message)  # the ring holds only part of it
    while sent < len(message):
        before = len(notes)
        ring.kick()
        assert len(notes) > before  # told there is room again, though no reply yet
        sent += guest.send(message[sent:])
    ring.kick()
    guest.receive(4096)
    assert guest.replies()[0][:2] == (XS_WRITE, 9)
    assert xenstored.store.nodes["/big"].value == b"v" * 3000


def test_requests_added_without_a_notification_while_others_are_handled_are_served() -> None:
    """Linux's xb_write notifies only if req_cons had caught up with its old req_prod: a
    request written while the one before is being handled comes with no notification."""
    xenstored, ring, guest, _ = make_ring()
    first, second = request(1, "/first", b"1"), request(2, "/second", b"2")
    feed = ring.conn.feed
    sent: list[int] = []

    def feed_and_write_more(data: bytes) -> None:
        if not sent:  # the guest writes its next request meanwhile, and does not notify
            sent.append(guest.send(second))
        feed(data)

    ring.conn.feed = feed_and_write_more  # type: ignore[method-assign]
    guest.send(first)
    ring.kick()  # the only notification
    assert sent == [len(second)]
    assert guest.u32(XSDI_REQ_CONS) == len(first) + len(second)
    guest.receive(4096)
    assert [r[:2] for r in guest.replies()] == [(XS_WRITE, 1), (XS_WRITE, 2)]
    assert xenstored.store.nodes["/second"].value == b"2"
