"""A front end's half of an io/ring.h ring, written by hand in an in-process domain's memory:
what the back-end tests drive pyxen's back ends with."""

from __future__ import annotations

import struct
import time

from pyxen.abi.ring import RING_SIZE, SRING_REQ_PROD, SRING_RING, SRING_RSP_EVENT, SRING_RSP_PROD
from pyxen.domain.domain import Domain


class FrontRing:
    """FRONT_RING_INIT on page `gfn`; requests pushed, responses taken in order."""

    def __init__(self, d: Domain, gfn: int, slot_size: int) -> None:
        self.d, self.base, self.slot_size = d, gfn << 12, slot_size
        self.size = RING_SIZE(4096, slot_size)
        self.req_prod = 0
        self.rsp_cons = 0
        d.memory.populate(gfn)
        d.memory.write(self.base, struct.pack("<IIII", 0, 1, 0, 1))  # SHARED_RING_INIT

    def u32(self, offset: int) -> int:
        return struct.unpack("<I", self.d.memory.read(self.base + offset, 4))[0]

    def push(self, *slots: bytes) -> None:
        """Requests into the next slots, then req_prod past them (RING_PUSH_REQUESTS)."""
        for slot in slots:
            index = self.req_prod % self.size
            self.d.memory.write(self.base + SRING_RING + index * self.slot_size, slot)
            self.req_prod += 1
        self.d.memory.write(self.base + SRING_REQ_PROD, struct.pack("<I", self.req_prod))

    def responses(self, n: int, length: int, timeout: float = 10.0) -> list[bytes]:
        """The next `n` responses' first `length` bytes, waiting for them; then ask to be
        notified of the next one (RING_FINAL_CHECK_FOR_RESPONSES)."""
        deadline = time.monotonic() + timeout
        while (self.u32(SRING_RSP_PROD) - self.rsp_cons) & 0xFFFFFFFF < n:
            assert time.monotonic() < deadline, "no response from the back end"
            time.sleep(0.002)
        out = []
        for _ in range(n):
            index = self.rsp_cons % self.size
            out.append(self.d.memory.read(self.base + SRING_RING + index * self.slot_size,
                                          length))
            self.rsp_cons += 1
        self.d.memory.write(self.base + SRING_RSP_EVENT, struct.pack("<I", self.rsp_cons + 1))
        return out

    def pending_responses(self) -> int:
        return (self.u32(SRING_RSP_PROD) - self.rsp_cons) & 0xFFFFFFFF
