"""Xen public header io/xs_wire.h: the XenStore wire protocol.

Names and values mirror Xen's header (Xen 4.17, Debian libxen-dev) so that a grep for
`XS_TRANSACTION_START` finds both sides. The four feature/quota operations (23..26) were
added to the protocol after 4.17; they are defined here with their later Xen values.
"""

from __future__ import annotations

import errno as _errno
import struct
from enum import IntEnum


class XsdSockmsgType(IntEnum):
    """enum xsd_sockmsg_type."""

    XS_CONTROL = 0
    XS_DIRECTORY = 1
    XS_READ = 2
    XS_GET_PERMS = 3
    XS_WATCH = 4
    XS_UNWATCH = 5
    XS_TRANSACTION_START = 6
    XS_TRANSACTION_END = 7
    XS_INTRODUCE = 8
    XS_RELEASE = 9
    XS_GET_DOMAIN_PATH = 10
    XS_WRITE = 11
    XS_MKDIR = 12
    XS_RM = 13
    XS_SET_PERMS = 14
    XS_WATCH_EVENT = 15
    XS_ERROR = 16
    XS_IS_DOMAIN_INTRODUCED = 17
    XS_RESUME = 18
    XS_SET_TARGET = 19
    # 20 was XS_RESTRICT, removed from Xen: the value stays invalid.
    XS_RESET_WATCHES = 21
    XS_DIRECTORY_PART = 22
    # Added after Xen 4.17 (optional operations of the protocol).
    XS_GET_FEATURE = 23
    XS_SET_FEATURE = 24
    XS_GET_QUOTA = 25
    XS_SET_QUOTA = 26
    XS_INVALID = 0xFFFF


# Module-level names, as in C, so one grep finds every use.
XS_CONTROL = XsdSockmsgType.XS_CONTROL
XS_DIRECTORY = XsdSockmsgType.XS_DIRECTORY
XS_READ = XsdSockmsgType.XS_READ
XS_GET_PERMS = XsdSockmsgType.XS_GET_PERMS
XS_WATCH = XsdSockmsgType.XS_WATCH
XS_UNWATCH = XsdSockmsgType.XS_UNWATCH
XS_TRANSACTION_START = XsdSockmsgType.XS_TRANSACTION_START
XS_TRANSACTION_END = XsdSockmsgType.XS_TRANSACTION_END
XS_INTRODUCE = XsdSockmsgType.XS_INTRODUCE
XS_RELEASE = XsdSockmsgType.XS_RELEASE
XS_GET_DOMAIN_PATH = XsdSockmsgType.XS_GET_DOMAIN_PATH
XS_WRITE = XsdSockmsgType.XS_WRITE
XS_MKDIR = XsdSockmsgType.XS_MKDIR
XS_RM = XsdSockmsgType.XS_RM
XS_SET_PERMS = XsdSockmsgType.XS_SET_PERMS
XS_WATCH_EVENT = XsdSockmsgType.XS_WATCH_EVENT
XS_ERROR = XsdSockmsgType.XS_ERROR
XS_IS_DOMAIN_INTRODUCED = XsdSockmsgType.XS_IS_DOMAIN_INTRODUCED
XS_RESUME = XsdSockmsgType.XS_RESUME
XS_SET_TARGET = XsdSockmsgType.XS_SET_TARGET
XS_RESET_WATCHES = XsdSockmsgType.XS_RESET_WATCHES
XS_DIRECTORY_PART = XsdSockmsgType.XS_DIRECTORY_PART
XS_GET_FEATURE = XsdSockmsgType.XS_GET_FEATURE
XS_SET_FEATURE = XsdSockmsgType.XS_SET_FEATURE
XS_GET_QUOTA = XsdSockmsgType.XS_GET_QUOTA
XS_SET_QUOTA = XsdSockmsgType.XS_SET_QUOTA
XS_INVALID = XsdSockmsgType.XS_INVALID

XS_DEBUG = XsdSockmsgType.XS_CONTROL
# XS_TYPE_COUNT as in the 4.17 header; pyxen also serves the four later types.
XS_TYPE_COUNT_4_17 = 23
XS_TYPE_COUNT = 27

XS_WRITE_NONE = "NONE"
XS_WRITE_CREATE = "CREATE"
XS_WRITE_CREATE_EXCL = "CREATE|EXCL"

# struct xsd_errors xsd_errors[]: errors travel as their names, in this order.
XSD_ERRORS: tuple[tuple[int, str], ...] = tuple(
    (getattr(_errno, name), name)
    for name in (
        "EINVAL",
        "EACCES",
        "EEXIST",
        "EISDIR",
        "ENOENT",
        "ENOMEM",
        "ENOSPC",
        "EIO",
        "ENOTEMPTY",
        "ENOSYS",
        "EROFS",
        "EBUSY",
        "EAGAIN",
        "EISCONN",
        "E2BIG",
        "EPERM",
    )
)
XSD_ERROR_NAMES: frozenset[str] = frozenset(name for _, name in XSD_ERRORS)

# struct xsd_sockmsg { uint32_t type, req_id, tx_id, len; } in host byte order.
XSD_SOCKMSG = struct.Struct("=IIII")
XSD_SOCKMSG_SIZE = XSD_SOCKMSG.size  # 16


class XsWatchType(IntEnum):
    """enum xs_watch_type: field order of a WATCH_EVENT payload."""

    XS_WATCH_PATH = 0
    XS_WATCH_TOKEN = 1


XS_WATCH_PATH = XsWatchType.XS_WATCH_PATH
XS_WATCH_TOKEN = XsWatchType.XS_WATCH_TOKEN


XENSTORE_RING_SIZE = 1024


def MASK_XENSTORE_IDX(idx: int) -> int:  # noqa: N802 - Xen's macro name
    return idx & (XENSTORE_RING_SIZE - 1)


# struct xenstore_domain_interface (the guest's store page), offsets in bytes.
XENSTORE_DOMAIN_INTERFACE = struct.Struct(f"={XENSTORE_RING_SIZE}s{XENSTORE_RING_SIZE}sIIIIIII")
XSDI_REQ = 0
XSDI_RSP = XENSTORE_RING_SIZE
XSDI_REQ_CONS = 2 * XENSTORE_RING_SIZE
XSDI_REQ_PROD = XSDI_REQ_CONS + 4
XSDI_RSP_CONS = XSDI_REQ_CONS + 8
XSDI_RSP_PROD = XSDI_REQ_CONS + 12
XSDI_SERVER_FEATURES = XSDI_REQ_CONS + 16
XSDI_CONNECTION = XSDI_REQ_CONS + 20
XSDI_ERROR = XSDI_REQ_CONS + 24

XENSTORE_PAYLOAD_MAX = 4096
XENSTORE_ABS_PATH_MAX = 3072
XENSTORE_REL_PATH_MAX = 2048

XENSTORE_SERVER_FEATURE_RECONNECTION = 1
XENSTORE_SERVER_FEATURE_ERROR = 2

XENSTORE_CONNECTED = 0
XENSTORE_RECONNECT = 1

XENSTORE_ERROR_NONE = 0
XENSTORE_ERROR_COMM = 1
XENSTORE_ERROR_RINGIDX = 2
XENSTORE_ERROR_PROTO = 3
