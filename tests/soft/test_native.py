"""The software CPU's native hooks (pyxen.soft.native, native_hooks.c) on real engines.

The OUT tests run `out %eax,$port` in a bare Unicorn engine with the hook installed and a
Python hook standing for SoftVcpu._on_out behind it: the native hook must answer exactly
the listed calls, by Xen's calling convention for the code's width and from CPL 0 only,
and hand everything else on untouched. Then a real domain: the null hypercall never
reaches Python, and --trace still sees every call. The TSC tests run RDTSC/RDTSCP against
the formula SoftVcpu.read_tsc uses, including a clock moved while the engine exists (a
restore's set_tsc) and a counter that wraps.
"""

from __future__ import annotations

import ctypes as C
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from benchmarks.hypercall import iterations_address
from unicorn import UC_ARCH_X86, UC_HOOK_INSN, UC_MODE_32, UC_MODE_64, Uc
from unicorn import x86_const as X
from unicorn.unicorn_py3.unicorn import uclib

from guestkit import image as guest_image
from pyxen.domain.domain import DomainConfig, Outcome
from pyxen.soft import native
from pyxen.soft.cpustate import ENV_HFLAGS
from pyxen.toolstack.accel import machine_factory
from pyxen.toolstack.embedded import run_image

PORT = 0xE8
CODE = 0x1000
OUT = b"\xe7\xe8"  # out %eax,$0xe8
VERSION_NR, VERSION_SUBOP, VERSION = 17, 0, 0x4_0013
ANSWERS = {(VERSION_NR, VERSION_SUBOP): VERSION, (VERSION_NR, 9): 123}

needs_native = pytest.mark.skipif(native.available() is not None,
                                  reason=f"native hook unavailable: {native.available()}")


def out_hook_adder(uc: Uc):  # type: ignore[no-untyped-def]
    """install_out_hook's add_hook for a bare engine: uc_hook_add for OUT."""

    def add(function: C.c_void_p, state: native.OutHook) -> None:
        handle = C.c_size_t()
        assert not uclib.uc_hook_add(uc._uch, C.byref(handle), UC_HOOK_INSN, function,
                                     C.byref(state), C.c_uint64(1), C.c_uint64(0),
                                     C.c_int(X.UC_X86_INS_OUT))

    return add


class Engine:
    """A bare engine running `code` at CODE, with the native hook and a recording slow hook."""

    def __init__(self, mode: int = UC_MODE_64, code: bytes = OUT) -> None:
        self.uc = Uc(UC_ARCH_X86, mode)
        self.result_reg = X.UC_X86_REG_RAX if mode == UC_MODE_64 else X.UC_X86_REG_EAX
        self.uc.mem_map(0, 0x10000)
        self.uc.mem_write(CODE, code)
        self.code = code
        self.slow: list[tuple[int, int, int]] = []
        self.raise_in_slow: Exception | None = None
        self.hook = native.install_out_hook(self.uc, PORT, self._slow, out_hook_adder(self.uc))
        self.hook.set_answers((nr, sub, res) for (nr, sub), res in ANSWERS.items())

    def _slow(self, uc: Uc, port: int, size: int, value: int, _: object) -> None:
        self.slow.append((port, size, value))
        if self.raise_in_slow is not None:
            raise self.raise_in_slow

    def run(self, **regs: int) -> int:
        for name, value in regs.items():
            self.uc.reg_write(getattr(X, f"UC_X86_REG_{name.upper()}"), value)
        self.uc.emu_start(CODE, CODE + len(self.code))
        return self.uc.reg_read(self.result_reg)

    def set_cpl(self, cpl: int) -> None:
        """Write CPL into QEMU's hflags, where the hook (and the translator) reads it."""
        env = native.env_address(self.uc, native.find_env())
        flags = C.c_uint32.from_address(env + ENV_HFLAGS)
        flags.value = flags.value & ~3 | cpl


@needs_native
def test_env_found_leads_to_each_engines_registers() -> None:
    for value in (0x1111_2222_3333_4444, 0x0123_4567_89AB_CDEF):
        uc = Uc(UC_ARCH_X86, UC_MODE_64)
        uc.reg_write(X.UC_X86_REG_RDI, value)
        env = native.env_address(uc, native.find_env())
        assert struct.unpack("<Q", C.string_at(env + 7 * 8, 8))[0] == value  # regs[R_EDI]


