"""netback's data path (pyxen.backends.netback) against a domain built in-process: TX and
RX rings and pages the "guest" grants to domain 0, and a datagram socket pair standing in
for the TAP (same message boundaries, same virtio-net header): what the host side reads,
what the guest finds in its pages, every slot answered."""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Iterator

import pytest

from backends.frontring import FrontRing
from hv.test_grant_table import flags_v1, grant_v1, make_domain
from pyxen.abi import grant_table as G
from pyxen.abi import netif as N
from pyxen.backends import netback
from pyxen.backends.dom0 import Dom0
from pyxen.backends.netback import NetBack, QueueRings, VifConnection
from pyxen.backends.tap import VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, VNET_HDR
from pyxen.hv.event_channel import ECS_INTERDOMAIN, ECS_UNBOUND

TX_GFN, RX_GFN, DATA_GFN = 0x300, 0x301, 0x310
TX_REF, RX_REF, DATA_REF = 8, 9, 10
TX = struct.Struct("<IHHHH")
PLAIN = VNET_HDR.pack(0, 0, 0, 0, 0, 0)


def udp_frame(payload: bytes) -> bytes:
    """Ethernet + IPv4 (20 bytes) + UDP: only the fields the back end reads matter."""
    eth = b"\x00\x16\x3e\x00\x00\x01" + b"\x00\x16\x3e\x00\x00\x02" + b"\x08\x00"
    ip = bytes([0x45, 0]) + struct.pack(">H", 28 + len(payload)) + bytes(5) + b"\x11" + \
        bytes(2) + bytes([10, 0, 0, 1, 10, 0, 0, 2])
    return eth + ip + struct.pack(">HHHH", 1000, 7, 8 + len(payload), 0) + payload


def tcp_frame(payload: bytes) -> bytes:
    eth = bytes(12) + b"\x08\x00"
    ip = bytes([0x45, 0]) + struct.pack(">H", 40 + len(payload)) + bytes(5) + b"\x06" + \
        bytes(2) + bytes(8)
    tcp = bytes(12) + bytes([0x50]) + bytes(7)  # data offset 5 words
    return eth + ip + tcp + payload


class Guest:
    def __init__(self) -> None:
        self.d = make_domain(1)
        self.tx = FrontRing(self.d, TX_GFN, N.TX_SLOT_SIZE)
        self.rx = FrontRing(self.d, RX_GFN, N.RX_SLOT_SIZE)
        grant_v1(self.d, TX_REF, 0, TX_GFN)
        grant_v1(self.d, RX_REF, 0, RX_GFN)
        for i in range(16):
            grant_v1(self.d, DATA_REF + i, 0, DATA_GFN + i)
        with self.d.evtchn.lock:
            self.port = self.d.evtchn.get_free_port()
            chn = self.d.evtchn.bind(self.port)
            chn.state, chn.remote_domid = ECS_UNBOUND, 0
        self.raised: list[int] = []
        self.d.evtchn.rung_by_peer = lambda peer, ports: self.raised.extend(ports)
        self.dom0 = Dom0(self.d)
        self.host, tap = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.host.settimeout(10)
        self.back = NetBack(self.dom0, VifConnection(0, [QueueRings(TX_REF, RX_REF, self.port,
                                                                    self.port)]),
                            os.dup(tap.fileno()))
        tap.close()
        self.back.connect()

    def send(self, *slots: bytes) -> None:
        self.tx.push(*slots)
        self.dom0.ring(self.back.queues[0].tx_port)

    def close(self) -> None:
        self.back.disconnect()
        self.host.close()


@pytest.fixture
def guest() -> Iterator[Guest]:
    g = Guest()
    yield g
    if g.back.threads and g.back.threads[0].is_alive():
        g.close()


