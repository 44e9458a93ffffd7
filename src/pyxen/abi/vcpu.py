"""xen/vcpu.h: VCPUOP_* sub-ops, runstate, and their argument structs."""

from __future__ import annotations

import ctypes as C

VCPUOP_initialise = 0
VCPUOP_up = 1
VCPUOP_down = 2
VCPUOP_is_up = 3
VCPUOP_get_runstate_info = 4
VCPUOP_register_runstate_memory_area = 5
VCPUOP_set_periodic_timer = 6
VCPUOP_stop_periodic_timer = 7
VCPUOP_set_singleshot_timer = 8
VCPUOP_stop_singleshot_timer = 9
VCPUOP_register_vcpu_info = 10
VCPUOP_send_nmi = 11
VCPUOP_get_physid = 12
VCPUOP_register_vcpu_time_memory_area = 13

RUNSTATE_running = 0
RUNSTATE_runnable = 1
RUNSTATE_blocked = 2
RUNSTATE_offline = 3

VCPU_SSHOTTMR_future = 1 << 0
XEN_RUNSTATE_UPDATE = 1 << 63


class vcpu_runstate_info(C.Structure):
    _fields_ = [
        ("state", C.c_int32),
        ("state_entry_time", C.c_uint64),
        ("time", C.c_uint64 * 4),
    ]


class compat_vcpu_runstate_info(C.Structure):
    """32-bit guests: uint64_t is 4-byte aligned on i386, so no padding after `state`."""

    _pack_ = 4
    _fields_ = [
        ("state", C.c_int32),
        ("state_entry_time", C.c_uint64),
        ("time", C.c_uint64 * 4),
    ]


class vcpu_register_runstate_memory_area(C.Structure):
    _fields_ = [("addr", C.c_uint64)]


class vcpu_register_vcpu_info(C.Structure):
    _fields_ = [("mfn", C.c_uint64), ("offset", C.c_uint32), ("rsvd", C.c_uint32)]


class vcpu_set_periodic_timer(C.Structure):
    _fields_ = [("period_ns", C.c_uint64)]


class vcpu_set_singleshot_timer(C.Structure):
    _fields_ = [("timeout_abs_ns", C.c_uint64), ("flags", C.c_uint32)]


class vcpu_register_time_memory_area(C.Structure):
    _fields_ = [("addr", C.c_uint64)]
