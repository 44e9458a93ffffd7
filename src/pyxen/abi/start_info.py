"""xen/arch-x86/hvm/start_info.h (PVH boot) and xen/elfnote.h."""

from __future__ import annotations

import ctypes as C

XEN_HVM_START_MAGIC_VALUE = 0x336EC578
SIF_PRIVILEGED = 1 << 0
SIF_INITDOMAIN = 1 << 1

XEN_HVM_MEMMAP_TYPE_RAM = 1
XEN_HVM_MEMMAP_TYPE_RESERVED = 2
XEN_HVM_MEMMAP_TYPE_ACPI = 3

XEN_ELFNOTE_PHYS32_ENTRY = 18
XEN_ELFNOTE_NAME = b"Xen"


class hvm_start_info(C.Structure):
    _fields_ = [
        ("magic", C.c_uint32),
        ("version", C.c_uint32),
        ("flags", C.c_uint32),
        ("nr_modules", C.c_uint32),
        ("modlist_paddr", C.c_uint64),
        ("cmdline_paddr", C.c_uint64),
        ("rsdp_paddr", C.c_uint64),
        ("memmap_paddr", C.c_uint64),
        ("memmap_entries", C.c_uint32),
        ("reserved", C.c_uint32),
    ]


class hvm_modlist_entry(C.Structure):
    _fields_ = [
        ("paddr", C.c_uint64),
        ("size", C.c_uint64),
        ("cmdline_paddr", C.c_uint64),
        ("reserved", C.c_uint64),
    ]


class hvm_memmap_table_entry(C.Structure):
    _fields_ = [
        ("addr", C.c_uint64),
        ("size", C.c_uint64),
        ("type", C.c_uint32),
        ("reserved", C.c_uint32),
    ]
