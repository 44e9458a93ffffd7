"""The hypercall page and hypercall dispatch.

Each 32-byte slot of the page is `mov $nr,%eax; out %eax,$HYPERCALL_PORT; ret`: a port-I/O
exit (vmcall hangs on some hosts, and port I/O is the cheapest exit everywhere). The stub
changes only rax, so every argument register reaches the VMM intact; the same bytes work in
64-bit and 32-bit code. Arguments follow Xen's ABI: rdi rsi rdx r10 r8 from 64-bit code,
ebx ecx edx esi edi from 32-bit (compat) code, chosen by the caller's CS.L.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from pyxen.abi import errno
from pyxen.abi.errno import XenError
from pyxen.abi.xen import HYPERCALL_NAMES, HYPERVISOR_iret

if TYPE_CHECKING:
    from pyxen.domain.vcpu import Vcpu

HYPERCALL_PORT = 0xE8
NR_HYPERCALL_SLOTS = 4096 // 32
STUB = bytes([0xB8, 0, 0, 0, 0, 0xE7, HYPERCALL_PORT, 0xC3])
UD2 = b"\x0f\x0b"

Handler = Callable[..., int]
log = logging.getLogger("pyxen.hypercall")


def hypercall_page() -> bytes:
    """The 4 KiB page written where the guest asks (via the Xen MSR)."""
    page = bytearray(b"\xcc" * 4096)  # int3 padding, like a real hypercall page
    for nr in range(NR_HYPERCALL_SLOTS):
        slot = nr * 32
        if nr == HYPERVISOR_iret:
            page[slot : slot + 2] = UD2  # iret is PV-only; an HVM guest must not use it
            continue
        stub = bytearray(STUB)
        stub[1:5] = nr.to_bytes(4, "little")
        page[slot : slot + len(stub)] = stub
    return bytes(page)


class HypercallTable:
    """Maps hypercall numbers to handlers; everything unknown is -ENOSYS."""

    def __init__(self) -> None:
        self.handlers: list[Handler | None] = [None] * NR_HYPERCALL_SLOTS
        self.describers: dict[int, Callable[[tuple[int, ...]], str]] = {}

    def register(self, nr: int, handler: Handler,
                 describe: Callable[[tuple[int, ...]], str] | None = None) -> None:
        self.handlers[nr] = handler
        if describe:
            self.describers[nr] = describe

    def call(self, vcpu: Vcpu, nr: int, args: tuple[int, int, int, int, int]) -> int:
        """Run hypercall `nr`; returns the (signed) result, -errno on failure."""
        handler = self.handlers[nr] if 0 <= nr < NR_HYPERCALL_SLOTS else None
        if handler is None:
            return -errno.ENOSYS
        try:
            return handler(vcpu, *args)
        except XenError as e:
            return -e.errno

    def describe(self, nr: int, args: tuple[int, ...]) -> str:
        name = HYPERCALL_NAMES.get(nr, f"hypercall_{nr}")
        if nr in self.describers:
            return f"{name}({self.describers[nr](args)})"
        return f"{name}({', '.join(hex(a) for a in args)})"


def subop_describer(names: dict[int, str], nargs: int) -> Callable[[tuple[int, ...]], str]:
    """A --trace formatter: the first argument as a sub-op name, then `nargs - 1` more."""

    def describe(args: tuple[int, ...]) -> str:
        rest = ", ".join(hex(a) for a in args[1:nargs])
        name = names.get(args[0], str(args[0]))
        return f"{name}, {rest}" if rest else name

    return describe


def format_result(result: int) -> str:
    if result < 0 and -result in errno.NAMES:
        return f"{result} ({errno.NAMES[-result]})"
    return hex(result) if result > 9 else str(result)
