"""Xen public header io/netif.h: the PV network device protocol.

Two rings per queue: on TX the front end posts frames (one request per slot, chained with
NETTXF_more_data, extra-info slots after the first when NETTXF_extra_info is set) and the
back end answers each slot; on RX the front end posts empty granted pages and the back end
copies each frame into one (rx by grant copy) and answers with its length."""

from __future__ import annotations

import ctypes as C

from pyxen.abi.ring import RING_SIZE

NETTXF_csum_blank = 1 << 0
NETTXF_data_validated = 1 << 1
NETTXF_more_data = 1 << 2
NETTXF_extra_info = 1 << 3

NETRXF_data_validated = 1 << 0
NETRXF_csum_blank = 1 << 1
NETRXF_more_data = 1 << 2
NETRXF_extra_info = 1 << 3
NETRXF_gso_prefix = 1 << 4

XEN_NETIF_EXTRA_TYPE_NONE = 0
XEN_NETIF_EXTRA_TYPE_GSO = 1
XEN_NETIF_EXTRA_TYPE_MCAST_ADD = 2
XEN_NETIF_EXTRA_TYPE_MCAST_DEL = 3
XEN_NETIF_EXTRA_TYPE_HASH = 4
XEN_NETIF_EXTRA_TYPE_MAX = 5
XEN_NETIF_EXTRA_FLAG_MORE = 1 << 0

XEN_NETIF_GSO_TYPE_NONE = 0
XEN_NETIF_GSO_TYPE_TCPV4 = 1
XEN_NETIF_GSO_TYPE_TCPV6 = 2

XEN_NETIF_MAX_TX_SIZE = 0xFFFF
XEN_NETBK_LEGACY_SLOTS_MAX = 18  # the most slots a TX frame may take (XEN_NETIF_NR_SLOTS_MIN)

NETIF_RSP_DROPPED = -2
NETIF_RSP_ERROR = -1
NETIF_RSP_OKAY = 0
NETIF_RSP_NULL = 1  # the answer to an extra-info slot


class netif_tx_request(C.Structure):
    _fields_ = [
        ("gref", C.c_uint32),
        ("offset", C.c_uint16),
        ("flags", C.c_uint16),
        ("id", C.c_uint16),
        ("size", C.c_uint16),
    ]


class netif_extra_info_gso(C.Structure):
    _fields_ = [
        ("size", C.c_uint16),
        ("type", C.c_uint8),
        ("pad", C.c_uint8),
        ("features", C.c_uint16),
    ]


class netif_extra_info_u(C.Union):
    _fields_ = [
        ("gso", netif_extra_info_gso),
        ("pad", C.c_uint16 * 3),
    ]


class netif_extra_info(C.Structure):
    _fields_ = [
        ("type", C.c_uint8),
        ("flags", C.c_uint8),
        ("u", netif_extra_info_u),
    ]


class netif_tx_response(C.Structure):
    _fields_ = [
        ("id", C.c_uint16),
        ("status", C.c_int16),
    ]


class netif_rx_request(C.Structure):
    _fields_ = [
        ("id", C.c_uint16),
        ("pad", C.c_uint16),
        ("gref", C.c_uint32),
    ]


class netif_rx_response(C.Structure):
    _fields_ = [
        ("id", C.c_uint16),
        ("offset", C.c_uint16),
        ("flags", C.c_uint16),
        ("status", C.c_int16),
    ]


TX_SLOT_SIZE = max(C.sizeof(netif_tx_request), C.sizeof(netif_tx_response))
RX_SLOT_SIZE = max(C.sizeof(netif_rx_request), C.sizeof(netif_rx_response))
NET_TX_RING_SIZE = RING_SIZE(4096, TX_SLOT_SIZE)
NET_RX_RING_SIZE = RING_SIZE(4096, RX_SLOT_SIZE)
