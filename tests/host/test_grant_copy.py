"""GNTTABOP_copy from a guest whose grants come from a domain in another process (host mode):
each segment gets Xen's status of its own, the data lands, GTF_reading/GTF_writing are clear
when the hypercall returns, and a batch costs one "acquire" and one "release" on the peer
link, not two calls per segment. The granting domain is served on a thread here, over the
real link fds (tests/host/test_peer_link.py); the vchan pair (tests/host/test_vchan.py) runs
the same between two domain processes."""

from __future__ import annotations

import ctypes as C
import struct
import threading
from collections import Counter
from collections.abc import Iterator

import pytest

from host.test_peer_link import Served
from hv.test_grant_table import BUSY, DATA_GFN, flags_v1, grant_v1, make_domain
from pyxen.abi import grant_table as G
from pyxen.abi.xen import DOMID_SELF
from pyxen.domain.domain import Domain
from pyxen.host.peer_link import PeerLink, link_ends
from pyxen.host.wire import recv_packet, send_packet
from pyxen.hv import grant_table
from pyxen.hv.grant_table import COPY_WINDOW, do_grant_table_op
from pyxen.hv.guest_access import GuestAccess
from pyxen.hv.pagewalk import PagingState

OPS_GPA = 0x300 << 12  # where the copying guest keeps its gnttab_copy array (paging off)
LOCAL_GFN = 0x280  # the copying guest's own page
PAGE = 4096


class FakeVcpu:
    """What GNTTABOP_copy needs of the calling vCPU: its domain and its view of memory
    (64-bit, paging off: guest-virtual = guest-physical)."""

    compat = False

    def __init__(self, domain: Domain) -> None:
        self.domain = domain

    def guest(self) -> GuestAccess:
        return GuestAccess(self.domain.memory, PagingState(0x11, 0, 0, 0))


class Copier:
    """dom1, whose only way to dom2 is `link` (dom2 runs in another process); its calls on
    the link are counted by op."""

    def __init__(self, link: PeerLink) -> None:
        self.domain = make_domain(1)
        self.domain.remote_peers = lambda domid: link if domid == 2 else None
        self.vcpu = FakeVcpu(self.domain)
        self.calls: Counter[str] = Counter()
        call = link._call

        def counted(msg: dict[str, object]) -> dict[str, object]:
            self.calls[str(msg.get("op"))] += 1
            return call(msg)

        link._call = counted  # type: ignore[method-assign]

    def copy(self, ops: list[G.gnttab_copy]) -> list[int]:
        """GNTTABOP_copy of `ops` from dom1's vCPU: each op's status."""
        size, status = C.sizeof(G.gnttab_copy), G.gnttab_copy.status.offset
        for i, op in enumerate(ops):
            op.status = 99
            self.domain.memory.write(OPS_GPA + i * size, bytes(op))
        vcpu = self.vcpu
        assert do_grant_table_op(vcpu, G.GNTTABOP_copy, OPS_GPA, len(ops)) == 0  # type: ignore[arg-type]
        memory = self.domain.memory
        return [struct.unpack("<h", memory.read(OPS_GPA + i * size + status, 2))[0]
                for i in range(len(ops))]


def from_ref(ref: int, dom: int = 2, offset: int = 0, length: int = 16,
             to_offset: int = 0) -> G.gnttab_copy:
    """dom's grant `ref` -> dom1's LOCAL_GFN."""
    op = G.gnttab_copy(len=length, flags=G.GNTCOPY_source_gref)
    op.source.u, op.source.domid, op.source.offset = ref, dom, offset
    op.dest.u, op.dest.domid, op.dest.offset = LOCAL_GFN, DOMID_SELF, to_offset
    return op


def to_ref(ref: int, dom: int = 2, offset: int = 0, length: int = 16,
           from_offset: int = 0) -> G.gnttab_copy:
    """dom1's LOCAL_GFN -> dom's grant `ref`."""
    op = G.gnttab_copy(len=length, flags=G.GNTCOPY_dest_gref)
    op.source.u, op.source.domid, op.source.offset = LOCAL_GFN, DOMID_SELF, from_offset
    op.dest.u, op.dest.domid, op.dest.offset = ref, dom, offset
    return op


@pytest.fixture
def link_pair() -> Iterator[tuple[PeerLink, PeerLink]]:
    """dom1's link to dom2 and the reverse (as tests/host/test_peer_link.py's pair)."""
    a_fds, b_fds = link_ends()
    a, b = PeerLink(2, a_fds), PeerLink(1, b_fds)
    yield a, b
    for link in (a, b):
        link.close()


@pytest.fixture
def domains(link_pair) -> Iterator[tuple[Copier, Domain, PeerLink]]:
    a, b = link_pair
    dom2 = make_domain(2)
    served = Served(dom2, b)
    copier = Copier(a)
    yield copier, dom2, b
    served.close()
    for d in (copier.domain, dom2):
        d.memory.close()


