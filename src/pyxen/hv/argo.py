"""HYPERVISOR_argo_op: Argo inter-domain messaging (xen/common/argo.c).

Argo is an EXPERT-only Kconfig option, off in Xen 4.17's default build (and Debian's): such a
Xen has no argo_op in its hypercall table, so every call is -ENOSYS. (A build with
CONFIG_ARGO but without `argo=1` on Xen's command line would answer -EOPNOTSUPP instead.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyxen.abi.errno import ENOSYS, XenError
from pyxen.abi.xen import HYPERVISOR_argo_op

from .hypercall import HypercallTable

if TYPE_CHECKING:
    from pyxen.domain.vcpu import Vcpu


def do_argo_op(vcpu: Vcpu, *_: int) -> int:
    raise XenError(ENOSYS, "Xen built without CONFIG_ARGO")


def register(table: HypercallTable) -> None:
    table.register(HYPERVISOR_argo_op, do_argo_op)
