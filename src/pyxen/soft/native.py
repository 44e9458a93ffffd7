"""The software CPU's native code (native_hooks.c, native_deliver.c): the null hypercall,
the TSC and interrupt delivery in C.

A hypercall through pyxen's Python hook costs tens of microseconds (the callback into
Python, the register reads, the dispatch); the engine executes the guest's own instructions
around it in nanoseconds. Calls whose result never changes (HypercallTable.answer_always:
xen_version(XENVER_version), the null hypercall) are therefore answered by a hook in C that
reads the guest's registers where QEMU keeps them, in CPUX86State. Every other OUT goes on
to the Python hook. RDTSC and RDTSCP, which a Linux guest executes at every clock read, are
answered there too (the machine's TscClock holds the epoch and rate they count from). And
`deliver_external` delivers an external interrupt in long mode, the common case of
pyxen.soft.interrupts.deliver, or declines and leaves it to Python.

The C files are compiled on first use with the host's C compiler (as the guest kit is) into
the user's cache, named by a hash of its source, so an upgrade rebuilds it. Where that is
not possible (no compiler), or where the loaded Unicorn does not keep its CPU state where
`find_env` expects it, the Python hook answers everything, as before, and one line says why.

Finding CPUX86State: Unicorn's handle points to its `uc_struct`, which points to the CPU
object, which points to its `env` (QEMU's CPUState.env_ptr). Their offsets are not part of
Unicorn's API, so `find_env` looks for them once per process, in a scratch engine whose
registers hold known values, reading memory with process_vm_readv (an address that is not
mapped is an error there, not a crash), and checks the result on a second engine.
"""

from __future__ import annotations

import ctypes as C
import functools
import hashlib
import logging
import os
import shlex
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from unicorn import UC_ARCH_X86, UC_MODE_64, Uc
from unicorn import x86_const as X
from unicorn.unicorn_py3.unicorn import uccallback, uclib

from pyxen.abi.xen import shared_info, vcpu_info
from pyxen.cache import user_cache

from .cpustate import ENV_CR, ENV_EFER, ENV_HFLAGS, ENV_SEGS, HF_CS64, HF_LMA

log = logging.getLogger("pyxen.soft")

SOURCES = tuple(Path(__file__).with_name(name)
                for name in ("native_hooks.c", "native_deliver.c", "native_send.c"))
HEADERS = (Path(__file__).with_name("native_walk.h"),)  # in the sources' hash, not compiled
CFLAGS = ("-O2", "-shared", "-fPIC", "-Wall", "-Werror")
MAX_ANSWERS = 16  # as native_hooks.c
SCAN_UC = 16 << 10  # bytes of uc_struct searched for the CPU pointer
SCAN_CPU = 4 << 10  # bytes of the CPU object searched for env_ptr
ENV_WITHIN = 1 << 20  # env lies inside the CPU object, this near its start

# void hook(uc_engine *uc, uint32_t port, int size, uint32_t value, void *user_data)
OUT_HOOK = C.CFUNCTYPE(None, C.c_void_p, C.c_uint32, C.c_int, C.c_uint32, C.c_void_p)


class Answer(C.Structure):
    _fields_ = [("nr", C.c_uint32), ("reserved", C.c_uint32), ("subop", C.c_uint64),
                ("result", C.c_uint64)]


SEND_PORTS, SEND_VCPUS = 4096, 128  # as native_send.c
# void woken(int vcpu, int what): what = SEND_RAISE or SEND_KICK
WOKEN = C.CFUNCTYPE(None, C.c_int, C.c_int)
SEND_RAISE, SEND_KICK = 1, 2


class SendTable(C.Structure):
    """native_send.c's struct send_table: one per machine, which IPI ports its vCPUs' OUT
    hooks send on (pyxen.hv.event_channel.FastSends keeps it)."""

    _fields_ = [("enabled", C.c_uint32), ("reserved", C.c_uint32), ("sent", C.c_uint64),
                ("bitmaps", C.c_void_p), ("pending_off", C.c_uint32),
                ("mask_off", C.c_uint32), ("sel_off", C.c_uint32), ("upcall_off", C.c_uint32),
                ("vcpu_info", C.c_void_p * SEND_VCPUS), ("target", C.c_uint16 * SEND_PORTS)]


