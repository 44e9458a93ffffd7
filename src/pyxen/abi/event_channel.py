"""xen/event_channel.h and the VIRQ numbers of xen/xen.h."""

from __future__ import annotations

import ctypes as C

EVTCHNOP_bind_interdomain = 0
EVTCHNOP_bind_virq = 1
EVTCHNOP_bind_pirq = 2
EVTCHNOP_close = 3
EVTCHNOP_send = 4
EVTCHNOP_status = 5
EVTCHNOP_alloc_unbound = 6
EVTCHNOP_bind_ipi = 7
EVTCHNOP_bind_vcpu = 8
EVTCHNOP_unmask = 9
EVTCHNOP_reset = 10
EVTCHNOP_init_control = 11
EVTCHNOP_expand_array = 12
EVTCHNOP_set_priority = 13
EVTCHNOP_reset_cont = 14

EVTCHNSTAT_closed = 0
EVTCHNSTAT_unbound = 1
EVTCHNSTAT_interdomain = 2
EVTCHNSTAT_pirq = 3
EVTCHNSTAT_virq = 4
EVTCHNSTAT_ipi = 5

VIRQ_TIMER = 0
VIRQ_DEBUG = 1
VIRQ_CONSOLE = 2
VIRQ_DOM_EXC = 3
VIRQ_TBUF = 4
VIRQ_DEBUGGER = 6
VIRQ_XENOPROF = 7
VIRQ_CON_RING = 8
VIRQ_PCPU_STATE = 9
VIRQ_MEM_EVENT = 10
VIRQ_ARGO = 11
VIRQ_ENOMEM = 12
VIRQ_XENPMU = 13
VIRQ_ARCH_0 = 16
NR_VIRQS = 24

evtchn_port_t = C.c_uint32
domid_t = C.c_uint16


class evtchn_alloc_unbound(C.Structure):
    _fields_ = [("dom", domid_t), ("remote_dom", domid_t), ("port", evtchn_port_t)]


class evtchn_bind_interdomain(C.Structure):
    _fields_ = [("remote_dom", domid_t), ("remote_port", evtchn_port_t),
                ("local_port", evtchn_port_t)]


class evtchn_bind_virq(C.Structure):
    _fields_ = [("virq", C.c_uint32), ("vcpu", C.c_uint32), ("port", evtchn_port_t)]


class evtchn_bind_pirq(C.Structure):
    _fields_ = [("pirq", C.c_uint32), ("flags", C.c_uint32), ("port", evtchn_port_t)]


class evtchn_bind_ipi(C.Structure):
    _fields_ = [("vcpu", C.c_uint32), ("port", evtchn_port_t)]


class evtchn_close(C.Structure):
    _fields_ = [("port", evtchn_port_t)]


class evtchn_send(C.Structure):
    _fields_ = [("port", evtchn_port_t)]


class evtchn_status_interdomain(C.Structure):
    _fields_ = [("dom", domid_t), ("port", evtchn_port_t)]


class evtchn_status_u(C.Union):
    _fields_ = [("unbound", domid_t), ("interdomain", evtchn_status_interdomain),
                ("pirq", C.c_uint32), ("virq", C.c_uint32)]


class evtchn_status(C.Structure):
    _fields_ = [("dom", domid_t), ("port", evtchn_port_t), ("status", C.c_uint32),
                ("vcpu", C.c_uint32), ("u", evtchn_status_u)]


class evtchn_bind_vcpu(C.Structure):
    _fields_ = [("port", evtchn_port_t), ("vcpu", C.c_uint32)]


class evtchn_unmask(C.Structure):
    _fields_ = [("port", evtchn_port_t)]


class evtchn_reset(C.Structure):
    _fields_ = [("dom", domid_t)]


class evtchn_init_control(C.Structure):
    _fields_ = [("control_gfn", C.c_uint64), ("offset", C.c_uint32), ("vcpu", C.c_uint32),
                ("link_bits", C.c_uint8), ("_pad", C.c_uint8 * 7)]


class evtchn_expand_array(C.Structure):
    _fields_ = [("array_gfn", C.c_uint64)]


class evtchn_set_priority(C.Structure):
    _fields_ = [("port", evtchn_port_t), ("priority", C.c_uint32)]


# The FIFO ABI: per-port 32-bit event words in guest pages, per-vCPU control blocks.
EVTCHN_2L_NR_CHANNELS = 64 * 64
EVTCHN_FIFO_PRIORITY_MAX = 0
EVTCHN_FIFO_PRIORITY_DEFAULT = 7
EVTCHN_FIFO_PRIORITY_MIN = 15
EVTCHN_FIFO_MAX_QUEUES = EVTCHN_FIFO_PRIORITY_MIN + 1
EVTCHN_FIFO_PENDING = 31
EVTCHN_FIFO_MASKED = 30
EVTCHN_FIFO_LINKED = 29
EVTCHN_FIFO_BUSY = 28
EVTCHN_FIFO_LINK_BITS = 17
EVTCHN_FIFO_LINK_MASK = (1 << EVTCHN_FIFO_LINK_BITS) - 1
EVTCHN_FIFO_NR_CHANNELS = 1 << EVTCHN_FIFO_LINK_BITS
event_word_t = C.c_uint32


class evtchn_fifo_control_block(C.Structure):
    _fields_ = [("ready", C.c_uint32), ("_rsvd", C.c_uint32),
                ("head", C.c_uint32 * EVTCHN_FIFO_MAX_QUEUES)]
