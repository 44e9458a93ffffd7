"""Xen's default (dummy) XSM policy, and HYPERVISOR_xsm_op (xen/include/xsm/dummy.h).

The dummy policy grants by role: XSM_HOOK always; XSM_TARGET to a domain acting on itself;
XSM_XS_PRIV to the xenstore domain; XSM_DM_PRIV to a device model acting on its target
(`d->target`); XSM_PRIV to the control domain. In pyxen the xenstore daemon and device models
are pyxen itself, never a guest, so for a guest the roles reduce to "itself" and "privileged"
(`pyxen run --dom0`). Every refusal is -EPERM.

HYPERVISOR_xsm_op is FLASK's interface; under the dummy policy Xen answers every call
with -ENOSYS (xsm_do_xsm_op), which is what a guest of a default Xen build sees.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyxen.abi.errno import ENOSYS, EPERM, XenError
from pyxen.abi.xen import HYPERVISOR_xsm_op

from .hypercall import HypercallTable

if TYPE_CHECKING:
    from pyxen.domain.domain import Domain
    from pyxen.domain.vcpu import Vcpu


def xsm_priv(src: Domain) -> None:
    """XSM_PRIV: only the control domain."""
    if not src.privileged:
        raise XenError(EPERM, "XSM_PRIV")


def xsm_dm_priv(src: Domain, target: object | None) -> None:
    """XSM_DM_PRIV: a device model on its target (none in pyxen), else XSM_PRIV."""
    xsm_priv(src)


def xsm_xs_priv(src: Domain, target: object | None) -> None:
    """XSM_XS_PRIV: the xenstore domain (pyxen itself, never a guest), else XSM_DM_PRIV."""
    xsm_dm_priv(src, target)


def xsm_target(src: Domain, target: object | None) -> None:
    """XSM_TARGET: a domain on itself, else XSM_XS_PRIV."""
    if target is not src:
        xsm_xs_priv(src, target)


def do_xsm_op(vcpu: Vcpu, *_: int) -> int:
    raise XenError(ENOSYS, "dummy XSM has no xsm_op")


def register(table: HypercallTable) -> None:
    table.register(HYPERVISOR_xsm_op, do_xsm_op, lambda args: hex(args[0]))
