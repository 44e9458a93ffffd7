"""HYPERVISOR_hypfs_op: Xen's hypervisor file system (xen/common/hypfs.c, Xen 4.17).

The dummy XSM check (XSM_PRIV) comes first, for every sub-op, known or not: an unprivileged
domain gets -EPERM. For dom0, XEN_HYPFS_OP_get_version returns XEN_HYPFS_VERSION if all other
arguments are 0 (else -EINVAL). pyxen publishes no hypfs tree (Xen's /buildinfo, /params, ...),
so reading and writing entries is -EOPNOTSUPP.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyxen.abi import hypfs as H
from pyxen.abi.errno import EINVAL, EOPNOTSUPP, XenError
from pyxen.abi.xen import HYPERVISOR_hypfs_op

from .hypercall import HypercallTable, subop_describer
from .xsm import xsm_priv

if TYPE_CHECKING:
    from pyxen.domain.vcpu import Vcpu

SUBOPS = {v: k for k, v in vars(H).items() if k.startswith("XEN_HYPFS_OP_")}


def do_hypfs_op(vcpu: Vcpu, cmd: int, arg1: int, arg2: int, arg3: int, arg4: int) -> int:
    xsm_priv(vcpu.domain)
    if cmd & 0xFFFF_FFFF == H.XEN_HYPFS_OP_get_version:
        if arg1 or arg2 or arg3 or arg4:
            raise XenError(EINVAL)
        return H.XEN_HYPFS_VERSION
    raise XenError(EOPNOTSUPP, "pyxen publishes no hypfs entries")


def register(table: HypercallTable) -> None:
    table.register(HYPERVISOR_hypfs_op, do_hypfs_op, subop_describer(SUBOPS, 5))