class IpiSends:
    """The machine's SendTable, as the domain's event channels see it
    (pyxen.hv.event_channel.FastSends): which ports its vCPUs' OUT hooks may send on, and
    what they call for the vCPU an event went to."""

    def __init__(self) -> None:
        self.table = t = SendTable()
        t.pending_off, t.mask_off = shared_info.evtchn_pending.offset, shared_info.evtchn_mask.offset
        t.sel_off = vcpu_info.evtchn_pending_sel.offset
        t.upcall_off = vcpu_info.evtchn_upcall_pending.offset
        self.woken: Callable[[int, bool], None] | None = None  # (vCPU, upcall raised)

    @property
    def enabled(self) -> bool:
        return bool(self.table.enabled)

    @enabled.setter
    def enabled(self, on: bool) -> None:
        self.table.enabled = int(on)

    def publish(self, bitmaps: int, vcpu_infos: list[int], targets: dict[int, int]) -> None:
        """shared_info's address, each vCPU's vcpu_info address (0: none) and port → vCPU
        for the IPI ports to send on; made while disabled (the caller holds the baton)."""
        t = self.table
        t.enabled = 0
        t.bitmaps = bitmaps
        for i in range(SEND_VCPUS):
            t.vcpu_info[i] = vcpu_infos[i] if i < len(vcpu_infos) else 0
        C.memset(t.target, 0, C.sizeof(t.target))
        for port, vcpu in targets.items():
            if port < SEND_PORTS and vcpu < SEND_VCPUS and t.vcpu_info[vcpu]:
                t.target[port] = vcpu + 1

    def call_woken(self, vcpu: int, what: int) -> None:
        """From the OUT hook (native_send.c): what the event owes the vCPU."""
        if self.woken is not None:
            self.woken(vcpu, what == SEND_RAISE)


class OutHook(C.Structure):
    """native_hooks.c's struct out_hook: one per vCPU engine."""

    _fields_ = [("regs", C.c_void_p), ("hflags", C.c_void_p), ("slow", OUT_HOOK),
                ("port", C.c_uint32), ("count", C.c_uint32), ("answered", C.c_uint64),
                ("answers", Answer * MAX_ANSWERS),
                ("send", C.POINTER(SendTable)), ("woken", WOKEN), ("cr", C.c_void_p),
                ("efer", C.c_void_p), ("ram", C.c_void_p), ("ram_start", C.c_uint64),
                ("ram_end", C.c_uint64)]

    def set_ram(self, window: tuple[int, int, int] | None) -> None:
        """The engine's RAM view (host address of guest-physical 0, start, end), or None:
        native sends need to read their argument from guest memory."""
        self.ram = 0
        if window is not None:
            self.ram_start, self.ram_end = window[1], window[2]
            self.ram = window[0]

    def set_answers(self, answers: Iterable[tuple[int, int, int]]) -> None:
        """(nr, first argument, result) triples; none: every OUT goes to Python."""
        chosen = list(answers)
        if len(chosen) > MAX_ANSWERS:
            raise ValueError(f"at most {MAX_ANSWERS} native answers")
        self.count = 0  # the hook never sees a half-written table
        for slot, (nr, subop, result) in zip(self.answers, chosen, strict=False):
            slot.nr, slot.subop, slot.result = nr, subop, result & (2**64 - 1)
        self.count = len(chosen)


class TscClock(C.Structure):
    """native_hooks.c's struct tsc_clock: the soft machine's TSC, read by every vCPU's hook
    (and by SoftVcpu.read_tsc): (time.monotonic_ns() - epoch_ns) * khz // 10**6."""

    _fields_ = [("epoch_ns", C.c_int64), ("khz", C.c_int64)]


class TscHook(C.Structure):
    _fields_ = [("regs", C.c_void_p), ("tsc_aux", C.c_void_p), ("clock", C.POINTER(TscClock))]


