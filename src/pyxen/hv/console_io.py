"""HYPERVISOR_console_io: the guest's direct line to the hypervisor console.

As in a Xen debug build, any domain may write (Xen's output path for early and test kernels);
reading Xen's console input is for the privileged domain only, and an unknown sub-op is
refused by the same XSM check (-EPERM) before it can be -ENOSYS. What an unprivileged
domain writes loses its non-printable bytes first, as Xen's guest_console_write strips them
(isprint or tab; a newline ends the line): the console is the host's terminal, and a guest
must not send it escape sequences.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyxen.abi.errno import E2BIG, ENOSYS, EPERM, XenError
from pyxen.abi.xen import CONSOLEIO_read, CONSOLEIO_write, HYPERVISOR_console_io

from .hypercall import HypercallTable, subop_describer

if TYPE_CHECKING:
    from pyxen.domain.vcpu import Vcpu

CHUNK = 127  # Xen copies and prints at most this much at a time
# What Xen strips: all but its isprint (its ctype is ISO 8859-1: 0x20-0x7e, 0xa0-0xff), tab
# and the newline.
_STRIP = bytes(c for c in range(256) if c < 0x20 and c not in (0x09, 0x0A) or 0x7F <= c < 0xA0)


def printable(data: bytes) -> bytes:
    """`data` as Xen prints a domU's console_io write: without its non-printable bytes."""
    return data.translate(None, _STRIP)


def do_console_io(vcpu: Vcpu, cmd: int, count: int, buffer: int, *_: int) -> int:
    count &= 0xFFFF_FFFF
    if cmd != CONSOLEIO_write and not vcpu.domain.privileged:
        raise XenError(EPERM)
    if cmd == CONSOLEIO_write:
        guest = vcpu.guest()
        raw = vcpu.domain.privileged  # the hardware domain's output is interactive: as it is
        while count > 0:
            n = min(count, CHUNK)
            data = guest.read(buffer, n)  # EFAULT stops here, as in Xen
            vcpu.domain.console_write(data if raw else printable(data))
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
