"""HYPERVISOR_hvm_op: HVM parameters and a few HVM services (xen/arch/x86/hvm/hvm.c).

Parameter permissions follow Xen: a guest reads and writes only the parameters listed as
guest-accessible; another domain's parameters need control over it (XSM_TARGET); an index
past HVM_NR_PARAMS is -EINVAL, a missing domain -ESRCH (checked first).
"""

from __future__ import annotations

import ctypes as C
from typing import TYPE_CHECKING

from pyxen.abi import hvm as H
from pyxen.abi.errno import EEXIST, EINVAL, ENODEV, ENOENT, ENOSYS, EPERM, ESRCH, XenError
from pyxen.abi.xen import HYPERVISOR_hvm_op

from .hypercall import HypercallTable, subop_describer

if TYPE_CHECKING:
    from pyxen.domain.domain import Domain
    from pyxen.domain.vcpu import Vcpu

GUEST_READABLE = {
    H.HVM_PARAM_CALLBACK_IRQ, H.HVM_PARAM_VM86_TSS, H.HVM_PARAM_VM86_TSS_SIZED,
    H.HVM_PARAM_ACPI_IOPORTS_LOCATION, H.HVM_PARAM_VM_GENERATION_ID_ADDR,
    H.HVM_PARAM_STORE_PFN, H.HVM_PARAM_STORE_EVTCHN, H.HVM_PARAM_CONSOLE_PFN,
    H.HVM_PARAM_CONSOLE_EVTCHN, H.HVM_PARAM_ALTP2M, H.HVM_PARAM_X87_FIP_WIDTH,
}
GUEST_WRITABLE = {
    H.HVM_PARAM_CALLBACK_IRQ, H.HVM_PARAM_VM86_TSS, H.HVM_PARAM_VM86_TSS_SIZED,
    H.HVM_PARAM_ACPI_IOPORTS_LOCATION, H.HVM_PARAM_VM_GENERATION_ID_ADDR,
    H.HVM_PARAM_STORE_EVTCHN, H.HVM_PARAM_CONSOLE_EVTCHN, H.HVM_PARAM_X87_FIP_WIDTH,
}
SET_ONCE = {H.HVM_PARAM_VIRIDIAN, H.HVM_PARAM_IOREQ_SERVER_PFN,
            H.HVM_PARAM_NR_IOREQ_SERVER_PAGES, H.HVM_PARAM_ALTP2M, H.HVM_PARAM_MCA_CAP}
VM86_TSS_UPDATED = 1 << 63
HVMPTM_one_missed_tick_pending = 3

SUBOPS = {v: k for k, v in vars(H).items() if k.startswith("HVMOP_")}


class xen_hvm_get_time(C.Structure):
    _fields_ = [("now", C.c_uint64)]


def get_param(vcpu: Vcpu, target: Domain, index: int) -> int:
    if index >= H.HVM_NR_PARAMS:
        raise XenError(EINVAL)
    if index not in GUEST_READABLE and target is vcpu.domain:
        raise XenError(EPERM)
    params = target.hvm_params
    if index == H.HVM_PARAM_ACPI_S_STATE:
        return 0
    if index == H.HVM_PARAM_VM86_TSS:
        return params[H.HVM_PARAM_VM86_TSS_SIZED] & 0xFFFF_FFFF
    if index == H.HVM_PARAM_VM86_TSS_SIZED:
        return params[H.HVM_PARAM_VM86_TSS_SIZED] & ~VM86_TSS_UPDATED
    return params[index]


def set_param(vcpu: Vcpu, target: Domain, index: int, value: int) -> None:
    if index >= H.HVM_NR_PARAMS:
        raise XenError(EINVAL)
    params = target.hvm_params
    if index not in GUEST_WRITABLE and target is vcpu.domain:
        raise XenError(EPERM)
    if index in SET_ONCE and params[index] != 0 and value != params[index]:
        raise XenError(EEXIST)
    if index == H.HVM_PARAM_TIMER_MODE and value > HVMPTM_one_missed_tick_pending:
        raise XenError(EINVAL)
    if index == H.HVM_PARAM_ACPI_IOPORTS_LOCATION:
        raise XenError(ENODEV)  # PVH has no emulated ACPI PM timer to move
    if index == H.HVM_PARAM_X87_FIP_WIDTH and value not in (0, 4, 8):
        raise XenError(EINVAL)
    if index == H.HVM_PARAM_BUFIOREQ_EVTCHN:
        raise XenError(EINVAL)
    if index == H.HVM_PARAM_VM86_TSS:
        if value >> 32:
            if target is vcpu.domain:
                target.crash("HVM_PARAM_VM86_TSS above 4 GiB")
            raise XenError(EINVAL)
        if value:  # old hvmloaders assume a 128-byte TSS
            value |= (128 << 32) | VM86_TSS_UPDATED
        index = H.HVM_PARAM_VM86_TSS_SIZED
    params[index] = value


def do_hvm_op(vcpu: Vcpu, op: int, arg: int, *_: int) -> int:
    if op in (H.HVMOP_get_param, H.HVMOP_set_param):
        guest = vcpu.guest()
        a = guest.read_struct(H.xen_hvm_param, arg)
        if a.index >= H.HVM_NR_PARAMS:
            raise XenError(EINVAL)  # checked before the domain, as in Xen 4.17
        target = vcpu.domain.lookup(a.domid)
        if target is None:
            raise XenError(ESRCH)
        if not vcpu.domain.may_control(target):
            raise XenError(EPERM)
        if op == H.HVMOP_set_param:
            set_param(vcpu, target, a.index, a.value)
            return 0
        a.value = get_param(vcpu, target, a.index)
        guest.write_struct(arg, a)
        return 0
    if op == H.HVMOP_set_evtchn_upcall_vector:
        req = vcpu.guest().read_struct(H.xen_hvm_evtchn_upcall_vector, arg)
        if req.vector < 0x10:
            raise XenError(EINVAL)  # vectors below 16 are exceptions, not interrupts
        if req.vcpu >= len(vcpu.domain.vcpus):
            raise XenError(ENOENT)
        vcpu.domain.vcpus[req.vcpu].upcall_vector = req.vector
        return 0
    if op == H.HVMOP_flush_tlbs:
        if arg:
            raise XenError(EINVAL)
        return 0  # the backend flushes guest TLBs on every exit we take
    if op == H.HVMOP_get_time:
        vcpu.guest().write_struct(arg, xen_hvm_get_time(now=vcpu.domain.clock.now()))
        return 0
    raise XenError(ENOSYS)


def register(table: HypercallTable) -> None:
    table.register(HYPERVISOR_hvm_op, do_hvm_op, subop_describer(SUBOPS, 2),
                   inline=frozenset([H.HVMOP_get_param]))
