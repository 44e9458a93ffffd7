"""HYPERVISOR_physdev_op as Xen 4.17 filters it for HVM/PVH callers (xen/arch/x86/hvm/hypercall.c
hvm_physdev_op, then xen/arch/x86/physdev.c and xen/drivers/pci/physdev.c).

An HVM caller reaches only two groups of sub-ops; everything else is -ENOSYS:
- the PIRQ ones (map_pirq, unmap_pirq, eoi, irq_status_query, get_free_pirq) need
  XEN_X86_EMU_USE_PIRQ, which PVH domains never have, so they are -ENOSYS for every pyxen domain;
- the PCI ones (pci_mmcfg_reserved, pci_device_add, pci_device_remove, dbgp_op) need the
  hardware domain: -ENOSYS for a domU. For dom0 pyxen reads the argument as Xen does
  (-EFAULT, and -EINVAL for unknown MMCONFIG flags) and then answers as Xen on a machine
  without MMCONFIG regions (-ENODEV) and without a USB debug port (dbgp_op: 0). pyxen has no
  PCI bus, so pci_device_add/remove are -ENODEV (Xen would record what dom0 reports).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyxen.abi import physdev as P
from pyxen.abi.errno import EINVAL, ENODEV, ENOSYS, XenError
from pyxen.abi.xen import HYPERVISOR_physdev_op

from .hypercall import HypercallTable, subop_describer
from .xsm import xsm_priv

if TYPE_CHECKING:
    from pyxen.domain.vcpu import Vcpu

SUBOPS = {v: k for k, v in vars(P).items() if k.startswith("PHYSDEVOP_")}
HARDWARE_DOMAIN_ONLY = {P.PHYSDEVOP_pci_mmcfg_reserved, P.PHYSDEVOP_pci_device_add,
                        P.PHYSDEVOP_pci_device_remove, P.PHYSDEVOP_dbgp_op}


def do_physdev_op(vcpu: Vcpu, cmd: int, arg: int, *_: int) -> int:
    d = vcpu.domain
    cmd &= 0xFFFF_FFFF  # Xen's `int cmd`
    if cmd not in HARDWARE_DOMAIN_ONLY or not d.privileged:
        raise XenError(ENOSYS, "not available to an HVM guest without PIRQs")
    guest = vcpu.guest()
    if cmd == P.PHYSDEVOP_pci_mmcfg_reserved:
        xsm_priv(d)  # xsm_resource_setup_misc, before the copy
        info = guest.read_struct(P.physdev_pci_mmcfg_reserved, arg)
        if info.flags & ~P.XEN_PCI_MMCFG_RESERVED:
            raise XenError(EINVAL, f"MMCONFIG flags {info.flags:#x}")
        raise XenError(ENODEV, "no MMCONFIG region")
    if cmd == P.PHYSDEVOP_pci_device_add:
        guest.read_struct(P.physdev_pci_device_add, arg)
        raise XenError(ENODEV, "no PCI device")
    if cmd == P.PHYSDEVOP_pci_device_remove:
        guest.read_struct(P.physdev_pci_device, arg)
        raise XenError(ENODEV, "no PCI device")
    guest.read_struct(P.physdev_dbgp_op, arg)
    return 0


def register(table: HypercallTable) -> None:
    table.register(HYPERVISOR_physdev_op, do_physdev_op, subop_describer(SUBOPS, 2))
