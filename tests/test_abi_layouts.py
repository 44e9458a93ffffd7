"""pyxen's ctypes layouts of Xen's public structs must match Debian libxen-dev's headers.

A C program is generated that prints sizeof and every field's offsetof as the compiler sees
them, and each is compared with the ctypes class.
"""

from __future__ import annotations

import ctypes as C
from pathlib import Path

import pytest

from clayout import check_layout, compile_layouts, compile_layouts_i386
from pyxen.abi import (
    blkif,
    console,
    hvm,
    hvm_vcpu,
    memory,
    netif,
    physdev,
    platform,
    sched,
    start_info,
    sysctl,
    vcpu,
    version,
    xen,
)
from pyxen.abi import dm_op as dm
from pyxen.abi import domctl as dctl
from pyxen.abi import event_channel as ev
from pyxen.abi import grant_table as gnt

# (C type, ctypes class, {python field: C member expression} where the names differ)
LAYOUTS: list[tuple[str, type[C.Structure], dict[str, str]]] = [
    ("struct vcpu_time_info", xen.vcpu_time_info, {}),
    ("struct arch_vcpu_info", xen.arch_vcpu_info, {}),
    ("struct vcpu_info", xen.vcpu_info, {}),
    ("struct arch_shared_info", xen.arch_shared_info, {}),
    ("struct shared_info", xen.shared_info, {}),
    ("struct multicall_entry", xen.multicall_entry, {}),
    ("struct xen_compile_info", version.xen_compile_info, {}),
    ("struct xen_platform_parameters", version.xen_platform_parameters, {}),
    ("struct xen_feature_info", version.xen_feature_info, {}),
    ("struct sched_shutdown", sched.sched_shutdown, {}),
    ("struct sched_poll", sched.sched_poll, {}),
    ("struct sched_remote_shutdown", sched.sched_remote_shutdown, {}),
    ("struct sched_watchdog", sched.sched_watchdog, {}),
    ("struct xen_memory_reservation", memory.xen_memory_reservation, {}),
    ("struct xen_add_to_physmap", memory.xen_add_to_physmap, {}),
    ("struct xen_add_to_physmap_batch", memory.xen_add_to_physmap_batch,
     {"foreign_domid": "u.foreign_domid"}),
    ("struct xen_memory_map", memory.xen_memory_map, {}),
    ("struct xen_hvm_param", hvm.xen_hvm_param, {}),
    ("struct xen_hvm_evtchn_upcall_vector", hvm.xen_hvm_evtchn_upcall_vector, {}),
    ("struct vcpu_runstate_info", vcpu.vcpu_runstate_info, {}),
    ("struct vcpu_register_runstate_memory_area", vcpu.vcpu_register_runstate_memory_area,
     {"addr": "addr.p"}),
    ("struct vcpu_register_vcpu_info", vcpu.vcpu_register_vcpu_info, {}),
    ("struct vcpu_set_periodic_timer", vcpu.vcpu_set_periodic_timer, {}),
    ("struct vcpu_set_singleshot_timer", vcpu.vcpu_set_singleshot_timer, {}),
    ("struct hvm_start_info", start_info.hvm_start_info, {}),
    ("struct hvm_modlist_entry", start_info.hvm_modlist_entry, {}),
    ("struct hvm_memmap_table_entry", start_info.hvm_memmap_table_entry, {}),
    ("struct xen_remove_from_physmap", memory.xen_remove_from_physmap, {}),

    ("struct vcpu_register_time_memory_area", vcpu.vcpu_register_time_memory_area,
     {"addr": "addr.p"}),
    ("struct evtchn_alloc_unbound", ev.evtchn_alloc_unbound, {}),
    ("struct evtchn_bind_interdomain", ev.evtchn_bind_interdomain, {}),
    ("struct evtchn_bind_virq", ev.evtchn_bind_virq, {}),
    ("struct evtchn_bind_pirq", ev.evtchn_bind_pirq, {}),
    ("struct evtchn_bind_ipi", ev.evtchn_bind_ipi, {}),
    ("struct evtchn_close", ev.evtchn_close, {}),
    ("struct evtchn_send", ev.evtchn_send, {}),
    ("struct evtchn_status", ev.evtchn_status, {}),
    ("struct evtchn_bind_vcpu", ev.evtchn_bind_vcpu, {}),
    ("struct evtchn_unmask", ev.evtchn_unmask, {}),
    ("struct evtchn_reset", ev.evtchn_reset, {}),
    ("struct evtchn_init_control", ev.evtchn_init_control, {}),
    ("struct evtchn_expand_array", ev.evtchn_expand_array, {}),
    ("struct evtchn_set_priority", ev.evtchn_set_priority, {}),
    ("struct evtchn_fifo_control_block", ev.evtchn_fifo_control_block, {}),
    ("struct vcpu_hvm_x86_32", hvm_vcpu.vcpu_hvm_x86_32, {}),
    ("struct vcpu_hvm_x86_64", hvm_vcpu.vcpu_hvm_x86_64, {}),
    ("struct vcpu_hvm_context", hvm_vcpu.vcpu_hvm_context, {}),
    ("struct xen_sysctl_physinfo", sysctl.xen_sysctl_physinfo, {}),
    ("struct xen_sysctl_getdomaininfolist", sysctl.xen_sysctl_getdomaininfolist, {}),
    ("struct xen_sysctl", sysctl.xen_sysctl, {}),
    ("struct xen_arch_domainconfig", dctl.xen_arch_domainconfig, {}),
    ("struct xen_domctl_getdomaininfo", dctl.xen_domctl_getdomaininfo, {}),
    ("struct xen_domctl", dctl.xen_domctl, {}),
    ("struct xen_platform_op", platform.xen_platform_op, {}),
    ("struct physdev_pci_mmcfg_reserved", physdev.physdev_pci_mmcfg_reserved, {}),
    ("struct physdev_pci_device_add", physdev.physdev_pci_device_add, {}),
    ("struct physdev_pci_device", physdev.physdev_pci_device, {}),
    ("struct physdev_dbgp_op", physdev.physdev_dbgp_op, {}),
    ("struct xen_dm_op_buf", dm.xen_dm_op_buf, {}),
    ("struct mmuext_op", xen.mmuext_op, {}),
    ("struct grant_entry_v1", gnt.grant_entry_v1, {}),
    ("struct grant_entry_header", gnt.grant_entry_header, {}),
    ("union grant_entry_v2", gnt.grant_entry_v2, {"spacer": "__spacer"}),
    ("struct gnttab_map_grant_ref", gnt.gnttab_map_grant_ref, {}),
    ("struct gnttab_unmap_grant_ref", gnt.gnttab_unmap_grant_ref, {}),
    ("struct gnttab_setup_table", gnt.gnttab_setup_table, {}),
    ("struct gnttab_dump_table", gnt.gnttab_dump_table, {}),
    ("struct gnttab_transfer", gnt.gnttab_transfer, {}),
    ("struct gnttab_copy", gnt.gnttab_copy, {}),
    ("struct gnttab_copy_ptr", gnt.gnttab_copy_ptr, {}),
    ("struct gnttab_query_size", gnt.gnttab_query_size, {}),
    ("struct gnttab_unmap_and_replace", gnt.gnttab_unmap_and_replace, {}),
    ("struct gnttab_set_version", gnt.gnttab_set_version, {}),
    ("struct gnttab_get_status_frames", gnt.gnttab_get_status_frames, {}),
    ("struct gnttab_get_version", gnt.gnttab_get_version, {}),
    ("struct gnttab_swap_grant_ref", gnt.gnttab_swap_grant_ref, {}),
    ("struct gnttab_cache_flush", gnt.gnttab_cache_flush, {}),
    ("struct xencons_interface", console.xencons_interface, {}),
    ("struct blkif_request_segment", blkif.blkif_request_segment, {}),
    ("struct blkif_request", blkif.blkif_request, {}),
    ("struct blkif_request_discard", blkif.blkif_request_discard, {}),
    ("struct blkif_request_indirect", blkif.blkif_request_indirect, {}),
    ("struct blkif_response", blkif.blkif_response, {}),
    ("struct netif_tx_request", netif.netif_tx_request, {}),
    ("struct netif_extra_info", netif.netif_extra_info, {}),
    ("struct netif_tx_response", netif.netif_tx_response, {}),
    ("struct netif_rx_request", netif.netif_rx_request, {}),
    ("struct netif_rx_response", netif.netif_rx_response, {}),
]