class DeliverArgs(C.Structure):
    """native_deliver.c's struct deliver_args."""

    _fields_ = [("ram", C.c_void_p), ("ram_start", C.c_uint64), ("ram_end", C.c_uint64),
                ("env", C.c_void_p), ("regs", C.c_void_p), ("env_segs", C.c_uint32),
                ("env_cr", C.c_uint32), ("env_efer", C.c_uint32), ("env_hflags", C.c_uint32),
                ("vector", C.c_uint32), ("pieces", C.c_uint32), ("reserved", C.c_uint32),
                ("written_gpa", C.c_uint64 * 2), ("written_len", C.c_uint64 * 2)]


MSR_TSC_AUX = 0xC000_0103


class NativeUnavailable(RuntimeError):
    """The native hook cannot be used here; the message says why, in one line."""


def _compiler() -> str:
    cc = shlex.split(os.environ.get("CC", "gcc"))[:1] or ["gcc"]
    path = shutil.which(cc[0])
    if path is None:
        raise NativeUnavailable(f"no C compiler (`{cc[0]}`) to build the software CPU's "
                                "native code")
    return path


def build(dest_dir: Path | None = None) -> Path:
    """The compiled library, built if its sources changed since the last build."""
    digest = hashlib.sha256(b"".join(s.read_bytes() for s in SOURCES + HEADERS)
                            + " ".join(CFLAGS).encode()).hexdigest()[:16]
    out_dir = dest_dir or user_cache() / "native"
    library = out_dir / f"pyxen-soft-{digest}.so"
    if library.is_file():
        return library
    compiler = _compiler()
    out_dir.mkdir(parents=True, exist_ok=True)
    # Concurrent builds each write their own file and rename it into place.
    fd, tmp = tempfile.mkstemp(dir=out_dir, suffix=".so.tmp")
    os.close(fd)
    try:
        done = subprocess.run([compiler, *CFLAGS, "-o", tmp, *map(str, SOURCES)],
                              capture_output=True, text=True)
        if done.returncode:
            first = (done.stderr.strip().splitlines() or ["(no output)"])[0]
            raise NativeUnavailable(f"building the software CPU's native code failed: {first}")
        os.replace(tmp, library)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return library


# --- finding CPUX86State -------------------------------------------------------------------
class _IoVec(C.Structure):
    _fields_ = [("base", C.c_void_p), ("len", C.c_size_t)]


_libc = C.CDLL(None, use_errno=True)
_libc.process_vm_readv.argtypes = [C.c_int, C.POINTER(_IoVec), C.c_ulong, C.POINTER(_IoVec),
                                   C.c_ulong, C.c_ulong]
_libc.process_vm_readv.restype = C.c_ssize_t


def _peek(address: int, size: int) -> bytes:
    """Up to `size` bytes of this process's memory at `address`; fewer (or none) where the
    range is not mapped."""
    buf = C.create_string_buffer(size)
    local, remote = _IoVec(C.addressof(buf), size), _IoVec(address, size)
    got = _libc.process_vm_readv(os.getpid(), C.byref(local), 1, C.byref(remote), 1, 0)
    return buf.raw[:got] if got > 0 else b""


def _words(data: bytes) -> Iterable[tuple[int, int]]:
    """(offset, value) of each aligned 64-bit word."""
    for offset in range(0, len(data) - 7, 8):
        yield offset, struct.unpack_from("<Q", data, offset)[0]


_MARK_REGS = (X.UC_X86_REG_RAX, X.UC_X86_REG_RCX, X.UC_X86_REG_RDX, X.UC_X86_REG_RBX)


def _marked_engine(seed: int) -> tuple[Uc, bytes]:
    """A scratch engine whose rax, rcx, rdx, rbx (CPUX86State.regs[0..3]) hold known values."""
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    marks = [(0x5A5A_0000_0000_0000 | seed << 32 | i * 0x0101_0101) for i in range(4)]
    for reg, value in zip(_MARK_REGS, marks, strict=True):
        uc.reg_write(reg, value)
    return uc, struct.pack("<4Q", *marks)


def _handle(uc: Uc) -> int:
    handle = uc._uch  # noqa: SLF001 - the engine's uc_struct *, as the binding holds it
    return int(getattr(handle, "value", handle))


