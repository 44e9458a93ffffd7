"""Xen public header io/console.h: the PV console ring (struct xencons_interface).

One page shared by a guest and its console back end (xenconsoled): `in` carries the
terminal's bytes to the guest, `out` the guest's bytes to the terminal. Each side has
free-running 32-bit producer/consumer indices (XENCONS_RING_IDX); an index is masked with the
ring's size (a power of two) only to address a byte.
"""

from __future__ import annotations

import ctypes as C

XENCONS_RING_IDX = C.c_uint32
XENCONS_IN_SIZE = 1024
XENCONS_OUT_SIZE = 2048


class xencons_interface(C.Structure):
    _fields_ = [
        ("in", C.c_char * XENCONS_IN_SIZE),
        ("out", C.c_char * XENCONS_OUT_SIZE),
        ("in_cons", XENCONS_RING_IDX),
        ("in_prod", XENCONS_RING_IDX),
        ("out_cons", XENCONS_RING_IDX),
        ("out_prod", XENCONS_RING_IDX),
    ]


# Byte offsets in the page, for struct access through a memoryview.
XENCONS_IN = xencons_interface.__dict__["in"].offset
XENCONS_OUT = xencons_interface.out.offset
XENCONS_IN_CONS = xencons_interface.in_cons.offset
XENCONS_IN_PROD = xencons_interface.in_prod.offset
XENCONS_OUT_CONS = xencons_interface.out_cons.offset
XENCONS_OUT_PROD = xencons_interface.out_prod.offset


def MASK_XENCONS_IDX(idx: int, size: int) -> int:  # noqa: N802 - Xen's macro name
    """A ring index as a byte offset in a ring of `size` bytes."""
    return idx & (size - 1)