def test_tx_frame_reaches_the_tap_and_every_slot_is_answered(guest: Guest) -> None:
    assert guest.d.evtchn.ports[guest.port].state == ECS_INTERDOMAIN
    frame = udp_frame(b"hello" * 300)  # 1542 bytes: two slots
    guest.d.memory.write(DATA_GFN << 12, frame[:1000])
    guest.d.memory.write(((DATA_GFN + 1) << 12) + 100, frame[1000:])
    guest.send(TX.pack(DATA_REF, 0, N.NETTXF_more_data | N.NETTXF_csum_blank, 7, len(frame)),
               TX.pack(DATA_REF + 1, 100, 0, 8, len(frame) - 1000))
    got = guest.host.recv(65536)
    assert got[VNET_HDR.size :] == frame
    assert VNET_HDR.unpack(got[: VNET_HDR.size]) == (VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0,
                                                     34, 6)  # UDP checksum at 34 + 6
    responses = [struct.unpack("<Hh", r) for r in guest.tx.responses(2, 4)]
    assert responses == [(7, N.NETIF_RSP_OKAY), (8, N.NETIF_RSP_OKAY)]
    assert guest.raised == [guest.port]
    assert flags_v1(guest.d, DATA_REF) & (G.GTF_reading | G.GTF_writing) == 0


def test_gso_extra_info_asks_the_kernel_to_segment(guest: Guest) -> None:
    frame = tcp_frame(bytes(3000))
    for i in range(0, len(frame), 4096):
        guest.d.memory.write((DATA_GFN + i // 4096) << 12, frame[i : i + 4096])
    extra = struct.pack("<BBHBBH", N.XEN_NETIF_EXTRA_TYPE_GSO, 0, 1448,
                        N.XEN_NETIF_GSO_TYPE_TCPV4, 0, 0).ljust(12, b"\0")
    guest.send(TX.pack(DATA_REF, 0, N.NETTXF_extra_info | N.NETTXF_csum_blank, 1, len(frame)),
               extra)
    got = guest.host.recv(65536)
    assert VNET_HDR.unpack(got[: VNET_HDR.size]) == (
        VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, 54, 1448, 34, 16)
    assert got[VNET_HDR.size :] == frame
    assert [struct.unpack("<Hh", r) for r in guest.tx.responses(2, 4)][0] == (1, 0)
    assert struct.unpack("<Hh", guest.d.memory.read((TX_GFN << 12) + 64 + 12, 4))[1] == \
        N.NETIF_RSP_NULL


@pytest.mark.parametrize(("slot", "why"), [
    (TX.pack(200, 0, 0, 3, 60), "a grant that is not there"),
    (TX.pack(DATA_REF, 4000, 0, 3, 200), "a slot crossing its page"),
    (TX.pack(DATA_REF, 0, 0, 3, 10), "shorter than an Ethernet header"),
])
def test_a_bad_frame_is_answered_with_an_error_and_nothing_reaches_the_tap(guest: Guest, slot,
                                                                          why) -> None:
    guest.send(slot)
    assert struct.unpack("<Hh", guest.tx.responses(1, 4)[0]) == (3, N.NETIF_RSP_ERROR), why
    guest.host.settimeout(0.2)
    with pytest.raises(TimeoutError):
        guest.host.recv(65536)


def test_rx_frame_lands_in_a_posted_page(guest: Guest) -> None:
    guest.rx.push(struct.pack("<HxxI", 5, DATA_REF + 3))
    frame = udp_frame(b"from the host")
    guest.host.send(PLAIN + frame)
    (resp,) = guest.rx.responses(1, 8)
    assert struct.unpack("<HHHh", resp) == (5, 0, 0, len(frame))
    assert guest.d.memory.read((DATA_GFN + 3) << 12, len(frame)) == frame
    assert guest.back.counters.rx_frames == 1


def test_rx_without_posted_pages_drops_only_after_the_stall(guest: Guest,
                                                           monkeypatch) -> None:
    monkeypatch.setattr(netback, "RX_STALL", 0.05)
    guest.host.send(PLAIN + udp_frame(b"nobody home"))
    deadline = time.monotonic() + 10
    while guest.back.counters.rx_dropped == 0:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    # a page posted now takes the next frame; the dropped one is gone
    guest.rx.push(struct.pack("<HxxI", 9, DATA_REF))
    guest.dom0.ring(guest.back.queues[0].rx_port)
    guest.host.send(PLAIN + udp_frame(b"second"))
    assert struct.unpack("<HHHh", guest.rx.responses(1, 8)[0])[0] == 9
    assert guest.d.memory.read((DATA_GFN << 12) + 42, 6) == b"second"


def test_disconnect_releases_rings_and_channel(guest: Guest) -> None:
    guest.close()
    assert all(flags_v1(guest.d, ref) & (G.GTF_reading | G.GTF_writing) == 0
               for ref in (TX_REF, RX_REF))
    assert guest.d.evtchn.ports[guest.port].state == ECS_UNBOUND
