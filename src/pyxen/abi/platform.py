"""xen/platform.h: XENPF_* sub-ops and the xen_platform_op header."""

from __future__ import annotations

import ctypes as C

XENPF_INTERFACE_VERSION = 0x03000001

XENPF_settime32 = 17
XENPF_add_memtype = 31
XENPF_del_memtype = 32
XENPF_read_memtype = 33
XENPF_microcode_update = 35
XENPF_platform_quirk = 39
XENPF_get_cpu_version = 48
XENPF_efi_runtime_call = 49
XENPF_firmware_info = 50
XENPF_enter_acpi_sleep = 51
XENPF_change_freq = 52
XENPF_getidletime = 53
XENPF_set_processor_pminfo = 54
XENPF_get_cpuinfo = 55
XENPF_cpu_online = 56
XENPF_cpu_offline = 57
XENPF_cpu_hotadd = 58
XENPF_mem_hotadd = 59
XENPF_core_parking = 60
XENPF_resource_op = 61
XENPF_settime64 = 62
XENPF_get_symbol = 63


class xen_platform_op(C.Structure):
    _fields_ = [("cmd", C.c_uint32), ("interface_version", C.c_uint32),
                ("u", C.c_uint8 * 128)]
