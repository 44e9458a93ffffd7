"""The PV network back end's data path: Linux netback's part for one connected vif.

It runs in the process of the domain it serves (see `pyxen.backends.dom0`), between the
guest's rings and the vif's TAP device, which the daemon created and put on its bridge:

- TX (guest → host), one thread per queue: each frame's slots (NETTXF_more_data chains,
  extra-info slots for GSO) are copied out of the granted pages and written to the TAP as
  one frame, with a virtio-net header asking the kernel to finish a NETTXF_csum_blank
  checksum or to cut a GSO TCPv4 frame into segments. Every slot is answered (extra-info
  slots with NETIF_RSP_NULL), a malformed frame's with NETIF_RSP_ERROR.
- RX (host → guest), one thread for the device: frames read from the TAP go to a queue by
  flow hash and are copied into the next page the front end posted (rx by grant copy:
  only the pages it granted to domain 0, writable). A front end that posts no pages has its
  frames dropped after RX_STALL (netback's stall timeout, shortened), and only its own: the
  kernel's bridge never waits for a TAP, so no other domain's traffic is held up.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import struct
import threading
import zlib
from dataclasses import dataclass, field

from pyxen.abi import grant_table as G
from pyxen.abi import netif as N
from pyxen.backends.dom0 import Dom0
from pyxen.backends.ring import BackRing, RingBroken
from pyxen.backends.tap import (
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_NONE,
    VIRTIO_NET_HDR_GSO_TCPV4,
    VNET_HDR,
)
from pyxen.domain.memory import PAGE_SIZE

log = logging.getLogger("pyxen.netback")

TX_REQUEST = struct.Struct("<IHHHH")  # gref, offset, flags, id, size
EXTRA = struct.Struct("<BBHBBH")  # type, flags, gso.size, gso.type, pad, gso.features
TX_RESPONSE = struct.Struct("<Hh")  # id, status
RX_REQUEST = struct.Struct("<HxxI")  # id, gref
RX_RESPONSE = struct.Struct("<HHHh")  # id, offset, flags, status
ETH_HLEN = 14
ETH_P_IP = 0x0800
ETH_P_RARP = 0x8035
RARP_REQUEST_REVERSE = 3
IPPROTO_TCP, IPPROTO_UDP = 6, 17
RX_STALL = 0.1  # seconds a frame waits for the front end to post a page
MAX_QUEUES = 4  # what the back end offers (multi-queue-max-queues)
READ_SIZE = 65536 + VNET_HDR.size


@dataclass
class QueueRings:
    """One queue as the front end published it."""

    tx_ref: int
    rx_ref: int
    tx_port: int
    rx_port: int  # the same as tx_port without feature-split-event-channels


@dataclass
class VifConnection:
    devid: int
    queues: list[QueueRings]


@dataclass
class Counters:
    tx_frames: int = 0
    tx_errors: int = 0
    rx_frames: int = 0
    rx_dropped: int = 0


class BadFrame(Exception):
    pass


@dataclass
class Queue:
    index: int
    rings: QueueRings
    tx: BackRing | None = None
    rx: BackRing | None = None
    tx_port: int = 0
    rx_port: int = 0
    tx_wake: threading.Event = field(default_factory=threading.Event)
    rx_wake: threading.Event = field(default_factory=threading.Event)


class NetBack:
    """Serves one vif's queues until `disconnect`."""

    def __init__(self, dom0: Dom0, conn: VifConnection, tap_fd: int,
                 announce: str | None = None) -> None:
        """`announce`: the guest's MAC, to announce on the TAP once connected (the domain
        was just restored or migrated here)."""
        if not 0 < len(conn.queues) <= MAX_QUEUES:
            raise ValueError(f"{len(conn.queues)} queues (1 to {MAX_QUEUES} allowed)")
        self.dom0, self.conn, self.tap = dom0, conn, tap_fd
        self.queues = [Queue(i, rings) for i, rings in enumerate(conn.queues)]
        self.pins: list[tuple[int, bool]] = []
        self.threads: list[threading.Thread] = []
        self.stopping = False
        self.stop_r, self.stop_w = os.pipe2(os.O_CLOEXEC)
        self.counters = Counters()
        self.announce = announce

    # --- connect / disconnect -----------------------------------------------------------------
    def connect(self) -> None:
        try:
            for q in self.queues:
                q.tx = self._map_ring(q.rings.tx_ref, N.TX_SLOT_SIZE)
                q.rx = self._map_ring(q.rings.rx_ref, N.RX_SLOT_SIZE)
                q.tx_port = self._bind(q.rings.tx_port, q.tx_wake, q.rx_wake
                                       if q.rings.rx_port == q.rings.tx_port else None)
                q.rx_port = (q.tx_port if q.rings.rx_port == q.rings.tx_port
                             else self._bind(q.rings.rx_port, q.rx_wake, None))
        except BaseException:
            self._release()
            raise
        os.set_blocking(self.tap, False)
        if self.announce is not None:
            self._announce(self.announce)
        for q in self.queues:
            q.tx_wake.set()  # frames the front end posted while no back end served the ring
            self._start(self._serve_tx, q, f"netback-tx-{self.conn.devid}.{q.index}")
        self._start(self._serve_rx, None, f"netback-rx-{self.conn.devid}")

    def _announce(self, mac: str) -> None:
        """The guest's MAC is here now: a RARP broadcast from it (what QEMU sends after a
        migration, and Xen's toolstack has the guest's netfront send as a gratuitous ARP),
        so that the bridge and the switches beyond it learn the new port at once."""
        try:
            hw = bytes.fromhex(mac.replace(":", ""))
            if len(hw) != 6:
                raise ValueError(mac)
            frame = b"\xff" * 6 + hw + struct.pack(">H", ETH_P_RARP) + struct.pack(
                ">HHBBH", 1, ETH_P_IP, 6, 4, RARP_REQUEST_REVERSE) + hw + bytes(4) + hw + bytes(4)
            os.write(self.tap, VNET_HDR.pack(0, VIRTIO_NET_HDR_GSO_NONE, 0, 0, 0, 0) +
                     frame.ljust(60, b"\0"))
        except (ValueError, OSError) as e:
            log.warning("vif %d: no announcement of %s: %s", self.conn.devid, mac, e)

    def _start(self, target, arg, name: str) -> None:  # type: ignore[no-untyped-def]
        t = threading.Thread(target=target, args=(arg,) if arg is not None else (),
                             name=name, daemon=True)
        self.threads.append(t)
        t.start()

    def _map_ring(self, ref: int, slot_size: int) -> BackRing:
        rc, gfn = self.dom0.pin(ref, readonly=False)
        if rc != G.GNTST_okay:
            raise ValueError(f"ring grant {ref} does not map (GNTST {rc})")
        self.pins.append((ref, False))
        return BackRing([self.dom0.page(gfn)], self.dom0.address(gfn), slot_size)

    def _bind(self, port: int, wake: threading.Event, also: threading.Event | None) -> int:
        def notified() -> None:
            wake.set()
            if also is not None:
                also.set()

        try:
            return self.dom0.bind_interdomain(port, notified)
        except Exception as e:
            raise ValueError(f"event channel {port} does not bind: {e}") from None

    def disconnect(self) -> None:
        self.stopping = True
        os.write(self.stop_w, b"x")
        for q in self.queues:
            q.tx_wake.set()
            q.rx_wake.set()
        for t in self.threads:
            t.join()
        self._release()
        with contextlib.suppress(OSError):
            os.close(self.tap)
        for fd in (self.stop_r, self.stop_w):
            os.close(fd)

    def _release(self) -> None:
        self.dom0.unpin_all(self.pins)
        self.pins.clear()
        for q in self.queues:
            for port in {q.tx_port, q.rx_port} - {0}:
                self.dom0.close(port)
            q.tx_port = q.rx_port = 0

    def _broken(self, q: Queue, e: RingBroken) -> None:
        log.warning("vif %d queue %d: %s: no longer served", self.conn.devid, q.index, e)

    # --- TX: guest → TAP ----------------------------------------------------------------------
    def _serve_tx(self, q: Queue) -> None:
        assert q.tx is not None
        try:
            while not self.stopping:
                q.tx_wake.wait()
                q.tx_wake.clear()
                while not self.stopping and q.tx.final_check_for_requests():
                    while not self.stopping and q.tx.unconsumed():  # a batch: one push
                        self._tx_frame(q, q.tx)
                    if q.tx.push_responses_and_check_notify():
                        self.dom0.notify(q.tx_port)
        except RingBroken as e:
            self._broken(q, e)

    def _tx_frame(self, q: Queue, ring: BackRing) -> None:
        """One frame's slots off the ring, answered; the frame onto the TAP."""
        first = TX_REQUEST.unpack(ring.take_request()[: TX_REQUEST.size])
        slots = [first]
        extras: list[tuple[int, ...]] = []
        flags = first[2]
        if flags & N.NETTXF_extra_info:
            while True:
                if not ring.unconsumed():
                    raise RingBroken("a frame's extra-info slot is missing")
                extra = EXTRA.unpack(ring.take_request()[: EXTRA.size])
                extras.append(extra)
                if not extra[1] & N.XEN_NETIF_EXTRA_FLAG_MORE:
                    break
        while slots[-1][2] & N.NETTXF_more_data:
            if not ring.unconsumed():
                raise RingBroken("a frame's next slot is missing")
            slots.append(TX_REQUEST.unpack(ring.take_request()[: TX_REQUEST.size]))
        status = N.NETIF_RSP_OKAY
        try:
            frame = self._gather(slots)
            header = self._vnet_header(frame, flags, extras)
            os.write(self.tap, header + frame)
            self.counters.tx_frames += 1
        except BadFrame as e:
            log.debug("vif %d: dropping a frame: %s", self.conn.devid, e)
            self.counters.tx_errors += 1
            status = N.NETIF_RSP_ERROR
        except OSError as e:  # the TAP is down or full: the frame is dropped, as on a wire
            log.debug("vif %d: TAP write: %s", self.conn.devid, e)
            status = N.NETIF_RSP_DROPPED if e.errno in (11, 105) else N.NETIF_RSP_ERROR
        ring.put_response(TX_RESPONSE.pack(first[3], status))
        for _ in extras:
            ring.put_response(TX_RESPONSE.pack(0, N.NETIF_RSP_NULL))
        for slot in slots[1:]:
            ring.put_response(TX_RESPONSE.pack(slot[3], status))

    def _gather(self, slots: list[tuple[int, ...]]) -> bytes:
        if len(slots) > N.XEN_NETBK_LEGACY_SLOTS_MAX:
            raise BadFrame(f"{len(slots)} slots")
        rest = sum(s[4] for s in slots[1:])
        total = slots[0][4]
        if total < rest + ETH_HLEN or total > N.XEN_NETIF_MAX_TX_SIZE:
            raise BadFrame(f"size {total} with {rest} bytes in later slots")
        parts = []
        for i, (gref, offset, _, _, size) in enumerate(slots):
            length = total - rest if i == 0 else size
            if offset + length > PAGE_SIZE:
                raise BadFrame(f"slot {i} crosses its page ({offset}+{length})")
            rc, gfn = self.dom0.pin(gref, readonly=True)
            if rc != G.GNTST_okay:
                raise BadFrame(f"grant {gref}: GNTST {rc}")
            try:
                parts.append(bytes(self.dom0.page(gfn)[offset : offset + length]))
            finally:
                self.dom0.unpin(gref, readonly=True)
        return b"".join(parts)

    @staticmethod
    def _vnet_header(frame: bytes, flags: int, extras: list[tuple[int, ...]]) -> bytes:
        """The kernel's instructions for the frame: finish its checksum, cut it into TCP
        segments (what netback's checksum_setup and GSO extra info ask of Linux)."""
        gso = next((e for e in extras if e[0] == N.XEN_NETIF_EXTRA_TYPE_GSO), None)
        if not flags & N.NETTXF_csum_blank and gso is None:
            return VNET_HDR.pack(0, VIRTIO_NET_HDR_GSO_NONE, 0, 0, 0, 0)
        l4, proto = _ipv4_l4(frame)
        if l4 is None:
            raise BadFrame("a checksum or GSO request on a frame that is not IPv4 TCP/UDP")
        csum_offset = {IPPROTO_TCP: 16, IPPROTO_UDP: 6}[proto]
        if gso is None:
            return VNET_HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE, 0, 0,
                                 l4, csum_offset)
        if gso[3] != N.XEN_NETIF_GSO_TYPE_TCPV4 or proto != IPPROTO_TCP or not gso[2]:
            raise BadFrame(f"GSO type {gso[3]} size {gso[2]}")
        header_len = l4 + (frame[l4 + 12] >> 4) * 4
        return VNET_HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, header_len,
                             gso[2], l4, csum_offset)

    # --- RX: TAP → guest ----------------------------------------------------------------------
    def _serve_rx(self) -> None:
        poller = select.poll()
        poller.register(self.tap, select.POLLIN)
        poller.register(self.stop_r, select.POLLIN)
        try:
            while not self.stopping:
                poller.poll()
                touched: set[int] = set()
                while not self.stopping:
                    try:
                        data = os.read(self.tap, READ_SIZE)
                    except BlockingIOError:
                        break
                    except OSError as e:
                        log.warning("vif %d: TAP read: %s", self.conn.devid, e)
                        return
                    frame = data[VNET_HDR.size :]
                    q = self.queues[_flow_hash(frame) % len(self.queues)]
                    if self._rx_frame(q, frame):
                        touched.add(q.index)
                for index in touched:
                    q = self.queues[index]
                    assert q.rx is not None
                    if q.rx.push_responses_and_check_notify():
                        self.dom0.notify(q.rx_port)
        except RingBroken as e:
            self._broken(self.queues[0], e)

    def _rx_frame(self, q: Queue, frame: bytes) -> bool:
        """Copy `frame` into the next page the front end posted on `q`; False if dropped."""
        ring = q.rx
        assert ring is not None
        if len(frame) > PAGE_SIZE or len(frame) < ETH_HLEN:
            self.counters.rx_dropped += 1
            return False
        if not ring.unconsumed():
            if ring.push_responses_and_check_notify():  # what it has, before waiting
                self.dom0.notify(q.rx_port)
            q.rx_wake.clear()
            if not ring.final_check_for_requests() and not (
                    q.rx_wake.wait(RX_STALL) and ring.final_check_for_requests()):
                self.counters.rx_dropped += 1
                return False
        req_id, gref = RX_REQUEST.unpack(ring.take_request()[: RX_REQUEST.size])
        rc, gfn = self.dom0.pin(gref, readonly=False)
        if rc != G.GNTST_okay:
            ring.put_response(RX_RESPONSE.pack(req_id, 0, 0, N.NETIF_RSP_ERROR))
            self.counters.rx_dropped += 1
            return True
        try:
            self.dom0.page(gfn)[: len(frame)] = frame
            self.dom0.wrote(gfn, 0, len(frame))
        finally:
            self.dom0.unpin(gref, readonly=False)
        ring.put_response(RX_RESPONSE.pack(req_id, 0, 0, len(frame)))  # checksums complete
        self.counters.rx_frames += 1
        return True


def _ipv4_l4(frame: bytes) -> tuple[int | None, int]:
    """Where an IPv4 frame's TCP or UDP header starts, and the protocol (None: not one)."""
    if len(frame) < ETH_HLEN + 20 or int.from_bytes(frame[12:14], "big") != ETH_P_IP:
        return None, 0
    ihl = (frame[ETH_HLEN] & 0x0F) * 4
    proto = frame[ETH_HLEN + 9]
    l4 = ETH_HLEN + ihl
    if proto not in (IPPROTO_TCP, IPPROTO_UDP) or ihl < 20 or len(frame) < l4 + 20:
        return None, proto
    return l4, proto


def _flow_hash(frame: bytes) -> int:
    """A flow's queue (netback picks by the skb's flow hash): IPv4 addresses, and the ports
    of TCP and UDP; 0 for what is not IPv4 (ARP)."""
    if len(frame) < ETH_HLEN + 20 or int.from_bytes(frame[12:14], "big") != ETH_P_IP:
        return 0
    l4, _ = _ipv4_l4(frame)
    ports = frame[l4 : l4 + 4] if l4 is not None else b""
    return zlib.crc32(frame[ETH_HLEN + 12 : ETH_HLEN + 20] + ports)
