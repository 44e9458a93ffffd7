"""xen/domctl.h: XEN_DOMCTL_* sub-ops and xen_domctl_getdomaininfo."""

from __future__ import annotations

import ctypes as C

XEN_DOMCTL_INTERFACE_VERSION = 0x00000015

XEN_DOMCTL_createdomain = 1
XEN_DOMCTL_destroydomain = 2
XEN_DOMCTL_pausedomain = 3
XEN_DOMCTL_unpausedomain = 4
XEN_DOMCTL_getdomaininfo = 5
XEN_DOMCTL_setvcpuaffinity = 9
XEN_DOMCTL_shadow_op = 10
XEN_DOMCTL_max_mem = 11
XEN_DOMCTL_setvcpucontext = 12
XEN_DOMCTL_getvcpucontext = 13
XEN_DOMCTL_getvcpuinfo = 14
XEN_DOMCTL_max_vcpus = 15
XEN_DOMCTL_scheduler_op = 16
XEN_DOMCTL_setdomainhandle = 17
XEN_DOMCTL_setdebugging = 18
XEN_DOMCTL_irq_permission = 19
XEN_DOMCTL_iomem_permission = 20
XEN_DOMCTL_ioport_permission = 21
XEN_DOMCTL_hypercall_init = 22
XEN_DOMCTL_settimeoffset = 24
XEN_DOMCTL_getvcpuaffinity = 25
XEN_DOMCTL_real_mode_area = 26
XEN_DOMCTL_resumedomain = 27
XEN_DOMCTL_sendtrigger = 28
XEN_DOMCTL_subscribe = 29
XEN_DOMCTL_gethvmcontext = 33
XEN_DOMCTL_sethvmcontext = 34
XEN_DOMCTL_set_address_size = 35
XEN_DOMCTL_get_address_size = 36
XEN_DOMCTL_assign_device = 37
XEN_DOMCTL_bind_pt_irq = 38
XEN_DOMCTL_memory_mapping = 39
XEN_DOMCTL_ioport_mapping = 40
XEN_DOMCTL_set_ext_vcpucontext = 42
XEN_DOMCTL_get_ext_vcpucontext = 43
XEN_DOMCTL_set_opt_feature = 44
XEN_DOMCTL_test_assign_device = 45
XEN_DOMCTL_set_target = 46
XEN_DOMCTL_deassign_device = 47
XEN_DOMCTL_unbind_pt_irq = 48
XEN_DOMCTL_get_device_group = 50
XEN_DOMCTL_debug_op = 54
XEN_DOMCTL_gethvmcontext_partial = 55
XEN_DOMCTL_vm_event_op = 56
XEN_DOMCTL_mem_sharing_op = 57
XEN_DOMCTL_gettscinfo = 59
XEN_DOMCTL_settscinfo = 60
XEN_DOMCTL_getpageframeinfo3 = 61
XEN_DOMCTL_setvcpuextstate = 62
XEN_DOMCTL_getvcpuextstate = 63
XEN_DOMCTL_set_access_required = 64
XEN_DOMCTL_audit_p2m = 65
XEN_DOMCTL_set_virq_handler = 66
XEN_DOMCTL_set_broken_page_p2m = 67
XEN_DOMCTL_setnodeaffinity = 68
XEN_DOMCTL_getnodeaffinity = 69
XEN_DOMCTL_cacheflush = 71
XEN_DOMCTL_get_vcpu_msrs = 72
XEN_DOMCTL_set_vcpu_msrs = 73
XEN_DOMCTL_setvnumainfo = 74
XEN_DOMCTL_psr_cmt_op = 75
XEN_DOMCTL_monitor_op = 77
XEN_DOMCTL_psr_alloc = 78
XEN_DOMCTL_soft_reset = 79
XEN_DOMCTL_vuart_op = 81
XEN_DOMCTL_get_cpu_policy = 82
XEN_DOMCTL_set_cpu_policy = 83
XEN_DOMCTL_vmtrace_op = 84
XEN_DOMCTL_get_paging_mempool_size = 85
XEN_DOMCTL_set_paging_mempool_size = 86
XEN_DOMCTL_gdbsx_guestmemio = 1000
XEN_DOMCTL_gdbsx_pausevcpu = 1001
XEN_DOMCTL_gdbsx_unpausevcpu = 1002
XEN_DOMCTL_gdbsx_domstatus = 1003

XEN_DOMINF_dying = 1 << 0
XEN_DOMINF_hvm_guest = 1 << 1
XEN_DOMINF_shutdown = 1 << 2
XEN_DOMINF_paused = 1 << 3
XEN_DOMINF_blocked = 1 << 4
XEN_DOMINF_running = 1 << 5
XEN_DOMINF_debugged = 1 << 6
XEN_DOMINF_xs_domain = 1 << 7
XEN_DOMINF_hap = 1 << 8
XEN_DOMINF_shutdownmask = 255
XEN_DOMINF_shutdownshift = 16
XEN_INVALID_MAX_VCPU_ID = 0xFFFF_FFFF


class xen_arch_domainconfig(C.Structure):
    """arch-x86/xen.h."""

    _fields_ = [("emulation_flags", C.c_uint32), ("misc_flags", C.c_uint32)]


class xen_domctl_getdomaininfo(C.Structure):
    _fields_ = [
        ("domain", C.c_uint16),
        ("pad1", C.c_uint16),
        ("flags", C.c_uint32),
        ("tot_pages", C.c_uint64),
        ("max_pages", C.c_uint64),
        ("outstanding_pages", C.c_uint64),
        ("shr_pages", C.c_uint64),
        ("paged_pages", C.c_uint64),
        ("shared_info_frame", C.c_uint64),
        ("cpu_time", C.c_uint64),
        ("nr_online_vcpus", C.c_uint32),
        ("max_vcpu_id", C.c_uint32),
        ("ssidref", C.c_uint32),
        ("handle", C.c_uint8 * 16),
        ("cpupool", C.c_uint32),
        ("gpaddr_bits", C.c_uint8),
        ("pad2", C.c_uint8 * 7),
        ("arch_config", xen_arch_domainconfig),
    ]


class xen_domctl_u(C.Union):
    _fields_ = [("getdomaininfo", xen_domctl_getdomaininfo), ("pad", C.c_uint8 * 128)]


class xen_domctl(C.Structure):
    _fields_ = [
        ("cmd", C.c_uint32),
        ("interface_version", C.c_uint32),
        ("domain", C.c_uint16),
        ("_pad", C.c_uint16 * 3),
        ("u", xen_domctl_u),
    ]
