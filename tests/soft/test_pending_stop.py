"""The software CPU's clock while a stop is pending.

A kick from another thread (an event for this vCPU, a layout change) is a Unicorn
`emu_stop`: the engine finishes its current translation block first. Unicorn's RDTSC helper
walks the instruction hooks in order and leaves the walk after any hook once a stop is
pending, then runs QEMU's own RDTSC, which gives the host's TSC: a guest clock hours ahead.
Seen as `interdomain.pingpong FAIL 239 of 300 rounds answered`: B's wait for the echo read
now_ns() just after the echo's kick and took the round as timed out.

The stop is requested here from a CPUID hook of the test's own, as a kick arriving while
the engine runs that instruction; the RDTSC after it is in the same translation block.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from unicorn import UC_HOOK_INSN, Uc
from unicorn import x86_const as X

from pyxen.domain.backend import Exit
from pyxen.soft.machine import soft_usable

from .test_soft_cpu import Cpu

pytestmark = pytest.mark.skipif(not soft_usable()[0], reason="Unicorn engine not usable")

# xor eax, eax; cpuid (the kick lands here); rdtsc; mov ebx, eax; mov esi, edx; hlt
CPUID_THEN_RDTSC = bytes.fromhex("31c0" "0fa2" "0f31" "89c3" "89d6" "f4")


@pytest.fixture
def cpu() -> Iterator[Cpu]:
    c = Cpu(CPUID_THEN_RDTSC)
    yield c
    c.close()


def kick_during_cpuid(c: Cpu) -> None:
    def stop(uc: Uc, _: object) -> int:
        uc.emu_stop()  # what SoftVcpu.kick does, from whichever thread
        return 1  # CPUID's result stays pyxen's (the last hook's answer counts)

    c.vcpu.uc.hook_add(UC_HOOK_INSN, stop, None, 1, 0, X.UC_X86_INS_CPUID)


def guest_tsc(c: Cpu) -> int:
    """Run to the HLT; the TSC the guest's RDTSC read (EDX:EAX, copied to ESI:EBX)."""
    exit_ = c.run()
    while exit_ is Exit.KICKED:
        exit_ = c.run()
    assert exit_ is Exit.HLT
    return (c.vcpu.regs.rsi & 0xFFFF_FFFF) << 32 | (c.vcpu.regs.rbx & 0xFFFF_FFFF)


def test_rdtsc_reads_the_guest_tsc(cpu: Cpu) -> None:
    before = cpu.vcpu.read_tsc()
    tsc = guest_tsc(cpu)
    assert before <= tsc <= cpu.vcpu.read_tsc()


def test_rdtsc_reads_the_guest_tsc_while_a_kick_is_pending(cpu: Cpu) -> None:
    kick_during_cpuid(cpu)
    before = cpu.vcpu.read_tsc()
    tsc = guest_tsc(cpu)
    after = cpu.vcpu.read_tsc()
    assert before <= tsc <= after, (
        f"the guest read TSC {tsc:#x}, outside [{before:#x}, {after:#x}]: "
        f"{(tsc - after) / cpu.machine.tsc_khz / 1000:.0f} s ahead")
