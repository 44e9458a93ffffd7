"""Links between domain processes (pyxen.host.peer_link) over the real fds the daemon makes:
the doorbell's coalescing, the calls' checks against the receiving domain's ports, and what
happens when the peer's process is gone. Both ends live in this process here; the guest
pair in tests/host/test_interdomain.py runs them in two domain processes."""

from __future__ import annotations

import ctypes as C
import os
import selectors
import threading
import time
from collections.abc import Iterator

import pytest

from hv.test_grant_table import BUSY, DATA_GFN, flags_v1, grant_v1, make_domain
from pyxen.abi import grant_table as G
from pyxen.abi.errno import EINVAL, ESRCH, XenError
from pyxen.domain.domain import Domain
from pyxen.host.peer_link import MAX_COPY_GRANTS, PeerLink, PeerLinks, link_ends
from pyxen.host.wire import WireError
from pyxen.hv import grant_table
from pyxen.hv.event_channel import ECS_INTERDOMAIN, ECS_RESERVED, ECS_UNBOUND


@pytest.fixture
def pair() -> Iterator[tuple[PeerLink, PeerLink]]:
    a_fds, b_fds = link_ends()
    a, b = PeerLink(2, a_fds), PeerLink(1, b_fds)  # a is dom1's link to dom2, b the reverse
    yield a, b
    for link in (a, b):
        link.close()


def unbound_port(d: Domain, remote_domid: int) -> int:
    """EVTCHNOP_alloc_unbound's effect: a port only `remote_domid` may bind."""
    with d.evtchn.lock:
        port = d.evtchn.get_free_port()
        chn = d.evtchn.bind(port)
        chn.state, chn.remote_domid = ECS_UNBOUND, remote_domid
    return port


class Served:
    """One side's main loop on a thread: it answers the other side's calls."""

    def __init__(self, domain: Domain, link: PeerLink) -> None:
        self.sel = selectors.DefaultSelector()
        self.links = PeerLinks(domain, lambda msg: False, self.sel)
        self.sel.register(link.serve_sock, selectors.EVENT_READ, (self.links, link, "serve"))
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop.is_set():
            for key, _ in self.sel.select(0.05):
                _, link, what = key.data
                self.links.readable(link, what)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.sel.close()


def test_the_daemon_closes_each_fd_of_a_new_link_once() -> None:
    """The daemon sends both sides their fds and closes all twelve: each is an fd of its
    own (a second close of one would close whatever fd took its number meanwhile)."""
    a_fds, b_fds = link_ends()
    assert len(set(a_fds + b_fds)) == 12
    for fd in a_fds + b_fds:
        os.close(fd)


