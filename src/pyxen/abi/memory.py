"""xen/memory.h: XENMEM_* sub-ops and argument structs."""

from __future__ import annotations

import ctypes as C

XENMEM_increase_reservation = 0
XENMEM_decrease_reservation = 1
XENMEM_maximum_ram_page = 2
XENMEM_current_reservation = 3
XENMEM_maximum_reservation = 4
XENMEM_machphys_mfn_list = 5
XENMEM_populate_physmap = 6
XENMEM_add_to_physmap = 7
XENMEM_memory_map = 9
XENMEM_machine_memory_map = 10
XENMEM_exchange = 11
XENMEM_machphys_mapping = 12
XENMEM_set_memory_map = 13
XENMEM_maximum_gpfn = 14
XENMEM_remove_from_physmap = 15
XENMEM_add_to_physmap_batch = 23
XENMEM_claim_pages = 24
XENMEM_get_vnumainfo = 26
XENMEM_reserved_device_memory_map = 27
XENMEM_acquire_resource = 28

XENMAPSPACE_shared_info = 0
XENMAPSPACE_grant_table = 1
XENMAPSPACE_gmfn = 2
XENMAPSPACE_gmfn_range = 3
XENMAPSPACE_gmfn_foreign = 4
XENMAPSPACE_dev_mmio = 5
XENMAPIDX_grant_table_status = 0x80000000

# The sub-op is the low 6 bits of cmd; the rest (above MEMOP_EXTENT_SHIFT) is a
# continuation's start extent.
MEMOP_EXTENT_SHIFT = 6
MEMOP_CMD_MASK = (1 << MEMOP_EXTENT_SHIFT) - 1

# e820 types (xen/hvm/e820.h)
E820_RAM = 1
E820_RESERVED = 2
E820_ACPI = 3
E820_NVS = 4


class xen_memory_reservation(C.Structure):
    _fields_ = [
        ("extent_start", C.c_uint64),
        ("nr_extents", C.c_uint64),
        ("extent_order", C.c_uint32),
        ("mem_flags", C.c_uint32),
        ("domid", C.c_uint16),
    ]


class xen_add_to_physmap(C.Structure):
    _fields_ = [
        ("domid", C.c_uint16),
        ("size", C.c_uint16),
        ("space", C.c_uint32),
        ("idx", C.c_uint64),
        ("gpfn", C.c_uint64),
    ]


class xen_add_to_physmap_batch(C.Structure):
    _fields_ = [
        ("domid", C.c_uint16),
        ("space", C.c_uint16),
        ("size", C.c_uint16),
        ("foreign_domid", C.c_uint16),
        ("idxs", C.c_uint64),
        ("gpfns", C.c_uint64),
        ("errs", C.c_uint64),
    ]


class xen_memory_map(C.Structure):
    _fields_ = [("nr_entries", C.c_uint32), ("buffer", C.c_uint64)]


class e820entry(C.Structure):
    _pack_ = 1
    _fields_ = [("addr", C.c_uint64), ("size", C.c_uint64), ("type", C.c_uint32)]


class xen_remove_from_physmap(C.Structure):
    _fields_ = [("domid", C.c_uint16), ("gpfn", C.c_uint64)]


class compat_memory_reservation(C.Structure):
    """32-bit guests' xen_memory_reservation: handles and unsigned longs are 32 bits."""

    _fields_ = [
        ("extent_start", C.c_uint32),
        ("nr_extents", C.c_uint32),
        ("extent_order", C.c_uint32),
        ("mem_flags", C.c_uint32),
        ("domid", C.c_uint16),
    ]


class compat_add_to_physmap(C.Structure):
    _fields_ = [
        ("domid", C.c_uint16),
        ("size", C.c_uint16),
        ("space", C.c_uint32),
        ("idx", C.c_uint32),
        ("gpfn", C.c_uint32),
    ]


class compat_memory_map(C.Structure):
    _fields_ = [("nr_entries", C.c_uint32), ("buffer", C.c_uint32)]


class compat_add_to_physmap_batch(C.Structure):
    """32-bit guests: handles are 32 bits; idxs and gpfns are arrays of 32-bit values."""

    _fields_ = [
        ("domid", C.c_uint16),
        ("space", C.c_uint16),
        ("size", C.c_uint16),
        ("foreign_domid", C.c_uint16),
        ("idxs", C.c_uint32),
        ("gpfns", C.c_uint32),
        ("errs", C.c_uint32),
    ]


class compat_remove_from_physmap(C.Structure):
    _fields_ = [("domid", C.c_uint16), ("gpfn", C.c_uint32)]
