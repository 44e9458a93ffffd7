"""The ioctl primitive for KVM file descriptors.

Uses libc directly through ctypes (which releases the GIL for the call, so vCPU threads run in
parallel) and reports EINTR as a value instead of retrying: an interrupted KVM_RUN is how a
vCPU is kicked out of the guest.
"""

from __future__ import annotations

import ctypes as C
import ctypes.util
import os

_libc = C.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_ioctl = _libc.ioctl
_ioctl.argtypes = [C.c_int, C.c_ulong, C.c_void_p]
_ioctl.restype = C.c_int


class KvmError(OSError):
    """A KVM ioctl failed."""


def ioctl(fd: int, request: int, arg: int | C.Structure | C.Array | None = None) -> int:
    """ioctl(fd, request, arg) returning the result; raises KvmError on failure."""
    result = _raw(fd, request, arg)
    if result < 0:
        err = C.get_errno()
        raise KvmError(err, f"KVM ioctl {request:#x} failed: {os.strerror(err)}")
    return result


def ioctl_eintr(fd: int, request: int) -> int:
    """Like ioctl with no argument, but returns -EINTR instead of raising when interrupted."""
    result = _ioctl(fd, request, None)
    if result < 0:
        err = C.get_errno()
        if err == 4:  # EINTR
            return -4
        raise KvmError(err, f"KVM ioctl {request:#x} failed: {os.strerror(err)}")
    return result


def _raw(fd: int, request: int, arg: int | C.Structure | C.Array | None) -> int:
    if arg is None or isinstance(arg, int):
        return _ioctl(fd, request, arg)
    return _ioctl(fd, request, C.addressof(arg))
