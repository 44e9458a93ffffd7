"""A stop request the engine honours exactly, at the start of its next translation block.

Unicorn's `emu_stop` called from another thread while the engine runs takes effect at the
engine's next memory access, with RIP left on an instruction whose stores may already have
been made (or on the first block of a chain of blocks that already ran): restarted there,
those instructions run twice. Measured with a bare Unicorn loop (about one stop in three
repeated a `lock inc`) and with the kit guest smp_atomic; for Linux that meant a reference
count or lock word changed twice, soft lockups and BUG()s.

A stop requested from inside a hook is exact: the engine has synchronised RIP for the hook
and checks for the request before the block's first instruction. So every engine carries
one block hook that costs a load and a branch per block: a few bytes of machine code (a
Python callback per block would cost more than the guest's own code), which reads a flag
and, when another thread has set it, tail-calls uc_emu_stop(uc). Its signature is
uc_cb_hookcode_t: (uc, address, size, user_data) in rdi, rsi, edx, rcx.
"""

from __future__ import annotations

import ctypes as C
import mmap

from unicorn import UC_HOOK_BLOCK, Uc, UcError
from unicorn.unicorn_py3.unicorn import uclib

# user_data -> StopFlag:  mov eax, [rcx]; test eax, eax; jnz 1f; ret; 1: jmp [rcx + 8]
_STUB = bytes.fromhex("8b01" "85c0" "7501" "c3" "ff6108")
_page: mmap.mmap | None = None


class StopFlag(C.Structure):
    """What the stub reads: the flag another thread sets, and where uc_emu_stop is."""

    _fields_ = [("requested", C.c_int32), ("_pad", C.c_int32), ("emu_stop", C.c_void_p)]


def _stub_address() -> int:
    global _page
    if _page is None:
        page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE
                         | mmap.PROT_EXEC)
        page.write(_STUB)
        _page = page
    return C.addressof(C.c_char.from_buffer(_page))


def install_stop_hook(uc: Uc) -> StopFlag:
    """Give `uc` the block hook; setting the returned flag's `requested` stops it."""
    flag = StopFlag(0, 0, C.cast(uclib.uc_emu_stop, C.c_void_p).value)
    handle = C.c_size_t()
    err = uclib.uc_hook_add(uc._uch, C.byref(handle), UC_HOOK_BLOCK, C.c_void_p(_stub_address()),
                            C.byref(flag), C.c_uint64(1), C.c_uint64(0))
    if err:
        raise UcError(err)
    return flag
