"""xen/hvm/hvm_op.h and xen/hvm/params.h: HVMOP_* and HVM_PARAM_*."""

from __future__ import annotations

import ctypes as C

HVMOP_set_param = 0
HVMOP_get_param = 1
HVMOP_set_pci_intx_level = 2
HVMOP_set_isa_irq_level = 3
HVMOP_set_pci_link_route = 4
HVMOP_flush_tlbs = 5
HVMOP_pagetable_dying = 9
HVMOP_get_time = 10
HVMOP_xentrace = 11
HVMOP_set_mem_access = 12
HVMOP_get_mem_access = 13
HVMOP_get_mem_type = 15
HVMOP_set_evtchn_upcall_vector = 23
HVMOP_guest_request_vm_event = 24
HVMOP_altp2m = 25

HVM_PARAM_CALLBACK_IRQ = 0
HVM_PARAM_STORE_PFN = 1
HVM_PARAM_STORE_EVTCHN = 2
HVM_PARAM_PAE_ENABLED = 4
HVM_PARAM_IOREQ_PFN = 5
HVM_PARAM_BUFIOREQ_PFN = 6
HVM_PARAM_VIRIDIAN = 9
HVM_PARAM_TIMER_MODE = 10
HVM_PARAM_HPET_ENABLED = 11
HVM_PARAM_IDENT_PT = 12
HVM_PARAM_DM_DOMAIN = 13
HVM_PARAM_ACPI_S_STATE = 14
HVM_PARAM_VM86_TSS = 15
HVM_PARAM_VPT_ALIGN = 16
HVM_PARAM_CONSOLE_PFN = 17
HVM_PARAM_CONSOLE_EVTCHN = 18
HVM_PARAM_ACPI_IOPORTS_LOCATION = 19
HVM_PARAM_NESTEDHVM = 24
HVM_PARAM_BUFIOREQ_EVTCHN = 26
HVM_PARAM_PAGING_RING_PFN = 27
HVM_PARAM_MONITOR_RING_PFN = 28
HVM_PARAM_SHARING_RING_PFN = 29
HVM_PARAM_TRIPLE_FAULT_REASON = 31
HVM_PARAM_IOREQ_SERVER_PFN = 32
HVM_PARAM_NR_IOREQ_SERVER_PAGES = 33
HVM_PARAM_VM_GENERATION_ID_ADDR = 34
HVM_PARAM_ALTP2M = 35
HVM_PARAM_X87_FIP_WIDTH = 36
HVM_PARAM_VM86_TSS_SIZED = 37
HVM_PARAM_MCA_CAP = 38
HVM_NR_PARAMS = 39

HVM_PARAM_CALLBACK_TYPE_GSI = 0
HVM_PARAM_CALLBACK_TYPE_PCI_INTX = 1
HVM_PARAM_CALLBACK_TYPE_VECTOR = 2


class xen_hvm_param(C.Structure):
    _fields_ = [("domid", C.c_uint16), ("index", C.c_uint32), ("value", C.c_uint64)]


class xen_hvm_evtchn_upcall_vector(C.Structure):
    _fields_ = [("vcpu", C.c_uint32), ("vector", C.c_uint8)]
