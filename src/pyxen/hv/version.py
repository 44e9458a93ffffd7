"""HYPERVISOR_xen_version: version, build and feature queries (xen/common/kernel.c).

Xen's dummy XSM policy lets every domain use the informational sub-ops; for an unprivileged
domain XENVER_commandline answers the string "<denied>" (so old guests keep working) and
XENVER_build_id fails with -EPERM.
"""

from __future__ import annotations

import ctypes as C
import hashlib
from typing import TYPE_CHECKING

from pyxen import __version__
from pyxen.abi import version as V
from pyxen.abi.errno import EINVAL, ENOBUFS, ENOSYS, EPERM, XenError
from pyxen.abi.xen import XEN_PAGE_SIZE, HYPERVISOR_xen_version
from pyxen.x86.cpuid import XEN_MAJOR, XEN_MINOR

from .hypercall import HypercallTable, subop_describer

if TYPE_CHECKING:
    from pyxen.domain.vcpu import Vcpu

XEN_VERSION = (XEN_MAJOR << 16) | XEN_MINOR
HYPERVISOR_VIRT_START = 0xFFFF_8000_0000_0000
EXTRAVERSION = ".0-pyxen"
COMPILER = "CPython"
COMPILE_BY = "pyxen"
COMPILE_DOMAIN = "pyxen.invalid"
COMPILE_DATE = "pyxen " + __version__
CHANGESET = "pyxen " + __version__
CAPABILITIES = "xen-3.0-x86_64 hvm-3.0-x86_32 hvm-3.0-x86_32p hvm-3.0-x86_64"
DENIED = "<denied>"
XEN_COMMANDLINE = ""  # pyxen has no hypervisor command line of its own
BUILD_ID = hashlib.sha1(f"pyxen-{__version__}".encode()).digest()

# Sub-ops a domU may use (xsm/dummy.h): the rest are "denied".
ALWAYS_ALLOWED = {
    V.XENVER_version, V.XENVER_platform_parameters, V.XENVER_get_features,
    V.XENVER_extraversion, V.XENVER_compile_info, V.XENVER_capabilities,
    V.XENVER_changeset, V.XENVER_pagesize, V.XENVER_guest_handle,
}

SUBOPS = {v: k for k, v in vars(V).items() if k.startswith("XENVER_")}


def _fixed_string(text: str, size: int) -> bytes:
    """A NUL-padded char[size], always NUL-terminated (Xen's safe_strcpy)."""
    raw = text.encode()[: size - 1]
    return raw + bytes(size - len(raw))


def features(vcpu: Vcpu) -> int:
    d = vcpu.domain
    bits = (1 << V.XENFEAT_memory_op_vnode_supported
            | 1 << V.XENFEAT_writable_page_tables
            | 1 << V.XENFEAT_auto_translated_physmap
            | 1 << V.XENFEAT_hvm_safe_pvclock
            | 1 << V.XENFEAT_hvm_callback_vector
            | 1 << V.XENFEAT_not_direct_mapped)
    if d.privileged:
        bits |= 1 << V.XENFEAT_dom0
    return bits


def do_xen_version(vcpu: Vcpu, cmd: int, arg: int, *_: int) -> int:
    if cmd == V.XENVER_version:  # the null hypercall: keep it first and allocation-free
        return XEN_VERSION
    deny = cmd not in ALWAYS_ALLOWED and not vcpu.domain.privileged
    guest = vcpu.guest()

    def put(data: bytes) -> int:
        guest.write(arg, data)
        return 0

    if cmd == V.XENVER_extraversion:
        return put(_fixed_string(DENIED if deny else EXTRAVERSION, V.XEN_EXTRAVERSION_LEN))
    if cmd == V.XENVER_compile_info:
        info = V.xen_compile_info()
        for field, value in (("compiler", COMPILER), ("compile_by", COMPILE_BY),
                             ("compile_domain", COMPILE_DOMAIN), ("compile_date", COMPILE_DATE)):
            size = getattr(V.xen_compile_info, field).size
            setattr(info, field, _fixed_string(DENIED if deny else value, size))
        return put(bytes(info))
    if cmd == V.XENVER_capabilities:
        return put(_fixed_string("" if deny else CAPABILITIES, V.XEN_CAPABILITIES_INFO_LEN))
    if cmd == V.XENVER_changeset:
        return put(_fixed_string(DENIED if deny else CHANGESET, V.XEN_CHANGESET_INFO_LEN))
    if cmd == V.XENVER_platform_parameters:
        # Xen 4.17 still reports its own virtual start for 64-bit callers (meaningless to an
        # HVM guest); a 32-bit HVM caller has no compat area, so 0.
        if vcpu.compat:
            return put(bytes(4))
        return put(bytes(V.xen_platform_parameters(virt_start=HYPERVISOR_VIRT_START)))
    if cmd == V.XENVER_get_features:
        fi = guest.read_struct(V.xen_feature_info, arg)
        if fi.submap_idx != 0:
            raise XenError(EINVAL, f"feature submap {fi.submap_idx}")
        fi.submap = features(vcpu)
        return put(bytes(fi))
    if cmd == V.XENVER_pagesize:
        return 0 if deny else (-EINVAL if arg else XEN_PAGE_SIZE)
    if cmd == V.XENVER_guest_handle:
        return put(bytes(V.XEN_DOMAIN_HANDLE_LEN) if deny else vcpu.domain.handle[:16])
    if cmd == V.XENVER_commandline:
        if deny:  # only the denial string and its NUL are written
            return put(DENIED.encode() + b"\0")
        return put(_fixed_string(XEN_COMMANDLINE, V.XEN_COMMANDLINE_LEN))
    if cmd == V.XENVER_build_id:
        if deny:
            raise XenError(EPERM)
        if not arg:
            return len(BUILD_ID)
        length = guest.read_u32(arg)
        if length == 0:
            raise XenError(EINVAL)
        if len(BUILD_ID) > length:
            raise XenError(ENOBUFS)
        guest.write(arg + C.sizeof(V.xen_build_id), BUILD_ID)
        return len(BUILD_ID)
    raise XenError(ENOSYS)


def register(table: HypercallTable) -> None:
    table.register(HYPERVISOR_xen_version, do_xen_version, subop_describer(SUBOPS, 2),
                   inline=True)
    table.answer_always(HYPERVISOR_xen_version, V.XENVER_version, XEN_VERSION)

