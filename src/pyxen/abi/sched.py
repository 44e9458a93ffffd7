"""xen/sched.h: SCHEDOP_* sub-ops, shutdown reasons and their argument structs."""

from __future__ import annotations

import ctypes as C

SCHEDOP_yield = 0
SCHEDOP_block = 1
SCHEDOP_shutdown = 2
SCHEDOP_poll = 3
SCHEDOP_remote_shutdown = 4
SCHEDOP_shutdown_code = 5
SCHEDOP_watchdog = 6
SCHEDOP_pin_override = 7

SHUTDOWN_poweroff = 0
SHUTDOWN_reboot = 1
SHUTDOWN_suspend = 2
SHUTDOWN_crash = 3
SHUTDOWN_watchdog = 4
SHUTDOWN_soft_reset = 5
SHUTDOWN_MAX = 5

SHUTDOWN_NAMES = {
    SHUTDOWN_poweroff: "poweroff",
    SHUTDOWN_reboot: "reboot",
    SHUTDOWN_suspend: "suspend",
    SHUTDOWN_crash: "crash",
    SHUTDOWN_watchdog: "watchdog",
    SHUTDOWN_soft_reset: "soft_reset",
}


class sched_shutdown(C.Structure):
    _fields_ = [("reason", C.c_uint32)]


class sched_poll(C.Structure):
    _fields_ = [("ports", C.c_uint64), ("nr_ports", C.c_uint32), ("timeout", C.c_uint64)]


class compat_sched_poll(C.Structure):
    """32-bit guests: a 32-bit handle, then the 64-bit timeout 4-byte aligned."""

    _pack_ = 4
    _fields_ = [("ports", C.c_uint32), ("nr_ports", C.c_uint32), ("timeout", C.c_uint64)]


class sched_remote_shutdown(C.Structure):
    _fields_ = [("domain_id", C.c_uint16), ("reason", C.c_uint32)]


class sched_watchdog(C.Structure):
    _fields_ = [("id", C.c_uint32), ("timeout", C.c_uint32)]
