"""HYPERVISOR_vcpu_op: per-vCPU state the guest registers or queries (xen/common/domain.c).

Secondary-vCPU bring-up (initialise/up/down) and the vCPU timers come with the SMP/events
work; until then those sub-ops are -ENOSYS.
"""

from __future__ import annotations

import contextlib
import ctypes as C
from typing import TYPE_CHECKING

from pyxen.abi import vcpu as V
from pyxen.abi.errno import EINVAL, ENOENT, ENOSYS, XenError
from pyxen.abi.xen import HYPERVISOR_vcpu_op, vcpu_info
from pyxen.domain.memory import PAGE_SHIFT, PAGE_SIZE, GuestMemoryError

from .hypercall import HypercallTable, subop_describer

if TYPE_CHECKING:
    from pyxen.domain.vcpu import Vcpu

SUBOPS = {v: k for k, v in vars(V).items() if k.startswith("VCPUOP_")}
HVM_VCPU_OPS = {  # the sub-ops Xen lets an HVM guest reach
    V.VCPUOP_register_runstate_memory_area, V.VCPUOP_get_runstate_info,
    V.VCPUOP_set_periodic_timer, V.VCPUOP_stop_periodic_timer,
    V.VCPUOP_set_singleshot_timer, V.VCPUOP_stop_singleshot_timer,
    V.VCPUOP_register_vcpu_info, V.VCPUOP_register_vcpu_time_memory_area,
    V.VCPUOP_initialise, V.VCPUOP_up, V.VCPUOP_down, V.VCPUOP_is_up, V.VCPUOP_send_nmi,
}


def runstate_info(v: Vcpu, compat: bool) -> C.Structure:
    cls = V.compat_vcpu_runstate_info if compat else V.vcpu_runstate_info
    now = v.domain.clock.now()
    times = list(v.runstate_time)
    times[v.runstate_state] += now - v.runstate_entry  # the current state, up to now
    info = cls(state=v.runstate_state, state_entry_time=v.runstate_entry)
    for i, t in enumerate(times):
        info.time[i] = t
    return info


def publish_runstate(v: Vcpu) -> None:
    """Refresh the guest's registered runstate area (Xen does so at each context switch)."""
    if v.runstate_area is None:
        return
    va, compat = v.runstate_area
    with contextlib.suppress(XenError):  # Xen ignores an area that is no longer mapped
        v.guest().write_struct(va, runstate_info(v, compat))


def map_vcpu_info(caller: Vcpu, v: Vcpu, gfn: int, offset: int) -> None:
    size = C.sizeof(vcpu_info)
    if offset > PAGE_SIZE - size or offset % 8:
        raise XenError(EINVAL)
    if v.vcpu_info_override is not None:
        raise XenError(EINVAL)  # once only
    if v is not caller and v.online:
        raise XenError(EINVAL)
    mem = v.domain.memory
    gpa = (gfn << PAGE_SHIFT) + offset
    try:
        mem.check_populated(gpa, size)
    except GuestMemoryError as e:
        raise XenError(EINVAL, str(e)) from e
    old = v.vcpu_info
    new = mem.struct_at(vcpu_info, gpa)
    if old is None:
        C.memset(C.addressof(new), 0, size)
        new.evtchn_upcall_mask = 1
    else:
        C.memmove(C.addressof(new), C.addressof(old), size)
    v.vcpu_info_override = new
    # Everything is marked pending so that no event is lost in the move (a spurious upcall
    # is harmless, a lost one is not).
    new.evtchn_pending_sel = (1 << 64) - 1
    new.evtchn_upcall_pending = 1
    v.update_time()


def do_vcpu_op(caller: Vcpu, cmd: int, vcpuid: int, arg: int, *_: int) -> int:
    domain = caller.domain
    vcpuid &= 0xFFFF_FFFF
    if vcpuid >= len(domain.vcpus):
        raise XenError(ENOENT)  # checked before the sub-op, as in Xen
    if cmd not in HVM_VCPU_OPS:
        raise XenError(ENOSYS)
    v = domain.vcpus[vcpuid]
    guest = caller.guest()
    if cmd == V.VCPUOP_is_up:
        return 1 if v.online else 0
    if cmd == V.VCPUOP_get_runstate_info:
        guest.write_struct(arg, runstate_info(v, caller.compat))
        return 0
    if cmd == V.VCPUOP_register_runstate_memory_area:
        area = guest.read_struct(V.vcpu_register_runstate_memory_area, arg)
        v.runstate_area = (area.addr, caller.compat)
        publish_runstate(v)  # a bad address is accepted and simply not written, as in Xen
        return 0
    if cmd == V.VCPUOP_register_vcpu_info:
        info = guest.read_struct(V.vcpu_register_vcpu_info, arg)
        map_vcpu_info(caller, v, info.mfn, info.offset)
        return 0
    if cmd == V.VCPUOP_register_vcpu_time_memory_area:
        area = guest.read_struct(V.vcpu_register_time_memory_area, arg)
        v.time_area = area.addr
        v.update_time()
        return 0
    raise XenError(ENOSYS)  # initialise/up/down, timers, send_nmi: SMP and events issue


def register(table: HypercallTable) -> None:
    table.register(HYPERVISOR_vcpu_op, do_vcpu_op, subop_describer(SUBOPS, 3))