def closed(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False


def test_a_link_that_cannot_be_made_closes_the_fds_it_took() -> None:
    """PeerLink takes the daemon's fds: if the link cannot be made of them (here a bitmap
    that is not one), it closes them itself, once; the caller must not close them again
    (a second close of a number another thread reuses closes that thread's fd)."""
    a_fds, b_fds = link_ends()
    for fd in b_fds:
        os.close(fd)
    os.close(a_fds[4])
    a_fds[4] = os.eventfd(0)  # an eventfd does not map
    with pytest.raises(OSError):
        PeerLink(2, a_fds)
    assert all(closed(fd) for fd in a_fds)
    few = link_ends()[0][:5]
    with pytest.raises(WireError):
        PeerLink(2, few)
    assert all(closed(fd) for fd in few)


def test_a_domain_process_drops_a_link_it_cannot_make(pair) -> None:
    dom1 = make_domain(1)
    sel = selectors.DefaultSelector()
    links = PeerLinks(dom1, lambda msg: True, sel)
    try:
        a_fds, b_fds = link_ends()
        for fd in b_fds:
            os.close(fd)
        os.close(a_fds[5])
        a_fds[5] = os.eventfd(0)
        done = threading.Thread(target=links.get, args=(2,))
        done.start()
        while not links._waiting:
            time.sleep(0.001)
        seq = next(iter(links._waiting))
        links.from_daemon({"op": "peer_link", "domid": 2, "seq": seq}, a_fds)  # no raise
        done.join(5)
        assert not done.is_alive() and not links.links
        assert all(closed(fd) for fd in a_fds)
        stray = link_ends()[0]
        links.from_daemon({"op": "peer", "domid": 2, "error": "ESRCH"}, stray)
        assert all(closed(fd) for fd in stray)  # fds that came with a refusal: not kept
    finally:
        sel.close()
        dom1.memory.close()


def test_sends_coalesce_and_arrive_once(pair) -> None:
    a, b = pair
    for port in (5, 5, 700, 5):
        a.ring(port)
    assert b.rung(1023) == [5, 700]
    assert b.rung(1023) == []
    a.ring(5)
    assert b.rung(1023) == [5]


def test_a_bit_above_the_receivers_ports_raises_nothing(pair) -> None:
    a, b = pair
    a.ring(5000)
    a.ring(-1)
    a.ring(1 << 20)
    assert b.rung(1023) == []


def test_a_peer_binds_only_a_port_left_unbound_for_it(pair) -> None:
    a, b = pair
    dom2 = make_domain(2)
    served = Served(dom2, b)
    try:
        for_dom3 = unbound_port(dom2, 3)
        with pytest.raises(XenError) as e:
            a.bind(for_dom3, 7)
        assert e.value.errno == EINVAL
        with pytest.raises(XenError) as e:
            a.bind(0, 7)
        assert e.value.errno == EINVAL
        with pytest.raises(XenError) as e:
            a.bind(100_000, 7)
        assert e.value.errno == EINVAL
        for_dom1 = unbound_port(dom2, 1)
        a.bind(for_dom1, 7)
        chn = dom2.evtchn.ports[for_dom1]
        assert (chn.state, chn.remote_link, chn.remote_port) == (ECS_INTERDOMAIN, b, 7)
        with pytest.raises(XenError) as e:  # bound now: not unbound for anyone
            a.bind(for_dom1, 8)
        assert e.value.errno == EINVAL
        a.unbind(for_dom1, 8)  # not its other end: nothing changes
        assert chn.state == ECS_INTERDOMAIN
        a.unbind(for_dom1, 7)
        assert (chn.state, chn.remote_domid, chn.remote_link) == (ECS_UNBOUND, 1, None)
    finally:
        served.close()
        dom2.memory.close()


def test_a_dead_peers_ports_become_unbound_and_binding_it_is_esrch(pair) -> None:
    a, b = pair
    dom1 = make_domain(1)
    try:
        port = unbound_port(dom1, 2)
        dom1.evtchn.bound_by_peer(a, port, 9)
        assert dom1.evtchn.ports[port].state == ECS_INTERDOMAIN
        b.call_sock.close()
        b.serve_sock.close()  # dom2's process ended: the kernel closed its ends
        with pytest.raises(XenError) as e:
            a.bind(1, 3)
        assert e.value.errno == ESRCH
        dom1.evtchn.peer_gone(a)
        chn = dom1.evtchn.ports[port]
        assert (chn.state, chn.remote_domid, chn.remote_link) == (ECS_UNBOUND, 2, None)
    finally:
        dom1.memory.close()


# --- grants: the mapping side in dom1 (link a), the granting side dom2 (link b) ----------------
@pytest.fixture
def granter(pair) -> Iterator[tuple[PeerLink, Domain]]:
    a, b = pair
    dom2 = make_domain(2)
    served = Served(dom2, b)
    yield a, dom2
    served.close()
    dom2.memory.close()


def test_a_mapped_grant_is_the_granters_page_pinned_until_unmapped(granter) -> None:
    a, dom2 = granter
    dom2.memory.write(DATA_GFN << 12, b"granted bytes")
    grant_v1(dom2, 10, 1, DATA_GFN)
    status, gfn = a.map_grant(10, G.GNTMAP_host_map)
    assert (status, gfn) == (G.GNTST_okay, DATA_GFN)
    assert flags_v1(dom2, 10) & BUSY == BUSY
    page = a.page(gfn)
    try:
        assert C.string_at(page.address, 13) == b"granted bytes"
        C.memmove(page.address, b"written back", 12)
        assert dom2.memory.read(DATA_GFN << 12, 12) == b"written back"
    finally:
        page.close()
    assert a.unmap_grant(10, G.GNTMAP_host_map, DATA_GFN << 12 ^ 0x1000) == G.GNTST_general_error
    assert a.unmap_grant(10, G.GNTMAP_host_map, 0) == G.GNTST_okay
    assert flags_v1(dom2, 10) & BUSY == 0
    assert a.unmap_grant(10, G.GNTMAP_host_map, 0) == G.GNTST_bad_handle  # no pin left


def test_grants_not_made_to_the_peer_are_refused(granter) -> None:
    a, dom2 = granter
    grant_v1(dom2, 11, 3, DATA_GFN)  # to dom3
    grant_v1(dom2, 12, 1, DATA_GFN, G.GTF_permit_access | G.GTF_readonly)
    assert a.map_grant(11, G.GNTMAP_host_map)[0] == G.GNTST_general_error
    assert a.map_grant(13, G.GNTMAP_host_map)[0] == G.GNTST_general_error  # never granted
    assert a.map_grant(1 << 20, G.GNTMAP_host_map)[0] == G.GNTST_bad_gntref
    assert a.map_grant(12, G.GNTMAP_host_map)[0] == G.GNTST_general_error  # r/o, mapped r/w
    assert a.map_grant(12, G.GNTMAP_host_map | G.GNTMAP_readonly)[0] == G.GNTST_okay
    assert flags_v1(dom2, 12) & BUSY == G.GTF_reading
    assert a.acquire_for_copy([(11, True)])[0][0] == G.GNTST_general_error
    assert a.acquire_for_copy([(12, False)])[0][0] == G.GNTST_general_error  # r/o, written


def test_copy_reads_and_writes_only_while_acquired(granter) -> None:
    a, dom2 = granter
    dom2.memory.write(DATA_GFN << 12, b"source")
    grant_v1(dom2, 20, 1, DATA_GFN)
    [(status, gfn, offset, length)] = a.acquire_for_copy([(20, False)])
    assert (status, gfn, offset, length) == (G.GNTST_okay, DATA_GFN, 0, 4096)
    assert flags_v1(dom2, 20) & BUSY == BUSY
    assert a.read(gfn, 0, 6) == b"source"
    a.write(gfn, 100, b"dest")
    a.release_for_copy([(20, False)])
    assert flags_v1(dom2, 20) & BUSY == 0
    assert dom2.memory.read((DATA_GFN << 12) + 100, 4) == b"dest"


def test_one_call_acquires_many_grants_each_with_its_own_status(granter) -> None:
    a, dom2 = granter
    grant_v1(dom2, 20, 1, DATA_GFN)
    grant_v1(dom2, 21, 1, DATA_GFN + 1, G.GTF_permit_access | G.GTF_readonly)
    grant_v1(dom2, 22, 3, DATA_GFN)  # to dom3
    answers = a.acquire_for_copy([(20, False), (21, True), (21, False), (22, True),
                                  (1 << 20, True), (20, True)])
    assert [answer[0] for answer in answers] == [
        G.GNTST_okay, G.GNTST_okay, G.GNTST_general_error, G.GNTST_general_error,
        G.GNTST_bad_gntref, G.GNTST_okay]
    assert answers[1] == (G.GNTST_okay, DATA_GFN + 1, 0, 4096)
    assert flags_v1(dom2, 20) & BUSY == BUSY and flags_v1(dom2, 21) & BUSY == G.GTF_reading
    assert a.memfd >= 0 and a.read(DATA_GFN + 1, 0, 1) == b"\0"
    a.release_for_copy([(20, False), (21, True), (20, True)])
    assert flags_v1(dom2, 20) & BUSY == 0 and flags_v1(dom2, 21) & BUSY == 0
    assert not dom2.grant_table.active


def test_a_release_lets_go_only_pins_the_peer_holds(granter) -> None:
    a, dom2 = granter
    grant_v1(dom2, 20, 1, DATA_GFN)
    grant_table.acquire_grant_for_copy(dom2, 20, 1, False, False)  # dom2's own, as it were
    a.release_for_copy([(20, False), (20, True), (7, False)])
    assert flags_v1(dom2, 20) & BUSY == BUSY  # still held: not the peer's to drop
    grant_table.release_grant_for_copy(dom2, 20, False)


def test_malformed_copy_requests_are_refused(granter) -> None:
    a, dom2 = granter
    grant_v1(dom2, 20, 1, DATA_GFN)
    reply = a._call({"op": "acquire", "grants": [[20, False], ["20", 0], [-1, 0], [20], 5,
                                                 [True, False]]})
    assert [answer[0] for answer in reply["grants"]] == [G.GNTST_okay] + \
        [G.GNTST_general_error] * 5
    assert a._call({"op": "acquire", "grants": [[20, True]] * (MAX_COPY_GRANTS + 1)}) == \
        {"status": G.GNTST_general_error}
    assert a._call({"op": "acquire", "grants": 20}) == {"status": G.GNTST_general_error}
    a.release_for_copy([(20, False)])
    assert flags_v1(dom2, 20) & BUSY == 0 and not dom2.grant_table.active


def test_a_peer_that_is_gone_answers_bad_domain_for_each_grant(pair) -> None:
    a, b = pair
    b.call_sock.close()
    b.serve_sock.close()  # dom2's process ended
    assert a.acquire_for_copy([(20, False), (21, True)]) == [(G.GNTST_bad_domain, 0, 0, 0)] * 2
    a.release_for_copy([(20, False)])  # nothing to release, nobody to ask: no error


def test_a_dead_mappers_pins_are_released(pair) -> None:
    a, b = pair
    dom2 = make_domain(2)
    sel = selectors.DefaultSelector()
    links = PeerLinks(dom2, lambda msg: False, sel)
    try:
        grant_v1(dom2, 10, 1, DATA_GFN)
        b.held["map", 10, G.GNTMAP_host_map] += 1  # as the served "map" call records it
        grant_table.pin_for_map(dom2, 10, 1, G.GNTMAP_host_map)
        assert flags_v1(dom2, 10) & BUSY == BUSY
        sel.register(b.serve_sock, selectors.EVENT_READ)
        sel.register(b.bell_in, selectors.EVENT_READ)
        a.call_sock.close()
        a.serve_sock.close()  # dom1's process ended
        links.readable(b, "serve")  # end of file: dom1 is gone
        assert flags_v1(dom2, 10) & BUSY == 0
        assert not b.held
    finally:
        sel.close()
        dom2.memory.close()


# --- two domains restored together, and two links between the same two processes ---------------
def test_ports_waiting_at_both_ends_are_joined_by_whichever_side_relinks_first(pair) -> None:
    """Migrated together, both ends of a channel come back held for each other (reserved,
    to be joined again). dom2's relink binds dom1's end through the link: dom1 takes it,
    raised (events may have been dropped), and its own relink then skips that port; a bind
    of a port already joined to that very end answers as done; any other end is EINVAL."""
    a, _ = pair
    dom1 = make_domain(1)
    raised: list[int] = []
    dom1.evtchn.set_pending = lambda vcpu, port: raised.append(port)  # no vCPU to raise it on
    try:
        with dom1.evtchn.lock:
            port = dom1.evtchn.get_free_port()
            chn = dom1.evtchn.bind(port)
            chn.state, chn.remote_domid, chn.remote_port = ECS_RESERVED, 2, 9
            dom1.evtchn.to_relink.append(port)
        with pytest.raises(XenError) as e:
            dom1.evtchn.bound_by_peer(a, port, 8)  # not the end it waits for
        assert e.value.errno == EINVAL and chn.state == ECS_RESERVED
        dom1.evtchn.bound_by_peer(a, port, 9)
        assert (chn.state, chn.remote_link, chn.remote_port) == (ECS_INTERDOMAIN, a, 9)
        assert raised == [port]
        dom1.evtchn.bound_by_peer(a, port, 9)  # the other side's relink, racing: done
        dom1.remote_peers = lambda domid: pytest.fail("relink asked for a link")
        assert dom1.evtchn.relink() == []  # joined already: nothing to do
        assert chn.state == ECS_INTERDOMAIN
    finally:
        dom1.memory.close()


def test_two_links_to_one_process_stand_for_one_peer() -> None:
    """dom1 and dom2 asked for a link to each other at once: the daemon made two. Both are
    served, but the first stands for dom2 (`get`, and in every check): a port bound through
    one is raised by the other's doorbell. A link to a new process of dom2 replaces it."""
    dom1 = make_domain(1)
    raised: list[int] = []
    dom1.evtchn.rung_by_peer = lambda peer, ports: raised.extend(  # type: ignore[method-assign]
        p for p in ports if dom1.evtchn.ports[p].remote_link is peer)
    sel = selectors.DefaultSelector()
    links = PeerLinks(dom1, lambda msg: False, sel)
    ends = []
    try:
        first_fds, second_fds, new_fds = (link_ends() for _ in range(3))
        ends = [first_fds[1], second_fds[1], new_fds[1]]
        first = links._add(2, first_fds[0], 4242)
        second_link = links._add(2, second_fds[0], 4242)
        assert second_link is first and links.get(2) is first
        port = unbound_port(dom1, 2)
        dom1.evtchn.bound_by_peer(first, port, 5)
        second = next(key.data[1] for key in sel.get_map().values()
                      if key.data[1] is not first and key.data[2] == "bell")
        assert second.identity is first
        peer_side = PeerLink(1, second_fds[1])  # dom2's end of the second link rings port
        ends[1] = []
        peer_side.ring(port)
        links.readable(second, "bell")
        assert raised == [port]
        peer_side.close()
        assert links._add(2, new_fds[0], 4343) is not first and links.get(2) is not first
    finally:
        for fds in ends:
            for fd in fds:
                os.close(fd)
        sel.close()
        dom1.memory.close()
