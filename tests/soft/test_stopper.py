"""stopper.py: a stop requested from another thread lands exactly between two blocks.

The loop counts with `lock inc` and checks itself with `lock bts`/`lock btr` (a bit found
set before bts, or clear before btr, is an instruction that ran twice); a thread requests a
stop every few microseconds and each run restarts at the RIP the engine reports.
"""

from __future__ import annotations

import ctypes as C
import struct
import threading
import time

from unicorn import UC_ARCH_X86, UC_MODE_64, Uc
from unicorn import x86_const as X

from pyxen.soft.stopper import install_stop_hook

#   loop: lock bts [rdi], rcx ; jc bad1 ; lock btr [rdi], rcx ; jnc bad2
#   next: inc rcx ; and ecx, 31 ; lock inc qword [rdi+8] ; dec r8 ; jnz loop ; hlt
#   bad1: inc qword [rsi] ; jmp next      bad2: inc qword [rsi+8] ; jmp next
LOOP = bytes.fromhex("f0480fab0f7218f0480fb30f731648ffc183e11ff048ff470849ffc875e2f4"
                     "48ff06ebea48ff4608ebe4")
CODE, DATA, ROUNDS = 0x1000, 0x10000, 300_000


def test_stops_from_another_thread_never_repeat_an_instruction() -> None:
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(CODE, 0x1000)
    uc.mem_map(DATA, 0x1000)
    uc.mem_write(CODE, LOOP)
    uc.reg_write(X.UC_X86_REG_RDI, DATA)
    uc.reg_write(X.UC_X86_REG_RSI, DATA + 0x100)
    uc.reg_write(X.UC_X86_REG_R8, ROUNDS)
    flag = install_stop_hook(uc)
    hlt = CODE + LOOP.index(b"\xf4")
    done = threading.Event()

    def requester() -> None:
        while not done.is_set():
            flag.requested = 1
            time.sleep(0.00005)

    thread = threading.Thread(target=requester)
    thread.start()
    rip, runs = CODE, 0
    try:
        while rip != hlt:
            flag.requested = 0
            uc.emu_start(rip, hlt)
            rip = uc.reg_read(X.UC_X86_REG_RIP)
            runs += 1
    finally:
        done.set()
        thread.join()
    bts_twice, btr_twice = struct.unpack("<QQ", uc.mem_read(DATA + 0x100, 16))
    (count,) = struct.unpack("<Q", uc.mem_read(DATA + 8, 8))
    assert runs > 10  # it was stopped, many times
    assert (bts_twice, btr_twice, count) == (0, 0, ROUNDS)


#   cli ; mov ecx, 1000 ; l1: dec ecx ; jnz l1 ; sti ; nop ; mov eax, 1 ; l2: jmp l2
WINDOW = bytes.fromhex("fab9e8030000ffc975fcfb90b801000000ebfe")


def test_a_wanted_interrupt_window_stops_at_the_first_block_with_if_set() -> None:
    """The hook's other job: with `window` set it stops, as a kick, once IF is 1 (pyxen then
    injects), and never while IF is 0 -- without a Python hook, whose adding and removing
    flushed all translated code."""
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(CODE, 0x1000)
    uc.mem_write(CODE, WINDOW)
    flag = install_stop_hook(uc)
    flag.window = 1
    uc.emu_start(CODE, 0, timeout=5_000_000)  # bounded in case it never stops
    rip = uc.reg_read(X.UC_X86_REG_RIP)
    sti = CODE + WINDOW.index(b"\xfb")
    assert uc.reg_read(X.UC_X86_REG_ECX) == 0  # the loop with IF=0 ran to its end
    assert uc.reg_read(X.UC_X86_REG_EFLAGS) & 0x200
    assert sti < rip <= CODE + len(WINDOW) - 2  # just after sti, not in the endless loop
    assert flag.requested == 1


def test_no_window_no_stop() -> None:
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(CODE, 0x1000)
    uc.mem_write(CODE, WINDOW)
    flag = install_stop_hook(uc)
    uc.emu_start(CODE, 0, timeout=200_000)  # 0.2 s: it is in the endless loop by then
    assert uc.reg_read(X.UC_X86_REG_RIP) == CODE + len(WINDOW) - 2
    assert flag.requested == 0


#   cli ; mov ecx, 1000 ; l1: dec ecx ; jnz l1 ; mov byte [rdi], 0 ; sti ; nop ;
#   mov eax, 1 ; l2: jmp l2
WITHDRAW = bytes.fromhex("fab9e8030000ffc975fcc60700fb90b801000000ebfe")


def _run_window(code: bytes, level: C.c_uint8 | None, timeout_us: int) -> tuple[Uc, object]:
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(CODE, 0x1000)
    uc.mem_map(DATA, 0x1000)
    uc.mem_write(CODE, code)
    uc.reg_write(X.UC_X86_REG_RDI, DATA)
    flag = install_stop_hook(uc)
    flag.window = 1
    flag.level = None if level is None else C.addressof(level)
    uc.emu_start(CODE, 0, timeout=timeout_us)
    return uc, flag


def test_a_window_on_a_level_still_set_stops_once_if_is_set() -> None:
    """A level that stays set (evtchn_upcall_pending not yet cleared) stops as before."""
    level = C.c_uint8(1)
    uc, flag = _run_window(WINDOW, level, 5_000_000)
    sti = CODE + WINDOW.index(b"\xfb")
    assert sti < uc.reg_read(X.UC_X86_REG_RIP) <= CODE + len(WINDOW) - 2
    assert flag.requested == 1


def test_a_window_on_a_withdrawn_level_does_not_stop() -> None:
    """The guest cleared the level before setting IF (its handler consumed the upcall
    another way): no stop, the engine runs on into the endless loop."""
    level = C.c_uint8(0)
    uc, flag = _run_window(WINDOW, level, 200_000)
    assert uc.reg_read(X.UC_X86_REG_RIP) == CODE + len(WINDOW) - 2
    assert flag.requested == 0


def test_the_level_is_read_when_if_is_set_not_when_the_window_was_asked() -> None:
    """Set when the window was requested, cleared by the guest's own store (here a byte
    the stub reads through its host address, as it reads evtchn_upcall_pending in the
    guest's RAM) with IF still 0: no stop."""
    ram = (C.c_uint8 * 0x1000)()
    ram[0] = 1
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(CODE, 0x1000)
    uc.mem_write(CODE, WITHDRAW)
    uc.mem_map_ptr(DATA, 0x1000, 3, C.addressof(ram))
    uc.reg_write(X.UC_X86_REG_RDI, DATA)
    flag = install_stop_hook(uc)
    flag.window = 1
    flag.level = C.addressof(ram)
    uc.emu_start(CODE, 0, timeout=200_000)
    assert ram[0] == 0
    assert uc.reg_read(X.UC_X86_REG_RIP) == CODE + len(WITHDRAW) - 2
    assert flag.requested == 0
