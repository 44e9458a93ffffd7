"""HYPERVISOR_console_io: the guest's direct line to the hypervisor console.

As in a Xen debug build, any domain may write (Xen's output path for early and test kernels);
reading Xen's console input is for the privileged domain only, and an unknown sub-op is
refused by the same XSM check (-EPERM) before it can be -ENOSYS.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyxen.abi.errno import E2BIG, ENOSYS, EPERM, XenError
from pyxen.abi.xen import CONSOLEIO_read, CONSOLEIO_write, HYPERVISOR_console_io

from .hypercall import HypercallTable, subop_describer

if TYPE_CHECKING:
    from pyxen.domain.vcpu import Vcpu

CHUNK = 127  # Xen copies and prints at most this much at a time


def do_console_io(vcpu: Vcpu, cmd: int, count: int, buffer: int, *_: int) -> int:
    count &= 0xFFFF_FFFF
    if cmd != CONSOLEIO_write and not vcpu.domain.privileged:
        raise XenError(EPERM)
    if cmd == CONSOLEIO_write:
        guest = vcpu.guest()
        while count > 0:
            n = min(count, CHUNK)
            vcpu.domain.console_write(guest.read(buffer, n))  # EFAULT stops here, as in Xen
            buffer += n
            count -= n
        return 0
    if cmd == CONSOLEIO_read:
        if count >= 1 << 31:
            raise XenError(E2BIG)  # the result is a count or -errno: they must not overlap
        return 0  # no console input is queued for the hypervisor in pyxen
    raise XenError(ENOSYS)


def register(table: HypercallTable) -> None:
    names = {CONSOLEIO_write: "CONSOLEIO_write", CONSOLEIO_read: "CONSOLEIO_read"}
    table.register(HYPERVISOR_console_io, do_console_io, subop_describer(names, 3),
                   inline=frozenset([CONSOLEIO_write]))
