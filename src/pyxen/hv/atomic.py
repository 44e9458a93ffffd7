"""Atomic bit operations on guest memory.

pyxen sets event bits (evtchn_pending, evtchn_pending_sel, evtchn_upcall_pending) while the
guest's vCPUs clear them concurrently with locked instructions. A Python read-modify-write
would lose a concurrent guest update, so every such change goes through a real atomic
instruction: libatomic's __atomic_* entry points (lock-prefixed on x86), which are atomic
with respect to the guest's own locked operations on the same shared page.
"""

from __future__ import annotations

import ctypes as C
import ctypes.util

# PyDLL: the calls keep the GIL. Each is one locked instruction; dropping the GIL around it
# (CDLL) lets a waiting thread take the GIL for a whole switch interval, which made grant
# copies about 10x slower.
_lib = C.PyDLL(ctypes.util.find_library("atomic") or "libatomic.so.1")
_SEQ_CST = 5


def _bind(name: str, restype: type | None, *argtypes: type) -> C._CFuncPtr:  # type: ignore[name-defined]
    """One libatomic entry point with its C signature."""
    fn = getattr(_lib, name)
    fn.argtypes, fn.restype = list(argtypes), restype
    return fn


def _rmw(op: str, size: int, ctype: type) -> C._CFuncPtr:  # type: ignore[name-defined]
    """__atomic_<op>_<size>(ptr, value, order) -> old value."""
    return _bind(f"__atomic_{op}_{size}", ctype, C.c_void_p, ctype, C.c_int)


_fetch_or_8 = _rmw("fetch_or", 8, C.c_uint64)
_fetch_and_8 = _rmw("fetch_and", 8, C.c_uint64)
_exchange_1 = _rmw("exchange", 1, C.c_uint8)
_exchange_4 = _rmw("exchange", 4, C.c_uint32)
_exchange_8 = _rmw("exchange", 8, C.c_uint64)
_fetch_or_4 = _rmw("fetch_or", 4, C.c_uint32)
_fetch_and_4 = _rmw("fetch_and", 4, C.c_uint32)
_fetch_or_2 = _rmw("fetch_or", 2, C.c_uint16)
_fetch_and_2 = _rmw("fetch_and", 2, C.c_uint16)
_thread_fence = _bind("atomic_thread_fence", None, C.c_int)
_load_4 = _bind("__atomic_load_4", C.c_uint32, C.c_void_p, C.c_int)
_store_4 = _bind("__atomic_store_4", None, C.c_void_p, C.c_uint32, C.c_int)
# libatomic's entry point has no `weak` flag (that is the compiler builtin's): pointer,
# expected pointer, desired, success order, failure order.
_cmpxchg_4 = _bind("__atomic_compare_exchange_4", C.c_bool,
                   C.c_void_p, C.c_void_p, C.c_uint32, C.c_int, C.c_int)


def test_and_set_bit(address: int, bit: int) -> bool:
    """Set bit `bit` (0..63) of the 64-bit word at `address`; whether it was already set."""
    return bool(_fetch_or_8(address, 1 << bit, _SEQ_CST) >> bit & 1)


def test_and_clear_bit(address: int, bit: int) -> bool:
    return bool(_fetch_and_8(address, ~(1 << bit) & 0xFFFF_FFFF_FFFF_FFFF, _SEQ_CST) >> bit & 1)


def test_bit(address: int, bit: int) -> bool:
    return bool(C.c_uint64.from_address(address).value >> bit & 1)


def exchange64(address: int, value: int) -> int:
    """Store `value` in the 64-bit word at `address`; the old value."""
    return _exchange_8(address, value, _SEQ_CST)


def exchange32(address: int, value: int) -> int:
    """Store `value` in the 32-bit word at `address`; the old value."""
    return _exchange_4(address, value & 0xFFFF_FFFF, _SEQ_CST)


def exchange_byte(address: int, value: int) -> int:
    """Store `value` in the byte at `address`; the old value."""
    return _exchange_1(address, value, _SEQ_CST)


# 32-bit words: the FIFO ABI's event words and control-block fields (event_fifo.c).
def test_and_set_bit32(address: int, bit: int) -> bool:
    """Set bit `bit` (0..31) of the 32-bit word at `address`; whether it was already set."""
    return bool(_fetch_or_4(address, 1 << bit, _SEQ_CST) >> bit & 1)


def test_and_clear_bit32(address: int, bit: int) -> bool:
    return bool(_fetch_and_4(address, ~(1 << bit) & 0xFFFF_FFFF, _SEQ_CST) >> bit & 1)


def test_bit32(address: int, bit: int) -> bool:
    return bool(_load_4(address, _SEQ_CST) >> bit & 1)


def fence() -> None:
    """A full memory barrier (mfence): this thread's stores are visible to other CPUs before
    its later loads are made (the store-then-load order ring consumers need)."""
    _thread_fence(_SEQ_CST)


def buffer_address(buffer: memoryview | bytearray) -> int:
    """Where a writable buffer (a mapped guest page) lives, for the loads and stores here:
    ring indices must be read and written whole, as Xen's back ends do (struct.pack_into
    writes byte by byte, and a vCPU reading meanwhile could see half an index). The buffer
    stays exported (and so mapped) while the caller holds the address."""
    return C.addressof(C.c_char.from_buffer(buffer))


def load32(address: int) -> int:
    return _load_4(address, _SEQ_CST)


def store32(address: int, value: int) -> None:
    _store_4(address, value & 0xFFFF_FFFF, _SEQ_CST)


def cmpxchg32(address: int, old: int, new: int) -> int:
    """Xen's cmpxchg: store `new` if the word still holds `old`; the value found either way
    (equal to `old` exactly when the exchange happened)."""
    expected = C.c_uint32(old)
    _cmpxchg_4(address, C.addressof(expected), new & 0xFFFF_FFFF, _SEQ_CST, _SEQ_CST)
    return expected.value


# 16-bit words: grant-table v2 status entries (GTF_reading/GTF_writing).
def or16(address: int, bits: int) -> None:
    _fetch_or_2(address, bits & 0xFFFF, _SEQ_CST)


def and_not16(address: int, bits: int) -> None:
    _fetch_and_2(address, ~bits & 0xFFFF, _SEQ_CST)
