"""HYPERVISOR_platform_op: host platform control for dom0 (xen/arch/x86/platform_hypercall.c).

Xen's order: copy the xen_platform_op in (-EFAULT), the interface version XENPF_INTERFACE_VERSION
(-EACCES), then the dummy XSM check (XSM_PRIV): an unprivileged domain gets -EPERM.

pyxen runs on Linux, which owns the platform (time, microcode, ACPI sleep, CPU hotplug, power
states), so as dom0 every sub-op Xen knows returns -EOPNOTSUPP; unknown numbers are -ENOSYS,
as in Xen.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyxen.abi import platform as P
from pyxen.abi.errno import EACCES, ENOSYS, EOPNOTSUPP, XenError
from pyxen.abi.xen import HYPERVISOR_platform_op

from .hypercall import HypercallTable
from .xsm import xsm_priv

if TYPE_CHECKING:
    from pyxen.domain.vcpu import Vcpu

KNOWN = {v for k, v in vars(P).items() if k.startswith("XENPF_") and k[6:7].islower()}


def do_platform_op(vcpu: Vcpu, arg: int, *_: int) -> int:
    op = vcpu.guest().read_struct(P.xen_platform_op, arg)
    if op.interface_version != P.XENPF_INTERFACE_VERSION:
        raise XenError(EACCES, f"interface version {op.interface_version:#x}")
    xsm_priv(vcpu.domain)
    if op.cmd in KNOWN:
        raise XenError(EOPNOTSUPP, f"platform_op {op.cmd}: Linux owns the platform")
    raise XenError(ENOSYS)


def register(table: HypercallTable) -> None:
    table.register(HYPERVISOR_platform_op, do_platform_op, lambda args: hex(args[0]))
