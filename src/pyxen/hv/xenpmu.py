"""HYPERVISOR_xenpmu_op: the virtual PMU (xen/arch/x86/cpu/vpmu.c do_xenpmu_op, Xen 4.17).

Xen refuses every sub-op with -EOPNOTSUPP before looking at it when the vPMU is off (the
default: no `vpmu=` on Xen's command line) or the caller has an emulated local APIC (every
HVM/PVH domain): pyxen answers the same, dom0 included.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyxen.abi import pmu as P
from pyxen.abi.errno import EOPNOTSUPP, XenError
from pyxen.abi.xen import HYPERVISOR_xenpmu_op

from .hypercall import HypercallTable, subop_describer

if TYPE_CHECKING:
    from pyxen.domain.vcpu import Vcpu

SUBOPS = {v: k for k, v in vars(P).items() if k.startswith("XENPMU_")}


def do_xenpmu_op(vcpu: Vcpu, *_: int) -> int:
    raise XenError(EOPNOTSUPP, "vPMU off")


def register(table: HypercallTable) -> None:
    table.register(HYPERVISOR_xenpmu_op, do_xenpmu_op, subop_describer(SUBOPS, 2))
