"""HYPERVISOR_dm_op: device-model operations on an HVM domain (xen/arch/x86/hvm/dm.c, 4.17).

Xen's order: more than 2 buffers is -E2BIG; the buffer descriptors are copied in (-EFAULT);
the target must be another existing domain (rcu_lock_remote_domain_by_id: a missing id, and
DOMID_SELF, are -ESRCH; the caller itself is -EPERM); then the dummy XSM check (XSM_DM_PRIV)
refuses an unprivileged caller (-EPERM). In pyxen the device models are pyxen itself and an
embedded domain has no other domain to act on, so every call ends in one of those errors.
"""

from __future__ import annotations

import ctypes as C
from typing import TYPE_CHECKING

from pyxen.abi import dm_op as DM
from pyxen.abi.errno import E2BIG, EOPNOTSUPP, EPERM, ESRCH, XenError
from pyxen.abi.xen import HYPERVISOR_dm_op

from .hypercall import HypercallTable
from .xsm import xsm_dm_priv

if TYPE_CHECKING:
    from pyxen.domain.vcpu import Vcpu

NR_BUFS = 2  # struct dmop_args: enough buffers for every current dm_op


def do_dm_op(vcpu: Vcpu, domid: int, nr_bufs: int, bufs: int, *_: int) -> int:
    d = vcpu.domain
    nr_bufs &= 0xFFFF_FFFF
    if nr_bufs > NR_BUFS:
        raise XenError(E2BIG)
    cls = DM.compat_dm_op_buf if vcpu.compat else DM.xen_dm_op_buf
    if nr_bufs:
        vcpu.guest().read(bufs, nr_bufs * C.sizeof(cls))
    target = d.peers.get(domid & 0xFFFF)
    if target is None:
        raise XenError(ESRCH, f"domain {domid & 0xFFFF}")
    if target is d:
        raise XenError(EPERM, "a domain is not its own device model")
    xsm_dm_priv(d, target)
    raise XenError(EOPNOTSUPP, "pyxen runs no device model in a guest")


def register(table: HypercallTable) -> None:
    table.register(HYPERVISOR_dm_op, do_dm_op,
                   lambda a: f"domid {a[0] & 0xFFFF}, {a[1] & 0xFFFF_FFFF} bufs, {a[2]:#x}")
