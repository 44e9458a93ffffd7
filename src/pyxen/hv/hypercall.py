"""The hypercall page and hypercall dispatch.

Each 32-byte slot of the page is a port-I/O exit (vmcall hangs on some hosts, and port I/O
is the cheapest exit everywhere):

    mov %cs,%eax; test $3,%al; jnz 1f     ; CPL > 0?
    mov $nr,%eax; out %eax,$HYPERCALL_PORT; ret
 1: mov $-EPERM,%rax; ret

The CPL test gives ring-3 callers Xen's answer, -EPERM: with port I/O as the transport, an
`out` at CPL 3 would otherwise fault inside the guest (IOPL) instead of reaching the VMM.
The stub changes only rax (and flags), so every argument register reaches the VMM intact;
the same bytes work in 64-bit and 32-bit code (in 32-bit code the REX byte decodes as
`dec %eax`, overwritten at once). Arguments follow Xen's ABI: rdi rsi rdx r10 r8 from
64-bit code, ebx ecx edx esi edi from 32-bit (compat) code, chosen by the caller's CS.L.
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
STUB = bytes([
    0x8C, 0xC8,                                # mov %cs,%eax
    0xA8, 0x03,                                # test $3,%al
    0x75, 0x08,                                # jnz +8 (to the -EPERM return)
    0xB8, 0, 0, 0, 0,                          # mov $nr,%eax
    0xE7, HYPERCALL_PORT,                      # out %eax,$HYPERCALL_PORT
    0xC3,                                      # ret
    0x48, 0xC7, 0xC0, 0xFF, 0xFF, 0xFF, 0xFF,  # mov $-1 (-EPERM),%rax
    0xC3,                                      # ret
])
STUB_NR_OFFSET = 7
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
        stub[STUB_NR_OFFSET : STUB_NR_OFFSET + 4] = nr.to_bytes(4, "little")
        page[slot : slot + len(stub)] = stub
    return bytes(page)


class HypercallTable:
    """Maps hypercall numbers to handlers; everything unknown is -ENOSYS."""

    def __init__(self) -> None:
        self.handlers: list[Handler | None] = [None] * NR_HYPERCALL_SLOTS
        self.describers: dict[int, Callable[[tuple[int, ...]], str]] = {}
        self.inline: dict[int, frozenset[int] | None] = {}
        # (nr, first argument) -> result, for calls whose result never changes
        self.always: dict[tuple[int, int], int] = {}

    def register(self, nr: int, handler: Handler,
                 describe: Callable[[tuple[int, ...]], str] | None = None,
                 inline: frozenset[int] | bool = False) -> None:
        """`inline`: the sub-ops (first argument; True: all) that may run inside a vCPU
        backend's execution engine, without leaving it: they complete at once, never block
        or sleep, never change the memory layout or take the lock that guards it
        (Domain.memory_lock: a layout change holds it while it waits for every vCPU to leave
        guest code), never change the caller's registers beyond rax, and never use a
        continuation. Everything else is dispatched after a normal exit."""
        self.handlers[nr] = handler
        if describe:
            self.describers[nr] = describe
        if inline:
            self.inline[nr] = None if inline is True else frozenset(inline)

    def answer_always(self, nr: int, subop: int, result: int) -> None:
        """Declare that `nr` with first argument `subop` returns `result` for every domain
        and vCPU, whatever its other arguments and the domain's state: a vCPU backend may
        then answer it natively, without dispatching (the software CPU's C hook, see
        pyxen.soft.native). The handler must return the same; `result` >= 0, since the
        caller's width does not change it then."""
        if not 0 <= result < 1 << 31:
            raise ValueError(f"an answer_always result must be a non-negative int32: {result}")
        self.always[(nr, subop)] = result

    def may_run_inline(self, nr: int, args: tuple[int, ...]) -> bool:
        if nr not in self.inline:
            return False
        subops = self.inline[nr]
        return subops is None or args[0] in subops

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