@needs_native
def test_64bit_null_hypercall_answered_in_the_engine() -> None:
    engine = Engine()
    # rbx is not an argument in 64-bit code: whatever it holds, rdi is the sub-op.
    assert engine.run(rax=VERSION_NR, rdi=VERSION_SUBOP, rbx=0xDEAD) == VERSION
    assert engine.run(rax=0xFFFF_FFFF_0000_0000 | VERSION_NR, rdi=9, rbx=0) == 123
    assert engine.slow == [] and engine.hook.answered == 2


@needs_native
def test_64bit_calls_not_listed_go_to_python_untouched() -> None:
    engine = Engine()
    assert engine.run(rax=VERSION_NR, rdi=1, rbx=VERSION_SUBOP) == VERSION_NR  # extraversion
    assert engine.run(rax=VERSION_NR, rdi=1 << 32) == VERSION_NR  # the whole of rdi counts
    assert engine.run(rax=29, rdi=VERSION_SUBOP) == 29  # another hypercall
    assert engine.slow == [(PORT, 4, VERSION_NR), (PORT, 4, VERSION_NR), (PORT, 4, 29)]
    assert engine.hook.answered == 0


@needs_native
def test_32bit_code_uses_ebx_and_gets_a_32bit_result() -> None:
    engine = Engine(UC_MODE_32)
    assert engine.run(eax=VERSION_NR, ebx=VERSION_SUBOP, edi=5) == VERSION
    assert engine.slow == []
    # edi = 0 but ebx = 1 (extraversion): not the null hypercall in 32-bit code.
    assert engine.run(eax=VERSION_NR, ebx=1, edi=VERSION_SUBOP) == VERSION_NR
    assert engine.slow == [(PORT, 4, VERSION_NR)] and engine.hook.answered == 1


@needs_native
def test_only_cpl0_is_answered() -> None:
    engine = Engine()
    engine.set_cpl(3)
    assert engine.run(rax=VERSION_NR, rdi=VERSION_SUBOP) == VERSION_NR
    assert engine.slow == [(PORT, 4, VERSION_NR)] and engine.hook.answered == 0


@needs_native
def test_other_ports_and_an_empty_table_go_to_python() -> None:
    engine = Engine(code=b"\xe7\x80")  # out %eax,$0x80
    assert engine.run(rax=VERSION_NR, rdi=VERSION_SUBOP) == VERSION_NR
    engine.hook.set_answers([])
    engine.uc.mem_write(CODE, OUT)
    engine.uc.ctl_remove_cache(CODE, CODE + 2)
    assert engine.run(rax=VERSION_NR, rdi=VERSION_SUBOP) == VERSION_NR
    assert engine.slow == [(0x80, 4, VERSION_NR), (PORT, 4, VERSION_NR)]


@needs_native
def test_an_exception_in_the_python_hook_comes_out_of_emu_start() -> None:
    engine = Engine()
    engine.raise_in_slow = RuntimeError("from the slow hook")
    with pytest.raises(RuntimeError, match="from the slow hook"):
        engine.run(rax=29)


def _tsc_engine(clock: native.TscClock, code: bytes) -> Uc:
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, 0x10000)
    uc.mem_write(CODE, code)

    def add(function: C.c_void_p, state: native.TscHook, insn: int) -> None:
        handle = C.c_size_t()
        assert not uclib.uc_hook_add(uc._uch, C.byref(handle), UC_HOOK_INSN, function,
                                     C.byref(state), C.c_uint64(1), C.c_uint64(0),
                                     C.c_int(insn))

    uc.tsc_hook = native.install_tsc_hooks(uc, clock, add)  # type: ignore[attr-defined]
    return uc


def _expected_tsc(clock: native.TscClock, at_ns: int) -> int:
    return (at_ns - clock.epoch_ns) * clock.khz // 1_000_000 & (2**64 - 1)