HEADERS = """
#include <stdint.h>
#include <xen/xen.h>
#include <xen/version.h>
#include <xen/sched.h>
#include <xen/memory.h>
#include <xen/vcpu.h>
#include <xen/hvm/hvm_op.h>
#include <xen/hvm/params.h>
#include <xen/arch-x86/hvm/start_info.h>
#include <xen/event_channel.h>
#include <xen/hvm/hvm_vcpu.h>
#include <xen/io/console.h>
#include <xen/sysctl.h>
#include <xen/domctl.h>
#include <xen/platform.h>
#include <xen/physdev.h>
#include <xen/hvm/dm_op.h>
#include <xen/grant_table.h>
#include <xen/io/blkif.h>
#include <xen/io/netif.h>
"""


# pyxen's compat (32-bit guest) layouts against the native structs compiled for i386.
COMPAT_LAYOUTS: list[tuple[str, type[C.Structure], dict[str, str]]] = [
    ("struct xen_memory_reservation", memory.compat_memory_reservation, {}),
    ("struct xen_add_to_physmap", memory.compat_add_to_physmap, {}),
    ("struct xen_add_to_physmap_batch", memory.compat_add_to_physmap_batch,
     {"foreign_domid": "u.foreign_domid"}),
    ("struct xen_remove_from_physmap", memory.compat_remove_from_physmap, {}),
    ("struct xen_memory_map", memory.compat_memory_map, {}),
    ("struct sched_poll", sched.compat_sched_poll, {}),
    ("struct vcpu_runstate_info", vcpu.compat_vcpu_runstate_info, {}),
    ("struct multicall_entry", xen.compat_multicall_entry, {}),
    ("struct mmuext_op", xen.compat_mmuext_op, {}),
    ("struct xen_dm_op_buf", dm.compat_dm_op_buf, {}),
    ("struct gnttab_setup_table", gnt.compat_gnttab_setup_table, {}),
    ("struct gnttab_copy", gnt.compat_gnttab_copy, {}),
    ("struct gnttab_map_grant_ref", gnt.compat_gnttab_map_grant_ref, {}),
    ("struct gnttab_unmap_grant_ref", gnt.compat_gnttab_unmap_grant_ref, {}),
]


@pytest.fixture(scope="module")
def c_layouts_i386(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    return compile_layouts_i386(tmp_path_factory.mktemp("abi32"), HEADERS, COMPAT_LAYOUTS,
                                ("-D__XEN_TOOLS__",))


@pytest.mark.parametrize(("ctype", "cls", "renames"), COMPAT_LAYOUTS,
                         ids=[x[0] for x in COMPAT_LAYOUTS])
def test_compat_layout_matches_i386(c_layouts_i386, ctype, cls, renames) -> None:
    check_layout(c_layouts_i386, ctype, cls, renames)


@pytest.fixture(scope="module")
def c_layouts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    if not Path("/usr/include/xen/xen.h").exists():
        pytest.fail("Xen public headers missing: install Debian's libxen-dev")
    return compile_layouts(tmp_path_factory.mktemp("abi"), HEADERS, LAYOUTS,
                           ("-D__XEN_TOOLS__",))


@pytest.mark.parametrize(("ctype", "cls", "renames"), LAYOUTS, ids=[x[0] for x in LAYOUTS])
def test_layout_matches_xen_headers(c_layouts, ctype, cls, renames) -> None:
    check_layout(c_layouts, ctype, cls, renames)
