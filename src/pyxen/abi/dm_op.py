"""xen/hvm/dm_op.h: the buffer descriptors HYPERVISOR_dm_op takes, and XEN_DMOP_* numbers."""

from __future__ import annotations

import ctypes as C

XEN_DMOP_create_ioreq_server = 1
XEN_DMOP_get_ioreq_server_info = 2
XEN_DMOP_map_io_range_to_ioreq_server = 3
XEN_DMOP_unmap_io_range_from_ioreq_server = 4
XEN_DMOP_set_ioreq_server_state = 5
XEN_DMOP_destroy_ioreq_server = 6
XEN_DMOP_track_dirty_vram = 7
XEN_DMOP_set_pci_intx_level = 8
XEN_DMOP_set_isa_irq_level = 9
XEN_DMOP_set_pci_link_route = 10
XEN_DMOP_modified_memory = 11
XEN_DMOP_set_mem_type = 12
XEN_DMOP_inject_event = 13
XEN_DMOP_inject_msi = 14
XEN_DMOP_map_mem_type_to_ioreq_server = 15
XEN_DMOP_remote_shutdown = 16
XEN_DMOP_relocate_memory = 17
XEN_DMOP_pin_memory_cacheattr = 18
XEN_DMOP_set_irq_level = 19
XEN_DMOP_nr_vcpus = 20


class xen_dm_op_buf(C.Structure):
    _fields_ = [("h", C.c_uint64), ("size", C.c_uint64)]


class compat_dm_op_buf(C.Structure):
    """The 32-bit callers' layout: a 32-bit handle and a 32-bit size."""

    _fields_ = [("h", C.c_uint32), ("size", C.c_uint32)]
