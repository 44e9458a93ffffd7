"""The peer-link wire, serving side: one SOCK_SEQPACKET datagram from another domain's
process (PeerLink.serve: bind/unbind of our ports, map/unmap of our grants, acquire/release
for GNTTABOP_copy, remap).

The other end runs another guest: this process must not trust what it sends. Expected: an
answer (a Xen errno or GNTST status) or nothing; the link may end. A bug: an exception out
of serve(), a pin counted below zero, or a pin left behind: once the link lets go of
everything it holds (release_all, as when the peer's process ends), every grant entry must
read as before the input.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
from typing import Any

from fuzz.targets._check import no_logged_errors, require
from pyxen.abi import grant_table as G
from pyxen.domain.domain import Domain, DomainConfig
from pyxen.host.peer_link import PeerLink, link_ends
from pyxen.hv import hypercall_table
from pyxen.hv.event_channel import ECS_UNBOUND
from pyxen.soft.machine import SoftMachine

INSTRUMENT = ("pyxen.host.peer_link", "pyxen.host.wire", "pyxen.hv.grant_table",
              "pyxen.hv.event_channel")

PEER = 2  # the domid at the other end of the link
FRAME_GFN, DATA_GFN = 0x100, 0x200
NR_GRANTS = 8


def _domain() -> Domain:
    """Domain 1, with grants and unbound ports for domain 2 (no vCPU ever runs)."""
    d = Domain(DomainConfig(name="fuzz-peer", domid=1, memory_mib=8), SoftMachine([]),
               hypercall_table(), lambda data: None)
    d.grant_table.map_frame(0, FRAME_GFN)
    for ref in range(NR_GRANTS):  # v1 entries: every other one read-only, one for another domid
        flags = G.GTF_permit_access | (G.GTF_readonly if ref % 2 else 0)
        domid = PEER if ref != NR_GRANTS - 1 else 3
        d.memory.write((FRAME_GFN << 12) + ref * 8,
                       struct.pack("<HHI", flags, domid, DATA_GFN + ref))
    with d.evtchn.lock:
        for _ in range(4):
            chn = d.evtchn.bind(d.evtchn.get_free_port())
            chn.state, chn.remote_domid = ECS_UNBOUND, PEER
    return d


DOMAIN = _domain()
OURS, THEIRS = link_ends()
LINK = PeerLink(PEER, OURS)
CALLER = socket.socket(fileno=THEIRS[0])  # the peer's calling end: our serve socket's pair
CALLER.setblocking(False)
for fd in THEIRS[1:]:
    os.close(fd)
GRANTS_BEFORE = DOMAIN.memory.read(FRAME_GFN << 12, NR_GRANTS * 8)


def _drain() -> None:
    with contextlib.suppress(BlockingIOError):
        while True:
            _, fds, _, _ = socket.recv_fds(CALLER, 1 << 16, 16)
            for fd in fds:
                os.close(fd)


def one_input(data: bytes) -> None:
    try:
        CALLER.send(data)
    except OSError:  # too long for a datagram: never reaches the other side
        return
    with no_logged_errors("pyxen"):
        LINK.serve(DOMAIN)
    require(all(count > 0 for count in LINK.held.values()), f"pins counted {LINK.held}")
    _drain()
    LINK.release_all(DOMAIN)
    require(DOMAIN.memory.read(FRAME_GFN << 12, NR_GRANTS * 8) == GRANTS_BEFORE,
            "a grant entry kept a pin after the peer let everything go")


def seeds() -> list[bytes]:
    messages: list[dict[str, Any]] = [
        {"op": "bind", "port": 1, "from": 5}, {"op": "unbind", "port": 1, "from": 5},
        {"op": "map", "ref": 0, "flags": G.GNTMAP_host_map},
        {"op": "map", "ref": 1, "flags": G.GNTMAP_host_map | G.GNTMAP_readonly},
        {"op": "unmap", "ref": 0, "flags": G.GNTMAP_host_map, "dev_bus_addr": 0},
        {"op": "acquire", "grants": [[0, False], [1, True], [7, False]]},
        {"op": "release", "grants": [[0, False]]}, {"op": "remap"}, {"op": "ring"},
    ]
    return [json.dumps(m).encode() for m in messages]
