"""xen/sysctl.h: XEN_SYSCTL_* sub-ops and the structs pyxen fills (physinfo, domain lists)."""

from __future__ import annotations

import ctypes as C

XEN_SYSCTL_INTERFACE_VERSION = 0x00000015

XEN_SYSCTL_readconsole = 1
XEN_SYSCTL_tbuf_op = 2
XEN_SYSCTL_physinfo = 3
XEN_SYSCTL_sched_id = 4
XEN_SYSCTL_perfc_op = 5
XEN_SYSCTL_getdomaininfolist = 6
XEN_SYSCTL_debug_keys = 7
XEN_SYSCTL_getcpuinfo = 8
XEN_SYSCTL_availheap = 9
XEN_SYSCTL_get_pmstat = 10
XEN_SYSCTL_cpu_hotplug = 11
XEN_SYSCTL_pm_op = 12
XEN_SYSCTL_page_offline_op = 14
XEN_SYSCTL_lockprof_op = 15
XEN_SYSCTL_cputopoinfo = 16
XEN_SYSCTL_numainfo = 17
XEN_SYSCTL_cpupool_op = 18
XEN_SYSCTL_scheduler_op = 19
XEN_SYSCTL_coverage_op = 20
XEN_SYSCTL_psr_cmt_op = 21
XEN_SYSCTL_pcitopoinfo = 22
XEN_SYSCTL_psr_alloc = 23
XEN_SYSCTL_get_cpu_levelling_caps = 25
XEN_SYSCTL_get_cpu_featureset = 26
XEN_SYSCTL_livepatch_op = 27
XEN_SYSCTL_get_cpu_policy = 29

XEN_SYSCTL_PHYSCAP_hvm = 1 << 0
XEN_SYSCTL_PHYSCAP_pv = 1 << 1
XEN_SYSCTL_PHYSCAP_directio = 1 << 2
XEN_SYSCTL_PHYSCAP_hap = 1 << 3
XEN_SYSCTL_PHYSCAP_shadow = 1 << 4
XEN_SYSCTL_PHYSCAP_gnttab_v1 = 1 << 8


class xen_sysctl_physinfo(C.Structure):
    _fields_ = [
        ("threads_per_core", C.c_uint32),
        ("cores_per_socket", C.c_uint32),
        ("nr_cpus", C.c_uint32),
        ("max_cpu_id", C.c_uint32),
        ("nr_nodes", C.c_uint32),
        ("max_node_id", C.c_uint32),
        ("cpu_khz", C.c_uint32),
        ("capabilities", C.c_uint32),
        ("arch_capabilities", C.c_uint32),
        ("pad", C.c_uint32),
        ("total_pages", C.c_uint64),
        ("free_pages", C.c_uint64),
        ("scrub_pages", C.c_uint64),
        ("outstanding_pages", C.c_uint64),
        ("max_mfn", C.c_uint64),
        ("hw_cap", C.c_uint32 * 8),
    ]


class xen_sysctl_getdomaininfolist(C.Structure):
    _fields_ = [
        ("first_domain", C.c_uint16),
        ("max_domains", C.c_uint32),
        ("buffer", C.c_uint64),  # XEN_GUEST_HANDLE_64(xen_domctl_getdomaininfo_t)
        ("num_domains", C.c_uint32),
    ]


class xen_sysctl_u(C.Union):
    _fields_ = [
        ("physinfo", xen_sysctl_physinfo),
        ("getdomaininfolist", xen_sysctl_getdomaininfolist),
        ("pad", C.c_uint8 * 128),
    ]


class xen_sysctl(C.Structure):
    _fields_ = [("cmd", C.c_uint32), ("interface_version", C.c_uint32), ("u", xen_sysctl_u)]
