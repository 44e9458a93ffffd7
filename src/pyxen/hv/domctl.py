"""HYPERVISOR_domctl: domain control for the toolstack (xen/common/domctl.c, Xen 4.17).

Xen's order: copy the whole xen_domctl in (-EFAULT), the interface version (-EACCES), the
target domain by id (-ESRCH; DOMID_SELF is not an id here), then the dummy XSM check, which
refuses every sub-op to an unprivileged domain (-EPERM). XEN_DOMCTL_getdomaininfo is special in
4.17: a missing domain is not -ESRCH up front but means "the next domain from that id on".

As dom0 pyxen implements XEN_DOMCTL_getdomaininfo with real values. Xen's other sub-ops build,
tune and tear down *other* domains, which embedded pyxen does not have: they return
-EOPNOTSUPP; numbers Xen does not know are -ENOSYS (arch_do_domctl's default).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyxen.abi import domctl as D
from pyxen.abi.errno import EACCES, EINVAL, ENOSYS, EOPNOTSUPP, ESRCH, XenError
from pyxen.abi.vcpu import RUNSTATE_blocked, RUNSTATE_offline, RUNSTATE_running
from pyxen.abi.xen import DOMID_FIRST_RESERVED, DOMID_INVALID, DOMID_IO, HYPERVISOR_domctl

from .hypercall import HypercallTable
from .xsm import xsm_dm_priv, xsm_priv, xsm_xs_priv

if TYPE_CHECKING:
    from pyxen.domain.domain import Domain
    from pyxen.domain.vcpu import Vcpu

KNOWN = {v for k, v in vars(D).items() if k.startswith("XEN_DOMCTL_") and isinstance(v, int)
         and k != "XEN_DOMCTL_INTERFACE_VERSION"}
DM_PRIV_CMDS = {D.XEN_DOMCTL_ioport_mapping, D.XEN_DOMCTL_memory_mapping,
                D.XEN_DOMCTL_bind_pt_irq, D.XEN_DOMCTL_unbind_pt_irq}
DOM_IO = "dom_io"  # Xen's pseudo-domain for I/O pages (the target of device assignment)
SHUTDOWN_CODE_INVALID = 0xFFFF_FFFF  # d->shutdown_code before any shutdown: ~0u
GPADDR_BITS = 52  # the guest-physical address width pyxen's page walk accepts


def getdomaininfo(d: Domain) -> D.xen_domctl_getdomaininfo:
    """Xen's getdomaininfo(): the state `xl list` shows, from pyxen's own bookkeeping.

    arch_config.emulation_flags stays 0: pyxen emulates no local APIC or other device (Xen
    reports XEN_X86_EMU_LAPIC for a PVH domain)."""
    info = D.xen_domctl_getdomaininfo(domain=d.domid, max_vcpu_id=D.XEN_INVALID_MAX_VCPU_ID)
    flags = D.XEN_DOMINF_blocked
    now = d.clock.now()
    cpu_time = 0
    for v in d.vcpus:
        cpu_time += v.runstate_time[RUNSTATE_running]
        if v.runstate_state == RUNSTATE_running:
            cpu_time += now - v.runstate_entry
            flags = (flags & ~D.XEN_DOMINF_blocked) | D.XEN_DOMINF_running
        elif v.runstate_state != RUNSTATE_offline and v.runstate_state != RUNSTATE_blocked:
            flags &= ~D.XEN_DOMINF_blocked
        info.max_vcpu_id = v.index
        if v.online:
            info.nr_online_vcpus += 1
    code = SHUTDOWN_CODE_INVALID if d.shutdown_code is None else d.shutdown_code
    info.flags = ((flags if info.nr_online_vcpus else 0)
                  | (D.XEN_DOMINF_shutdown if d.stopping else 0)
                  | D.XEN_DOMINF_hvm_guest | D.XEN_DOMINF_hap
                  | (code << D.XEN_DOMINF_shutdownshift)) & 0xFFFF_FFFF
    info.cpu_time = cpu_time
    info.tot_pages = d.tot_pages
    info.max_pages = d.max_pages
    gfn = d.shared_info.gfn
    info.shared_info_frame = 0xFFFF_FFFF_FFFF_FFFF if gfn is None else gfn  # INVALID_M2P_ENTRY
    info.handle[:] = d.handle[:16]
    info.gpaddr_bits = GPADDR_BITS
    return info


def _target(d: Domain, op: D.xen_domctl) -> Domain | str | None:
    """The pre-switch of do_domctl: which domain the sub-op names (None: none or next)."""
    cmd, domid = op.cmd, op.domain
    if cmd in (D.XEN_DOMCTL_assign_device, D.XEN_DOMCTL_deassign_device):
        if domid == DOMID_IO:
            return DOM_IO
        if domid == DOMID_INVALID:
            raise XenError(ESRCH)
    elif cmd == D.XEN_DOMCTL_createdomain or (
            cmd in (D.XEN_DOMCTL_test_assign_device, D.XEN_DOMCTL_vm_event_op)
            and domid == DOMID_INVALID):
        return None
    target = d.peers.get(domid)  # rcu_lock_domain_by_id: ids only, no DOMID_SELF
    if target is None and cmd != D.XEN_DOMCTL_getdomaininfo:
        raise XenError(ESRCH, f"domain {domid}")
    return target


def xsm_domctl(d: Domain, target: Domain | str | None, cmd: int) -> None:
    if cmd in DM_PRIV_CMDS:
        xsm_dm_priv(d, target)
    elif cmd == D.XEN_DOMCTL_getdomaininfo:
        xsm_xs_priv(d, target)
    else:
        xsm_priv(d)


def do_domctl(vcpu: Vcpu, arg: int, *_: int) -> int:
    d = vcpu.domain
    guest = vcpu.guest()
    op = guest.read_struct(D.xen_domctl, arg)
    if op.interface_version != D.XEN_DOMCTL_INTERFACE_VERSION:
        raise XenError(EACCES, f"interface version {op.interface_version:#x}")
    target = _target(d, op)
    xsm_domctl(d, target, op.cmd)
    if op.cmd == D.XEN_DOMCTL_getdomaininfo:
        if target is None:
            if op.domain >= DOMID_FIRST_RESERVED:
                raise XenError(EINVAL)
            later = [domid for domid in d.peers if domid >= op.domain]
            if not later:
                raise XenError(ESRCH)
            target = d.peers[min(later)]
        assert not isinstance(target, str)
        op.u.getdomaininfo = getdomaininfo(target)
        op.domain = target.domid
        guest.write_struct(arg, op)
        return 0
    if op.cmd in KNOWN:
        raise XenError(EOPNOTSUPP, f"domctl {op.cmd}: pyxen builds no other domains")
    raise XenError(ENOSYS)


def register(table: HypercallTable) -> None:
    table.register(HYPERVISOR_domctl, do_domctl, lambda args: hex(args[0]))