def test_each_segment_gets_its_own_status_and_a_batch_two_calls(domains) -> None:
    copier, dom2, b = domains
    dom2.memory.write(DATA_GFN << 12, bytes(range(256)) * 32)  # two pages
    grant_v1(dom2, 20, 1, DATA_GFN)
    grant_v1(dom2, 21, 1, DATA_GFN + 1, G.GTF_permit_access | G.GTF_readonly)
    grant_v1(dom2, 22, 3, DATA_GFN)  # to dom3
    copier.domain.memory.write(LOCAL_GFN << 12, b"from dom1's page")
    bad_frame = from_ref(20)
    bad_frame.flags = 0  # a frame of another domain: only DOMID_SELF may name frames
    ops = [from_ref(20, offset=1024, to_offset=100),   # okay: at an offset, as an in-page ring
           to_ref(20, offset=2048),                    # okay, the same grant written
           from_ref(21, offset=8),                     # okay: read-only grant read
           to_ref(21),                                 # a read-only grant written
           from_ref(22),                               # granted to another domain
           from_ref(23),                               # never granted
           from_ref(1 << 20),                          # beyond the table
           from_ref(20, offset=4090),                  # beyond the page
           from_ref(20, dom=7),                        # no such domain
           bad_frame,
           from_ref(20, length=0)]                     # nothing to copy: okay
    assert copier.copy(ops) == [G.GNTST_okay, G.GNTST_okay, G.GNTST_okay, G.GNTST_general_error,
                                G.GNTST_general_error, G.GNTST_general_error,
                                G.GNTST_bad_gntref, G.GNTST_bad_copy_arg, G.GNTST_bad_domain,
                                G.GNTST_permission_denied, G.GNTST_okay]
    local = copier.domain.memory
    assert local.read((LOCAL_GFN << 12) + 100, 16) == bytes(range(16))  # dom2's bytes 1024..
    assert local.read(LOCAL_GFN << 12, 16) == bytes(range(8, 24))  # ref 21's bytes 8..
    assert dom2.memory.read((DATA_GFN << 12) + 2048, 16) == b"from dom1's page"
    assert copier.calls == {"acquire": 1, "release": 1}  # eleven segments, two calls
    assert all(flags_v1(dom2, ref) & BUSY == 0 for ref in (20, 21, 22, 23))
    assert not dom2.grant_table.active and not b.held  # every pin went with the batch


def test_a_batch_longer_than_a_window_takes_two_calls_per_window(domains) -> None:
    copier, dom2, _ = domains
    dom2.memory.write(DATA_GFN << 12, b"x" * PAGE)
    grant_v1(dom2, 20, 1, DATA_GFN)
    statuses = copier.copy([from_ref(20, offset=i % 256 * 16) for i in range(COPY_WINDOW + 1)])
    assert statuses == [G.GNTST_okay] * (COPY_WINDOW + 1)
    assert copier.calls == {"acquire": 2, "release": 2}
    assert flags_v1(dom2, 20) & BUSY == 0 and not dom2.grant_table.active


def test_the_grants_are_held_only_during_the_hypercall(domains) -> None:
    """While a segment copies from a grant, the grant shows GTF_reading (Xen's
    acquire_grant_for_copy); once the hypercall returns, no flag is left."""
    copier, dom2, _ = domains
    grant_v1(dom2, 20, 1, DATA_GFN)
    seen = []
    write = copier.domain.memory.write

    def watching(gpa: int, data: bytes) -> None:  # dom1's page written by the copy
        seen.append(flags_v1(dom2, 20) & BUSY)
        write(gpa, data)

    copier.domain.memory.write = watching  # type: ignore[method-assign]
    try:
        assert copier.copy([to_ref(20), from_ref(20)]) == [G.GNTST_okay] * 2
    finally:
        copier.domain.memory.write = write  # type: ignore[method-assign]
    assert seen and seen[-1] & G.GTF_reading
    assert flags_v1(dom2, 20) & BUSY == 0 and not dom2.grant_table.active


def test_a_granter_that_is_gone_fails_only_its_segments(domains) -> None:
    copier, dom2, b = domains
    grant_v1(dom2, 20, 1, DATA_GFN)
    b.call_sock.close()
    b.serve_sock.close()  # dom2's process ended
    local = to_ref(0)
    local.dest.u, local.dest.domid, local.flags = LOCAL_GFN + 1, DOMID_SELF, 0
    assert copier.copy([from_ref(20), local, to_ref(20)]) == [
        G.GNTST_bad_domain, G.GNTST_okay, G.GNTST_bad_domain]


def test_a_compromised_granters_answers_fail_the_segment_not_the_domain(link_pair) -> None:
    """A granting process that answers nonsense (a range outside a page, a status that is
    none, no memfd) costs the copying guest that segment, never an exception."""
    a, b = link_pair
    copier = Copier(a)
    answers = iter([[[0, 5, 100, 4000]], [[0, -1, 0, 4096]], [[7, 0, 0, 0]], [[0, 5, 0, 4096]]])

    def liar() -> None:
        for _ in range(5):  # four acquires, and the release of the last one's grant
            msg, _fds = recv_packet(b.serve_sock)
            if msg is None:
                return
            reply = {"status": 0, "grants": next(answers)} if msg["op"] == "acquire" \
                else {"status": 0}
            send_packet(b.serve_sock, reply)

    b.serve_sock.setblocking(True)
    thread = threading.Thread(target=liar, daemon=True)
    thread.start()
    try:
        for _ in range(4):  # the last one: okay, but no memfd came with it
            assert copier.copy([from_ref(20)]) == [G.GNTST_general_error]
    finally:
        thread.join(5)
        copier.domain.memory.close()


def test_a_refused_copy_leaves_the_entry_inactive() -> None:
    """A copy the granter refused leaves no active entry behind: the grant can still be
    swapped (GNTTABOP_swap_grant_ref answers GNTST_eagain for an active one)."""
    dom2 = make_domain(2)
    try:
        grant_v1(dom2, 20, 3, DATA_GFN)  # to dom3, not dom1
        assert grant_table.acquire_grant_for_copy(dom2, 20, 1, True, False)[0] == \
            G.GNTST_general_error
        assert not dom2.grant_table.active
        assert grant_table.swap_grant_ref(dom2, 20, 21) == G.GNTST_okay
    finally:
        dom2.memory.close()
