"""xen/grant_table.h: grant entries (v1, v2, status), GNTTABOP_* sub-ops and their structs."""

from __future__ import annotations

import ctypes as C

GNTTABOP_map_grant_ref = 0
GNTTABOP_unmap_grant_ref = 1
GNTTABOP_setup_table = 2
GNTTABOP_dump_table = 3
GNTTABOP_transfer = 4
GNTTABOP_copy = 5
GNTTABOP_query_size = 6
GNTTABOP_unmap_and_replace = 7
GNTTABOP_set_version = 8
GNTTABOP_get_status_frames = 9
GNTTABOP_get_version = 10
GNTTABOP_swap_grant_ref = 11
GNTTABOP_cache_flush = 12

GNTTAB_NR_RESERVED_ENTRIES = 8
GNTTAB_RESERVED_CONSOLE = 0
GNTTAB_RESERVED_XENSTORE = 1

GTF_invalid = 0
GTF_permit_access = 1
GTF_accept_transfer = 2
GTF_transitive = 3
GTF_type_mask = 3
GTF_readonly = 1 << 2
GTF_reading = 1 << 3
GTF_writing = 1 << 4
GTF_PWT = 1 << 5
GTF_PCD = 1 << 6
GTF_PAT = 1 << 7
GTF_sub_page = 1 << 8
GTF_transfer_committed = 1 << 2
GTF_transfer_completed = 1 << 3

GNTCOPY_source_gref = 1 << 0
GNTCOPY_dest_gref = 1 << 1

GNTMAP_device_map = 1 << 0
GNTMAP_host_map = 1 << 1
GNTMAP_readonly = 1 << 2
GNTMAP_application_map = 1 << 3
GNTMAP_contains_pte = 1 << 4

GNTTAB_CACHE_CLEAN = 1 << 0
GNTTAB_CACHE_INVAL = 1 << 1
GNTTAB_CACHE_SOURCE_GREF = 1 << 31

GNTST_okay = 0
GNTST_general_error = -1
GNTST_bad_domain = -2
GNTST_bad_gntref = -3
GNTST_bad_handle = -4
GNTST_bad_virt_addr = -5
GNTST_bad_dev_addr = -6
GNTST_no_device_space = -7
GNTST_permission_denied = -8
GNTST_bad_page = -9
GNTST_bad_copy_arg = -10
GNTST_address_too_big = -11
GNTST_eagain = -12
GNTST_no_space = -13

grant_ref_t = C.c_uint32
grant_handle_t = C.c_uint32
domid_t = C.c_uint16


class grant_entry_v1(C.Structure):
    _fields_ = [("flags", C.c_uint16), ("domid", domid_t), ("frame", C.c_uint32)]


class grant_entry_header(C.Structure):
    _fields_ = [("flags", C.c_uint16), ("domid", domid_t)]


class grant_entry_v2_full_page(C.Structure):
    _fields_ = [("hdr", grant_entry_header), ("pad0", C.c_uint32), ("frame", C.c_uint64)]


class grant_entry_v2_sub_page(C.Structure):
    _fields_ = [("hdr", grant_entry_header), ("page_off", C.c_uint16), ("length", C.c_uint16),
                ("frame", C.c_uint64)]


class grant_entry_v2_transitive(C.Structure):
    _fields_ = [("hdr", grant_entry_header), ("trans_domid", domid_t), ("pad0", C.c_uint16),
                ("gref", grant_ref_t)]


class grant_entry_v2(C.Union):
    _fields_ = [("hdr", grant_entry_header), ("full_page", grant_entry_v2_full_page),
                ("sub_page", grant_entry_v2_sub_page), ("transitive", grant_entry_v2_transitive),
                ("spacer", C.c_uint32 * 4)]


class gnttab_map_grant_ref(C.Structure):
    _fields_ = [("host_addr", C.c_uint64), ("flags", C.c_uint32), ("ref", grant_ref_t),
                ("dom", domid_t), ("status", C.c_int16), ("handle", grant_handle_t),
                ("dev_bus_addr", C.c_uint64)]


class gnttab_unmap_grant_ref(C.Structure):
    _fields_ = [("host_addr", C.c_uint64), ("dev_bus_addr", C.c_uint64),
                ("handle", grant_handle_t), ("status", C.c_int16)]


class gnttab_setup_table(C.Structure):
    _fields_ = [("dom", domid_t), ("nr_frames", C.c_uint32), ("status", C.c_int16),
                ("frame_list", C.c_uint64)]


class gnttab_dump_table(C.Structure):
    _fields_ = [("dom", domid_t), ("status", C.c_int16)]


class gnttab_transfer(C.Structure):
    _fields_ = [("mfn", C.c_uint64), ("domid", domid_t), ("ref", grant_ref_t),
                ("status", C.c_int16)]


class gnttab_copy_ptr(C.Structure):
    _fields_ = [("u", C.c_uint64), ("domid", domid_t), ("offset", C.c_uint16)]


class gnttab_copy(C.Structure):
    _fields_ = [("source", gnttab_copy_ptr), ("dest", gnttab_copy_ptr), ("len", C.c_uint16),
                ("flags", C.c_uint16), ("status", C.c_int16)]


class gnttab_query_size(C.Structure):
    _fields_ = [("dom", domid_t), ("nr_frames", C.c_uint32), ("max_nr_frames", C.c_uint32),
                ("status", C.c_int16)]


class gnttab_unmap_and_replace(C.Structure):
    _fields_ = [("host_addr", C.c_uint64), ("new_addr", C.c_uint64),
                ("handle", grant_handle_t), ("status", C.c_int16)]


class gnttab_set_version(C.Structure):
    _fields_ = [("version", C.c_uint32)]


class gnttab_get_status_frames(C.Structure):
    _fields_ = [("nr_frames", C.c_uint32), ("dom", domid_t), ("status", C.c_int16),
                ("frame_list", C.c_uint64)]


class gnttab_get_version(C.Structure):
    _fields_ = [("dom", domid_t), ("pad", C.c_uint16), ("version", C.c_uint32)]


class gnttab_swap_grant_ref(C.Structure):
    _fields_ = [("ref_a", grant_ref_t), ("ref_b", grant_ref_t), ("status", C.c_int16)]


class gnttab_cache_flush(C.Structure):
    _fields_ = [("a", C.c_uint64), ("offset", C.c_uint16), ("length", C.c_uint16),
                ("op", C.c_uint32)]


# --- 32-bit (compat) callers: xen_pfn_t and guest handles are 32 bits, uint64_t 4-aligned ---
class compat_gnttab_setup_table(C.Structure):
    _fields_ = [("dom", domid_t), ("nr_frames", C.c_uint32), ("status", C.c_int16),
                ("frame_list", C.c_uint32)]


class compat_gnttab_copy_ptr(C.Structure):
    _fields_ = [("u", C.c_uint32), ("domid", domid_t), ("offset", C.c_uint16)]


class compat_gnttab_copy(C.Structure):
    _fields_ = [("source", compat_gnttab_copy_ptr), ("dest", compat_gnttab_copy_ptr),
                ("len", C.c_uint16), ("flags", C.c_uint16), ("status", C.c_int16)]


class compat_gnttab_map_grant_ref(C.Structure):
    _pack_ = 4
    _fields_ = gnttab_map_grant_ref._fields_


class compat_gnttab_unmap_grant_ref(C.Structure):
    _pack_ = 4
    _fields_ = gnttab_unmap_grant_ref._fields_
