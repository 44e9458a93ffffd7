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

The same hook waits for an interrupt window: while `window` is set (pyxen has an interrupt
to inject and the guest runs with IF=0), it reads EFLAGS through uc_reg_read at each block
and stops, as a kick, once IF is set. A Python block hook did this before, and adding or
removing it flushed every translated block (a hook is compiled into the code): with Linux,
about 70 flushes a second, each followed by translating the kernel's hot code again.
"""

from __future__ import annotations

import ctypes as C
import mmap

from unicorn import UC_HOOK_BLOCK, Uc, UcError
from unicorn.unicorn_py3.unicorn import uclib
from unicorn.x86_const import UC_X86_REG_EFLAGS

# user_data -> StopFlag (Intel syntax; assembled with GNU as, then checked byte for byte):
#       mov eax, [rcx]; test eax, eax; jnz stop          requested: stop at once
#       mov eax, [rcx+4]; test eax, eax; jnz check; ret  window: look at IF
# check: mov rax, [rcx+32]; test rax, rax; jz flags      a level to watch too?
#       cmp byte [rax], 0; jnz flags; ret                withdrawn: no stop for IF
# flags: push rbx; push rdi; mov rbx, rcx; sub rsp, 24   (the call needs rsp 16-aligned)
#       mov esi, [rbx+24]; mov rdx, rsp; mov qword [rdx], 0
#       call [rbx+16]                                    uc_reg_read(uc, EFLAGS, &value)
#       mov rax, [rsp]; add rsp, 24; pop rdi; mov rcx, rbx; pop rbx
#       test eax, 0x200; jnz hit; ret
# hit:  mov dword [rcx], 1                               reported as a kick
# stop: jmp [rcx+8]                                      uc_emu_stop(uc)
_STUB = bytes.fromhex(
    "8b0185c0754b8b410485c07501c3488b41204885c074068038007501c353574889cb4883ec188b"
    "73184889e248c70200000000ff5310488b04244883c4185f4889d95ba9000200007501c3c701"
    "01000000ff6108")
_page: mmap.mmap | None = None


class StopFlag(C.Structure):
    """What the stub reads: the flag another thread sets, whether to stop once IF is set,
    the two Unicorn entry points it calls, and `level`: the host address of a byte that
    must also be non-zero for the window to stop (0: none). A level-triggered interrupt
    the guest can withdraw with IF clear (Xen's callback vector follows
    evtchn_upcall_pending, which the guest's handler clears) then costs no stop once it
    is gone."""

    _fields_ = [("requested", C.c_int32), ("window", C.c_int32), ("emu_stop", C.c_void_p),
                ("reg_read", C.c_void_p), ("regid", C.c_int32), ("level", C.c_void_p)]


def _stub_address() -> int:
    global _page
    if _page is None:
        page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE
                         | mmap.PROT_EXEC)
        page.write(_STUB)
        _page = page
    return C.addressof(C.c_char.from_buffer(_page))


def install_stop_hook(uc: Uc) -> StopFlag:
    """Give `uc` the block hook; setting the returned flag's `requested` stops it, setting
    its `window` stops it at the first block that starts with IF set (while the byte at
    `level`, if any, is non-zero)."""
    flag = StopFlag(0, 0, C.cast(uclib.uc_emu_stop, C.c_void_p).value,
                    C.cast(uclib.uc_reg_read, C.c_void_p).value, UC_X86_REG_EFLAGS, None)
    handle = C.c_size_t()
    err = uclib.uc_hook_add(uc._uch, C.byref(handle), UC_HOOK_BLOCK, C.c_void_p(_stub_address()),
                            C.byref(flag), C.c_uint64(1), C.c_uint64(0))
    if err:
        raise UcError(err)
    return flag