def env_address(uc: Uc, offsets: tuple[int, int]) -> int:
    """CPUX86State's address in `uc`, through the two pointers `find_env` located."""
    cpu_at, env_at = offsets
    cpu = C.c_uint64.from_address(_handle(uc) + cpu_at).value
    return C.c_uint64.from_address(cpu + env_at).value


def _pointer_at(address: int) -> int:
    raw = _peek(address, 8)
    return struct.unpack("<Q", raw)[0] if len(raw) == 8 else 0


def _holds_marks(uc: Uc, marks: bytes, offsets: tuple[int, int]) -> bool:
    """Whether the two pointers at `offsets` lead to `marks` in `uc` (safe to ask of any
    offsets: memory is only read through _peek)."""
    cpu = _pointer_at(_handle(uc) + offsets[0])
    return cpu != 0 and _peek(_pointer_at(cpu + offsets[1]), len(marks)) == marks


CHECK_ENGINES = 4


@functools.cache
def find_env() -> tuple[int, int]:
    """(offset of the CPU pointer in uc_struct, offset of env_ptr in the CPU object)."""
    uc, marks = _marked_engine(1)
    found = set()
    for cpu_at, cpu in _words(_peek(_handle(uc), SCAN_UC)):
        if cpu < 1 << 16:
            continue
        for env_at, env in _words(_peek(cpu, SCAN_CPU)):
            if 0 < env - cpu < ENV_WITHIN and _peek(env, len(marks)) == marks:
                found.add((cpu_at, env_at))
    # The search window may reach past uc_struct into other objects that point into the
    # CPU too: keep the pair that leads to the CPU state of other engines as well.
    for seed in range(2, 2 + CHECK_ENGINES):
        if len(found) <= 1:
            break
        other, other_marks = _marked_engine(seed)
        found = {pair for pair in found if _holds_marks(other, other_marks, pair)}
    if len(found) != 1:
        raise NativeUnavailable(f"the engine's CPU state was found {len(found)} times, not once")
    offsets = found.pop()
    # Check on a fresh engine, through the pointers alone, and that a register write moves
    # what is there.
    other, marks = _marked_engine(2 + CHECK_ENGINES)
    if not _holds_marks(other, marks, offsets):
        raise NativeUnavailable("the engine's CPU state is not where a second engine has it")
    other.reg_write(X.UC_X86_REG_RAX, 0x1234_5678_9ABC_DEF0)
    if C.c_uint64.from_address(env_address(other, offsets)).value != 0x1234_5678_9ABC_DEF0:
        raise NativeUnavailable("the engine's CPU state does not follow its registers")
    long_mode = HF_LMA | HF_CS64  # a UC_MODE_64 engine starts in 64-bit code
    if C.c_uint32.from_address(env_address(other, offsets) + ENV_HFLAGS).value & long_mode \
            != long_mode:
        raise NativeUnavailable("the engine's mode flags are not where pyxen expects them")
    return offsets


@functools.cache
def tsc_aux_offset() -> int:
    """Where CPUX86State keeps the TSC_AUX MSR (RDTSCP's ECX), found by writing it."""
    offsets = find_env()
    spots = None
    for value in (0x5A5A_A5A5_0123_4567, 0x0FED_CBA9_5A5A_A5A5):
        uc = Uc(UC_ARCH_X86, UC_MODE_64)
        uc.msr_write(MSR_TSC_AUX, value)
        # Within the state uc_context_save copies (the memory past it may hold other
        # copies of the value).
        env = _peek(env_address(uc, offsets), uclib.uc_context_size(uc._uch))
        here = {o for o, word in _words(env) if word == value}
        spots = here if spots is None else spots & here
    if spots is None or len(spots) != 1:
        raise NativeUnavailable("the engine's TSC_AUX MSR was not found once in its CPU state")
    return spots.pop()


@functools.cache
def library() -> C.CDLL:
    return C.CDLL(str(build()))