@needs_native
@pytest.mark.parametrize("code, with_aux", [(b"\x0f\x31", False), (b"\x0f\x01\xf9", True)])
def test_tsc_read_in_the_engine_follows_the_machines_clock(code: bytes, with_aux: bool) -> None:
    clock = native.TscClock(time.monotonic_ns() - 10**15, 2_500_000)  # 2.5 GHz, 11.6 days up
    uc = _tsc_engine(clock, code)
    uc.msr_write(native.MSR_TSC_AUX, 0x1_0000_0007)  # RDTSCP: ECX = its low 32 bits
    for _ in range(3):
        uc.reg_write(X.UC_X86_REG_RCX, 0xDEAD)
        uc.reg_write(X.UC_X86_REG_RAX, -1)
        before = _expected_tsc(clock, time.monotonic_ns())
        uc.emu_start(CODE, CODE + len(code))
        after = _expected_tsc(clock, time.monotonic_ns())
        rax, rdx = uc.reg_read(X.UC_X86_REG_RAX), uc.reg_read(X.UC_X86_REG_RDX)
        assert rax < 2**32 and rdx < 2**32  # zero-extended halves
        assert before <= rdx << 32 | rax <= after
        assert uc.reg_read(X.UC_X86_REG_RCX) == (7 if with_aux else 0xDEAD)
        clock.epoch_ns += 10**12  # set_tsc: the same engine reads the new epoch at once


@needs_native
def test_tsc_wraps_as_a_64bit_counter() -> None:
    khz = 1 << 40  # so that a wrap needs hours of uptime, not centuries
    clock = native.TscClock(time.monotonic_ns() - (2**64 * 1_000_000 // khz + 10**9), khz)
    uc = _tsc_engine(clock, b"\x0f\x31")
    before = _expected_tsc(clock, time.monotonic_ns())
    uc.emu_start(CODE, CODE + 2)
    after = _expected_tsc(clock, time.monotonic_ns())
    tsc = uc.reg_read(X.UC_X86_REG_RDX) << 32 | uc.reg_read(X.UC_X86_REG_RAX)
    assert before <= tsc <= after < 2**62  # wrapped: small again


def test_too_many_answers_refused() -> None:
    hook = native.OutHook()
    with pytest.raises(ValueError, match="at most 16"):
        hook.set_answers((1, i, 0) for i in range(17))


def test_build_is_cached_by_source_and_fails_in_one_line(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    if native.available() is not None:
        pytest.skip(f"native hook unavailable: {native.available()}")
    first = native.build(tmp_path)
    assert first.is_file() and native.build(tmp_path) == first
    monkeypatch.setenv("CC", "false")
    other = tmp_path / "other"
    with pytest.raises(native.NativeUnavailable, match="building the software CPU.s native code failed"):
        native.build(other)
    assert not any(other.iterdir())  # no half-written library left behind
    monkeypatch.setenv("CC", "no-such-compiler")
    with pytest.raises(native.NativeUnavailable, match="no C compiler .`no-such-compiler`."):
        native.build(tmp_path / "third")


def test_switched_off_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYXEN_SOFT_NATIVE", "0")
    assert native.available() == "PYXEN_SOFT_NATIVE=0"


def _bench_domain(n: int, **config: object) -> tuple[Outcome, int]:
    """Run the bench guest (n null hypercalls) on the software CPU: how it ended and how
    many hypercalls the native hook answered."""
    image = guest_image("bench_hypercall")
    where = iterations_address(image)
    domains = []

    def prepare(domain) -> None:  # type: ignore[no-untyped-def]
        domain.memory.write(where, struct.pack("<Q", n))
        domains.append(domain)

    result = run_image(image, DomainConfig(name="native", memory_mib=16, **config),
                       prepare=prepare, timeout=120,
                       machine_factory=machine_factory("soft")[0])
    answered = sum(v.backend.natively_answered for v in domains[0].vcpus)
    return result.result.outcome, answered


@needs_native
def test_a_domains_null_hypercalls_never_reach_python(guests: None) -> None:
    outcome, answered = _bench_domain(5000)
    assert outcome is Outcome.POWEROFF and answered == 5000


@needs_native
def test_trace_sees_every_call(guests: None) -> None:
    outcome, answered = _bench_domain(50, trace=True)
    assert outcome is Outcome.POWEROFF and answered == 0
    out = subprocess.run([sys.executable, "-m", "pyxen.cli", "run",
                          str(guest_image("version")), "--accel", "soft", "--trace"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "xen_version(XENVER_version" in out.stdout + out.stderr
