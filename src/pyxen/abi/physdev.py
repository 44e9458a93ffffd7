"""xen/physdev.h: PHYSDEVOP_* numbers and the PCI argument structs pyxen reads."""

from __future__ import annotations

import ctypes as C

PHYSDEVOP_irq_status_query = 5
PHYSDEVOP_set_iopl = 6
PHYSDEVOP_set_iobitmap = 7
PHYSDEVOP_apic_read = 8
PHYSDEVOP_apic_write = 9
PHYSDEVOP_alloc_irq_vector = 10
PHYSDEVOP_free_irq_vector = 11
PHYSDEVOP_eoi = 12
PHYSDEVOP_map_pirq = 13
PHYSDEVOP_unmap_pirq = 14
PHYSDEVOP_manage_pci_add = 15
PHYSDEVOP_manage_pci_remove = 16
PHYSDEVOP_pirq_eoi_gmfn_v1 = 17
PHYSDEVOP_restore_msi = 19
PHYSDEVOP_manage_pci_add_ext = 20
PHYSDEVOP_setup_gsi = 21
PHYSDEVOP_get_free_pirq = 23
PHYSDEVOP_pci_mmcfg_reserved = 24
PHYSDEVOP_pci_device_add = 25
PHYSDEVOP_pci_device_remove = 26
PHYSDEVOP_restore_msi_ext = 27
PHYSDEVOP_pirq_eoi_gmfn_v2 = 28
PHYSDEVOP_dbgp_op = 29
PHYSDEVOP_prepare_msix = 30
PHYSDEVOP_release_msix = 31

XEN_PCI_MMCFG_RESERVED = 1


class physdev_pci_mmcfg_reserved(C.Structure):
    _fields_ = [("address", C.c_uint64), ("segment", C.c_uint16), ("start_bus", C.c_uint8),
                ("end_bus", C.c_uint8), ("flags", C.c_uint32)]


class physdev_pci_device_add_physfn(C.Structure):
    _fields_ = [("bus", C.c_uint8), ("devfn", C.c_uint8)]


class physdev_pci_device_add(C.Structure):
    """Fixed part only (a flexible uint32_t optarr[] follows)."""

    _fields_ = [("seg", C.c_uint16), ("bus", C.c_uint8), ("devfn", C.c_uint8),
                ("flags", C.c_uint32), ("physfn", physdev_pci_device_add_physfn)]


class physdev_pci_device(C.Structure):
    _fields_ = [("seg", C.c_uint16), ("bus", C.c_uint8), ("devfn", C.c_uint8)]


class physdev_dbgp_op_u(C.Union):
    _fields_ = [("pci", physdev_pci_device)]


class physdev_dbgp_op(C.Structure):
    _fields_ = [("op", C.c_uint8), ("bus", C.c_uint8), ("u", physdev_dbgp_op_u)]
