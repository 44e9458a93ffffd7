"""xen/xen.h and xen/arch-x86/xen.h: hypercall numbers, domids, shared_info and vcpu_info."""

from __future__ import annotations

import ctypes as C

# Hypercall numbers (__HYPERVISOR_*).
HYPERVISOR_set_trap_table = 0
HYPERVISOR_mmu_update = 1
HYPERVISOR_set_gdt = 2
HYPERVISOR_stack_switch = 3
HYPERVISOR_set_callbacks = 4
HYPERVISOR_fpu_taskswitch = 5
HYPERVISOR_sched_op_compat = 6
HYPERVISOR_platform_op = 7
HYPERVISOR_set_debugreg = 8
HYPERVISOR_get_debugreg = 9
HYPERVISOR_update_descriptor = 10
HYPERVISOR_memory_op = 12
HYPERVISOR_multicall = 13
HYPERVISOR_update_va_mapping = 14
HYPERVISOR_set_timer_op = 15
HYPERVISOR_event_channel_op_compat = 16
HYPERVISOR_xen_version = 17
HYPERVISOR_console_io = 18
HYPERVISOR_physdev_op_compat = 19
HYPERVISOR_grant_table_op = 20
HYPERVISOR_vm_assist = 21
HYPERVISOR_update_va_mapping_otherdomain = 22
HYPERVISOR_iret = 23
HYPERVISOR_vcpu_op = 24
HYPERVISOR_set_segment_base = 25
HYPERVISOR_mmuext_op = 26
HYPERVISOR_xsm_op = 27
HYPERVISOR_nmi_op = 28
HYPERVISOR_sched_op = 29
HYPERVISOR_callback_op = 30
HYPERVISOR_xenoprof_op = 31
HYPERVISOR_event_channel_op = 32
HYPERVISOR_physdev_op = 33
HYPERVISOR_hvm_op = 34
HYPERVISOR_sysctl = 35
HYPERVISOR_domctl = 36
HYPERVISOR_kexec_op = 37
HYPERVISOR_tmem_op = 38
HYPERVISOR_argo_op = 39
HYPERVISOR_xenpmu_op = 40
HYPERVISOR_dm_op = 41
HYPERVISOR_hypfs_op = 42

HYPERCALL_NAMES = {
    v: k.removeprefix("HYPERVISOR_")
    for k, v in globals().items()
    if k.startswith("HYPERVISOR_") and isinstance(v, int)
}

# Special domain ids.
DOMID_FIRST_RESERVED = 0x7FF0
DOMID_SELF = 0x7FF0
DOMID_IO = 0x7FF1
DOMID_XEN = 0x7FF2
DOMID_COW = 0x7FF3
DOMID_INVALID = 0x7FF4
DOMID_IDLE = 0x7FFF

# console_io sub-ops.
CONSOLEIO_write = 0
CONSOLEIO_read = 1

# mmuext_op commands (struct mmuext_op).
MMUEXT_PIN_L1_TABLE = 0
MMUEXT_PIN_L2_TABLE = 1
MMUEXT_PIN_L3_TABLE = 2
MMUEXT_PIN_L4_TABLE = 3
MMUEXT_UNPIN_TABLE = 4
MMU_UPDATE_PREEMPTED = 1 << 31

XEN_LEGACY_MAX_VCPUS = 32
XEN_PAGE_SHIFT = 12
XEN_PAGE_SIZE = 1 << XEN_PAGE_SHIFT

xen_ulong_t = C.c_uint64


class vcpu_time_info(C.Structure):
    _fields_ = [
        ("version", C.c_uint32),
        ("pad0", C.c_uint32),
        ("tsc_timestamp", C.c_uint64),
        ("system_time", C.c_uint64),
        ("tsc_to_system_mul", C.c_uint32),
        ("tsc_shift", C.c_int8),
        ("flags", C.c_uint8),
        ("pad1", C.c_uint8 * 2),
    ]


XEN_PVCLOCK_TSC_STABLE_BIT = 1 << 0


class arch_vcpu_info(C.Structure):
    _fields_ = [("cr2", C.c_uint64), ("pad", C.c_uint64)]


class vcpu_info(C.Structure):
    _fields_ = [
        ("evtchn_upcall_pending", C.c_uint8),
        ("evtchn_upcall_mask", C.c_uint8),
        ("evtchn_pending_sel", xen_ulong_t),
        ("arch", arch_vcpu_info),
        ("time", vcpu_time_info),
    ]


class arch_shared_info(C.Structure):
    _fields_ = [
        ("max_pfn", C.c_uint64),
        ("pfn_to_mfn_frame_list_list", C.c_uint64),
        ("nmi_reason", C.c_uint64),
        ("p2m_cr3", C.c_uint64),
        ("p2m_vaddr", C.c_uint64),
        ("p2m_generation", C.c_uint64),
    ]


class shared_info(C.Structure):
    _fields_ = [
        ("vcpu_info", vcpu_info * XEN_LEGACY_MAX_VCPUS),
        ("evtchn_pending", xen_ulong_t * 64),
        ("evtchn_mask", xen_ulong_t * 64),
        ("wc_version", C.c_uint32),
        ("wc_sec", C.c_uint32),
        ("wc_nsec", C.c_uint32),
        ("wc_sec_hi", C.c_uint32),
        ("arch", arch_shared_info),
    ]


class multicall_entry(C.Structure):
    _fields_ = [("op", xen_ulong_t), ("result", xen_ulong_t), ("args", xen_ulong_t * 6)]


class compat_multicall_entry(C.Structure):
    """The 32-bit guests' layout (xen/include/compat): all fields 32 bits wide."""

    _fields_ = [("op", C.c_uint32), ("result", C.c_uint32), ("args", C.c_uint32 * 6)]


class mmuext_op(C.Structure):
    """cmd, then arg1 (mfn or linear_addr) and arg2 (nr_ents, vcpumask or src_mfn)."""

    _fields_ = [("cmd", C.c_uint32), ("arg1", C.c_uint64), ("arg2", C.c_uint64)]


class compat_mmuext_op(C.Structure):
    """The 32-bit callers' layout: every member 32 bits wide."""

    _fields_ = [("cmd", C.c_uint32), ("arg1", C.c_uint32), ("arg2", C.c_uint32)]
