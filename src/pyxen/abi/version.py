"""xen/version.h: XENVER_* sub-ops, their buffers, and xen/features.h bits."""

from __future__ import annotations

import ctypes as C

XENVER_version = 0
XENVER_extraversion = 1
XENVER_compile_info = 2
XENVER_capabilities = 3
XENVER_changeset = 4
XENVER_platform_parameters = 5
XENVER_get_features = 6
XENVER_pagesize = 7
XENVER_guest_handle = 8
XENVER_commandline = 9
XENVER_build_id = 10

XEN_EXTRAVERSION_LEN = 16
XEN_CAPABILITIES_INFO_LEN = 1024
XEN_CHANGESET_INFO_LEN = 64
XEN_COMMANDLINE_LEN = 1024
XEN_DOMAIN_HANDLE_LEN = 16


class xen_compile_info(C.Structure):
    _fields_ = [
        ("compiler", C.c_char * 64),
        ("compile_by", C.c_char * 16),
        ("compile_domain", C.c_char * 32),
        ("compile_date", C.c_char * 32),
    ]


class xen_platform_parameters(C.Structure):
    _fields_ = [("virt_start", C.c_uint64)]


class xen_feature_info(C.Structure):
    _fields_ = [("submap_idx", C.c_uint32), ("submap", C.c_uint32)]


class xen_build_id(C.Structure):
    _fields_ = [("len", C.c_uint32)]  # followed by `len` bytes of buffer


# xen/features.h
XENFEAT_writable_page_tables = 0
XENFEAT_writable_descriptor_tables = 1
XENFEAT_auto_translated_physmap = 2
XENFEAT_supervisor_mode_kernel = 3
XENFEAT_pae_pgdir_above_4gb = 4
XENFEAT_mmu_pt_update_preserve_ad = 5
XENFEAT_highmem_assist = 6
XENFEAT_gnttab_map_avail_bits = 7
XENFEAT_hvm_callback_vector = 8
XENFEAT_hvm_safe_pvclock = 9
XENFEAT_hvm_pirqs = 10
XENFEAT_dom0 = 11
XENFEAT_grant_map_identity = 12
XENFEAT_memory_op_vnode_supported = 13
XENFEAT_ARM_SMCCC_supported = 14
XENFEAT_linux_rsdp_unrestricted = 15
XENFEAT_not_direct_mapped = 16
XENFEAT_direct_mapped = 17
XENFEAT_NR_SUBMAPS = 1
