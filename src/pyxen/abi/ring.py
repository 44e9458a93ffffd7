"""Xen public header io/ring.h: the shared request/response ring of the split drivers.

A ring is one or more pages: a 64-byte header (four free-running 32-bit indices and
padding) then a power-of-two number of slots, each the size of the larger of the request
and the response (DEFINE_RING_TYPES's union). The indices are masked only to address a
slot."""

from __future__ import annotations

import ctypes as C

RING_IDX = C.c_uint32


class sring_header(C.Structure):
    """The start of every DEFINE_RING_TYPES `__name##_sring` (`ring[]` follows)."""

    _fields_ = [
        ("req_prod", RING_IDX),
        ("req_event", RING_IDX),
        ("rsp_prod", RING_IDX),
        ("rsp_event", RING_IDX),
        ("pad", C.c_uint8 * 48),
    ]


SRING_REQ_PROD = sring_header.req_prod.offset
SRING_REQ_EVENT = sring_header.req_event.offset
SRING_RSP_PROD = sring_header.rsp_prod.offset
SRING_RSP_EVENT = sring_header.rsp_event.offset
SRING_RING = C.sizeof(sring_header)


def RING_SIZE(ring_bytes: int, slot_size: int) -> int:  # noqa: N802 - Xen's macro name
    """__CONST_RING_SIZE: slots in a ring of `ring_bytes`, rounded down to a power of two."""
    slots = (ring_bytes - SRING_RING) // slot_size
    return 1 << (slots.bit_length() - 1) if slots > 0 else 0