def available() -> str | None:
    """None when the native hook can be used in this process; else why not, in one line.
    PYXEN_SOFT_NATIVE=0 turns it off (to compare, or to rule it out)."""
    if os.environ.get("PYXEN_SOFT_NATIVE", "1") == "0":
        return "PYXEN_SOFT_NATIVE=0"
    try:  # all of it now: a domain process is contained (seccomp) before its guest runs
        find_env()
        tsc_aux_offset()
        library()
        _deliver_fn()
    except (NativeUnavailable, OSError) as e:
        return str(e)
    return None


def install_out_hook(uc: Uc, port: int, slow: Callable[[Uc, int, int, int, object], None],
                     add_hook: Callable[[C.c_void_p, OutHook], None],
                     sends: tuple[SendTable, Callable[[int, int], None]] | None = None
                     ) -> OutHook:
    """Give `uc` the native OUT hook for hypercall `port`, handing other OUTs to `slow`
    (called as a hook the binding added would be: an exception it raises stops the engine
    and comes out of emu_start). `add_hook(function, state)` registers the C function with
    the engine (uc_hook_add); the returned state must live as long as the engine does.
    `sends`: the machine's SendTable and what to call for the vCPU an IPI sent in C went to
    (`woken(vcpu, SEND_RAISE or SEND_KICK)`); the hook's RAM view is set by set_ram."""
    hook = OutHook()
    env = env_address(uc, find_env())
    hook.regs, hook.hflags = env, env + ENV_HFLAGS
    hook.cr, hook.efer = env + ENV_CR, env + ENV_EFER
    hook.slow = hook.slow_ref = uccallback(uc, OUT_HOOK)(slow)  # kept alive with the state
    hook.port = port
    if sends is not None:
        table, woken = sends
        hook.send = hook.send_ref = C.pointer(table)
        hook.woken = hook.woken_ref = WOKEN(woken)
    add_hook(C.cast(library().pyxen_out_hook, C.c_void_p), hook)
    return hook


def install_tsc_hooks(uc: Uc, clock: TscClock,
                      add_hook: Callable[[C.c_void_p, TscHook, int], None]) -> TscHook:
    """Give `uc` native RDTSC and RDTSCP hooks reading `clock`. `add_hook(function, state,
    instruction)` registers each with the engine; the state must live as long as it does."""
    hook = TscHook()
    env = env_address(uc, find_env())
    hook.regs, hook.tsc_aux = env, env + tsc_aux_offset()
    hook.clock = C.pointer(clock)
    lib = library()
    add_hook(C.cast(lib.pyxen_rdtsc_hook, C.c_void_p), hook, X.UC_X86_INS_RDTSC)
    add_hook(C.cast(lib.pyxen_rdtscp_hook, C.c_void_p), hook, X.UC_X86_INS_RDTSCP)
    return hook


def deliver_external(regs: C.Structure, env: int, window: tuple[int, int, int],
                     vector: int) -> list[tuple[int, int]] | None:
    """Deliver external interrupt `vector` in C (native_deliver.c) to the CPU whose
    registers are `regs` and whose saved CPUX86State is at `env`, touching only guest RAM
    `window` = (host address of guest-physical 0, first gpa, end gpa): the (gpa, length)
    pieces of the frame written, or None where the C path declines and nothing changed.
    QEMU's mode flags are the caller's to recompute."""
    host, start, end = window
    args = DeliverArgs(host, start, end, env, C.addressof(regs), ENV_SEGS, ENV_CR, ENV_EFER,
                       ENV_HFLAGS, vector)
    if not _deliver_fn()(C.byref(args)):
        return None
    return [(args.written_gpa[i], args.written_len[i]) for i in range(args.pieces)]


@functools.cache
def _deliver_fn() -> Callable[..., int]:
    """The C function, called without releasing the GIL (it runs for a microsecond)."""
    address = C.cast(library().pyxen_deliver_external, C.c_void_p).value
    return C.PYFUNCTYPE(C.c_int, C.POINTER(DeliverArgs))(address)  # type: ignore[no-any-return]


@functools.cache
def unavailable_once(reason: str) -> None:
    """Say once per process that hypercalls are all answered in Python, and why."""
    log.info("software CPU: every hypercall is answered in Python (%s)", reason)
