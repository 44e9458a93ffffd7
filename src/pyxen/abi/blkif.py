"""Xen public header io/blkif.h: the PV block device protocol (x86_64 layout).

The front end (Linux's xen-blkfront, Mini-OS's blkfront, the kit's blkfront guest) puts
requests on a shared ring (io/ring.h); the back end answers each with a response carrying
the request's id. Sector numbers and segment bounds count 512-byte sectors."""

from __future__ import annotations

import ctypes as C

from pyxen.abi.ring import RING_SIZE

BLKIF_OP_READ = 0
BLKIF_OP_WRITE = 1
BLKIF_OP_WRITE_BARRIER = 2
BLKIF_OP_FLUSH_DISKCACHE = 3
BLKIF_OP_RESERVED_1 = 4
BLKIF_OP_DISCARD = 5
BLKIF_OP_INDIRECT = 6

BLKIF_MAX_SEGMENTS_PER_REQUEST = 11
BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST = 8
BLKIF_DISCARD_SECURE = 1 << 0

BLKIF_RSP_EOPNOTSUPP = -2
BLKIF_RSP_ERROR = -1
BLKIF_RSP_OKAY = 0

VDISK_CDROM = 0x1
VDISK_REMOVABLE = 0x2
VDISK_READONLY = 0x4

SECTOR_SHIFT = 9  # blkif counts 512-byte sectors whatever the disk's sector size
XEN_ABI_X86_64 = "x86_64-abi"  # io/protocols.h: XEN_IO_PROTO_ABI_X86_64


class blkif_request_segment(C.Structure):
    _fields_ = [
        ("gref", C.c_uint32),
        ("first_sect", C.c_uint8),
        ("last_sect", C.c_uint8),
    ]


class blkif_request(C.Structure):
    _fields_ = [
        ("operation", C.c_uint8),
        ("nr_segments", C.c_uint8),
        ("handle", C.c_uint16),
        ("id", C.c_uint64),
        ("sector_number", C.c_uint64),
        ("seg", blkif_request_segment * BLKIF_MAX_SEGMENTS_PER_REQUEST),
    ]


class blkif_request_discard(C.Structure):
    _fields_ = [
        ("operation", C.c_uint8),
        ("flag", C.c_uint8),
        ("handle", C.c_uint16),
        ("id", C.c_uint64),
        ("sector_number", C.c_uint64),
        ("nr_sectors", C.c_uint64),
    ]


class blkif_request_indirect(C.Structure):
    _fields_ = [
        ("operation", C.c_uint8),
        ("indirect_op", C.c_uint8),
        ("nr_segments", C.c_uint16),
        ("id", C.c_uint64),
        ("sector_number", C.c_uint64),
        ("handle", C.c_uint16),
        ("indirect_grefs", C.c_uint32 * BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST),
    ]


class blkif_response(C.Structure):
    _fields_ = [
        ("id", C.c_uint64),
        ("operation", C.c_uint8),
        ("status", C.c_int16),
    ]


BLKIF_SLOT_SIZE = max(C.sizeof(blkif_request), C.sizeof(blkif_response))
SEGMENTS_PER_INDIRECT_FRAME = 4096 // C.sizeof(blkif_request_segment)


def BLK_RING_SIZE(pages: int) -> int:  # noqa: N802 - Linux's macro name
    return RING_SIZE(pages * 4096, BLKIF_SLOT_SIZE)
