"""SYSCALL and SYSENTER on the software CPU (pyxen.soft.fastcall), on a real Unicorn engine.

Each test puts the engine in a mode at CPL 3 (64-bit, compat or legacy protected mode),
performs the instruction through fastcall with the engine's own MSRs, restores the state
into the engine and lets the engine run at the entry point: the selectors it reads with
`mov %cs`/`mov %ss`, a privileged `mov %cr0` that only CPL 0 may execute, and the registers
show what the guest would see. The way back (SYSRET, SYSEXIT) is QEMU's own and is run too.
"""

from __future__ import annotations

import ctypes as C
from collections.abc import Iterator

import pytest
from unicorn import UC_ARCH_X86, UC_MODE_64, Uc, UcError
from unicorn import x86_const as X

from pyxen.domain.backend import Regs
from pyxen.soft.cpustate import (
    DESC_B,
    DESC_DPL_SHIFT,
    DESC_G,
    DESC_L,
    DESC_P,
    DESC_S,
    DESC_TYPE_SHIFT,
    HF_CPL,
    SEG_CS,
    SEG_SS,
    Context,
    LayoutError,
    probe_layout,
)
from pyxen.soft.fastcall import (
    MSR_CSTAR,
    MSR_FMASK,
    MSR_LSTAR,
    MSR_STAR,
    MSR_SYSENTER_CS,
    MSR_SYSENTER_EIP,
    MSR_SYSENTER_ESP,
    syscall,
    sysenter,
)
from pyxen.soft.interrupts import GP, UD, Event

USER = 0x1000  # the SYSCALL/SYSENTER instruction
LSTAR, CSTAR, STAR_EIP, SYSENTER_EIP = 0x2000, 0x2800, 0x3000, 0x4000
HIGH = 1 << 32  # a second mapping, to see whether an MSR's upper half is used
KERNEL_CS, USER32_CS = 0x10, 0x23  # Linux's layout: STAR = USER32_CS << 48 | KERNEL_CS << 32
FMASK = 0x47700  # Linux's: TF DF IF IOPL NT AC
USER_RFLAGS = 0x21_0EC3  # ID, RF, OF, DF, IF, SF, ZF, CF and the fixed bit 1
RF, IF = 1 << 16, 1 << 9
EFER_SCE, EFER_LME, EFER_LMA = 1, 1 << 8, 1 << 10
CR0_PE_ET = 0x11
# The entry points read back what the CPU loaded: mov %cs,%eax; mov %ss,%edx; mov %cr0,%rbx
PROBE = bytes.fromhex("8cc8 8cd2 0f20c3")
USER_CODE64 = DESC_G | DESC_P | DESC_S | DESC_L | 3 << DESC_DPL_SHIFT | 0xB << DESC_TYPE_SHIFT
USER_CODE32 = USER_CODE64 & ~DESC_L | DESC_B
USER_DATA = DESC_G | DESC_B | DESC_P | DESC_S | 3 << DESC_DPL_SHIFT | 0x3 << DESC_TYPE_SHIFT
FLAT_CODE = DESC_G | DESC_P | DESC_S | 0xB << DESC_TYPE_SHIFT  # DPL 0, type 11
FLAT_DATA = DESC_G | DESC_B | DESC_P | DESC_S | 0x3 << DESC_TYPE_SHIFT  # DPL 0, type 3
REG_NAMES = [name for name, _ in Regs._fields_]


class Cpu:
    """A Unicorn engine at CPL 3 in one mode, with Linux-like fast-call MSRs."""

    def __init__(self, header: int, mode: str, efer_sce: bool = True) -> None:
        self.uc = uc = Uc(UC_ARCH_X86, UC_MODE_64)
        uc.mem_map(0, 1 << 20)
        uc.mem_map(HIGH, 1 << 16)
        for address in (LSTAR, CSTAR, STAR_EIP, SYSENTER_EIP, HIGH + SYSENTER_EIP):
            uc.mem_write(address, PROBE)
        uc.msr_write(MSR_STAR, USER32_CS << 48 | KERNEL_CS << 32 | STAR_EIP)
        uc.msr_write(MSR_LSTAR, LSTAR)
        uc.msr_write(MSR_CSTAR, CSTAR)
        uc.msr_write(MSR_FMASK, FMASK)
        uc.msr_write(MSR_SYSENTER_CS, KERNEL_CS)
        uc.msr_write(MSR_SYSENTER_ESP, HIGH + 0x8000)
        uc.msr_write(MSR_SYSENTER_EIP, HIGH + SYSENTER_EIP)
        for name, value in (("rip", USER), ("rsp", 0x9000), ("rflags", USER_RFLAGS),
                            ("rcx", 0x1111), ("r11", 0x2222), ("rdx", 0x3333)):
            uc.reg_write(getattr(X, f"UC_X86_REG_{name.upper()}"), value)
        self.ctx = ctx = Context(uc, header)
        ctx.save()
        long_mode = mode in ("64", "compat")
        ctx.efer = (EFER_LME | EFER_LMA if long_mode else 0) | (EFER_SCE if efer_sce else 0)
        ctx.set_cr(0, 0x10 if mode == "real" else CR0_PE_ET)
        cs, ss = ctx.seg(SEG_CS), ctx.seg(SEG_SS)
        cs.selector, cs.base, cs.limit = 0x33 if mode == "64" else USER32_CS, 0, 0xFFFF_FFFF
        cs.flags = USER_CODE64 if mode == "64" else USER_CODE32
        ss.selector, ss.base, ss.limit, ss.flags = 0x2B, 0, 0xFFFF_FFFF, USER_DATA
        ctx.recompute_hflags(USER_RFLAGS)
        ctx.restore()
        ctx.save()
        self.regs = Regs(**{n: uc.reg_read(getattr(X, f"UC_X86_REG_{n.upper()}"))
                            for n in REG_NAMES})

    def snapshot(self) -> bytes:
        return bytes(self.regs) + C.string_at(self.ctx._ptr.value, self.ctx.size)

    def commit(self) -> None:
        """Load regs and ctx back into the engine, as the soft vCPU does after the hook."""
        self.ctx.restore()
        for name in REG_NAMES:
            self.uc.reg_write(getattr(X, f"UC_X86_REG_{name.upper()}"), getattr(self.regs, name))

    def reg(self, name: str) -> int:
        return self.uc.reg_read(getattr(X, f"UC_X86_REG_{name.upper()}"))

    def probe(self) -> tuple[int, int, int]:
        """Run PROBE at the current rip: (CS, SS, CR0) as the guest reads them at CPL 0."""
        self.commit()
        rip = self.regs.rip
        self.uc.emu_start(rip, rip + len(PROBE), count=3)
        return self.reg("rax") & 0xFFFF, self.reg("rdx") & 0xFFFF, self.reg("rbx")

    def cpl(self) -> int:
        self.ctx.save()
        return self.ctx.hflags & HF_CPL


@pytest.fixture(scope="module")
def header() -> int:
    try:
        return probe_layout()
    except LayoutError as e:
        pytest.skip(f"Unicorn engine not usable: {e}")


@pytest.fixture
def cpus(header: int) -> Iterator[list[Cpu]]:
    made: list[Cpu] = []
    yield made
    for cpu in made:
        cpu.ctx.close()


@pytest.fixture
def make(header: int, cpus: list[Cpu]):  # noqa: ANN201 - a factory
    def new(mode: str, **kw: bool) -> Cpu:
        cpus.append(Cpu(header, mode, **kw))
        return cpus[-1]
    return new


def _flat(cpu: Cpu, cs_sel: int, cs_flags: int) -> None:
    cs, ss = cpu.ctx.seg(SEG_CS), cpu.ctx.seg(SEG_SS)
    assert (cs.selector, cs.base, cs.limit, cs.flags) == (cs_sel, 0, 0xFFFF_FFFF, cs_flags)
    assert (ss.selector, ss.base, ss.limit, ss.flags) == (cs_sel + 8, 0, 0xFFFF_FFFF, FLAT_DATA)


def test_syscall_64bit(make) -> None:
    cpu = make("64")
    assert syscall(cpu.regs, cpu.ctx, cpu.uc.msr_read) is None
    assert cpu.regs.rcx == USER + 2
    assert cpu.regs.r11 == USER_RFLAGS & ~RF
    assert cpu.regs.rflags == USER_RFLAGS & ~(FMASK | RF)
    assert cpu.regs.rip == LSTAR and cpu.regs.rsp == 0x9000  # SYSCALL keeps the stack
    _flat(cpu, KERNEL_CS, FLAT_CODE | DESC_L)
    assert cpu.probe() == (KERNEL_CS, KERNEL_CS + 8, CR0_PE_ET)  # mov %cr0 ran: CPL 0
    assert cpu.cpl() == 0


def test_syscall_then_sysretq_returns_to_64bit_ring3(make) -> None:
    """SYSRET is QEMU's: it takes CS/SS from STAR[63:48] and RFLAGS from R11."""
    cpu = make("64")
    cpu.uc.mem_write(LSTAR, bytes.fromhex("480f07"))  # sysretq
    cpu.uc.mem_write(USER + 2, bytes.fromhex("8cc8 8cd2"))
    assert syscall(cpu.regs, cpu.ctx, cpu.uc.msr_read) is None
    cpu.commit()
    cpu.uc.emu_start(LSTAR, USER + 6, count=3)
    assert cpu.reg("rip") == USER + 6
    assert (cpu.reg("rax") & 0xFFFF, cpu.reg("rdx") & 0xFFFF) == (USER32_CS + 16, USER32_CS + 8)
    assert cpu.reg("rflags") == USER_RFLAGS & ~RF
    assert cpu.cpl() == 3


def test_syscall_compat_mode_is_ud_on_intel(make) -> None:
    cpu = make("compat")
    before = cpu.snapshot()
    assert syscall(cpu.regs, cpu.ctx, cpu.uc.msr_read) == Event(UD)
    assert cpu.snapshot() == before


def test_syscall_compat_mode_enters_at_cstar_on_amd(make) -> None:
    cpu = make("compat")
    cpu.regs.rip = 0xFFFF_FFFE  # the return address wraps at 4 GiB in a 32-bit segment
    assert syscall(cpu.regs, cpu.ctx, cpu.uc.msr_read, amd=True) is None
    assert cpu.regs.rcx == 0 and cpu.regs.r11 == USER_RFLAGS & ~RF
    assert cpu.regs.rflags == USER_RFLAGS & ~(FMASK | RF)
    assert cpu.regs.rip == CSTAR
    _flat(cpu, KERNEL_CS, FLAT_CODE | DESC_L)  # the kernel runs in 64-bit mode
    assert cpu.probe() == (KERNEL_CS, KERNEL_CS + 8, CR0_PE_ET)


def test_syscall_legacy_mode_on_amd(make) -> None:
    cpu = make("legacy")
    assert syscall(cpu.regs, cpu.ctx, cpu.uc.msr_read) == Event(UD)  # Intel: 64-bit only
    assert syscall(cpu.regs, cpu.ctx, cpu.uc.msr_read, amd=True) is None
    assert cpu.regs.rcx == USER + 2 and cpu.regs.r11 == 0x2222  # R11 untouched
    assert cpu.regs.rflags == USER_RFLAGS & ~(IF | RF)  # only IF, VM, RF cleared; no FMASK
    assert cpu.regs.rip == STAR_EIP
    _flat(cpu, KERNEL_CS, FLAT_CODE | DESC_B)
    assert cpu.probe() == (KERNEL_CS, KERNEL_CS + 8, CR0_PE_ET)
    assert cpu.cpl() == 0


@pytest.mark.parametrize("mode", ["64", "compat", "legacy"])
@pytest.mark.parametrize("amd", [False, True])
def test_syscall_with_efer_sce_clear_is_ud(make, mode: str, amd: bool) -> None:
    cpu = make(mode, efer_sce=False)
    before = cpu.snapshot()
    assert syscall(cpu.regs, cpu.ctx, cpu.uc.msr_read, amd=amd) == Event(UD)
    assert cpu.snapshot() == before


@pytest.mark.parametrize("amd", [False, True])
def test_syscall_in_real_mode_is_ud(make, amd: bool) -> None:
    cpu = make("real")
    before = cpu.snapshot()
    assert syscall(cpu.regs, cpu.ctx, cpu.uc.msr_read, amd=amd) == Event(UD)
    assert cpu.snapshot() == before


@pytest.mark.parametrize("mode", ["64", "compat"])
def test_sysenter_long_mode(make, mode: str) -> None:
    cpu = make(mode)
    assert sysenter(cpu.regs, cpu.ctx, cpu.uc.msr_read) is None
    assert cpu.regs.rip == HIGH + SYSENTER_EIP and cpu.regs.rsp == HIGH + 0x8000
    assert cpu.regs.rflags == USER_RFLAGS & ~(IF | RF)  # and VM (clear already)
    assert (cpu.regs.rcx, cpu.regs.r11, cpu.regs.rdx) == (0x1111, 0x2222, 0x3333)
    _flat(cpu, KERNEL_CS, FLAT_CODE | DESC_L)
    assert cpu.probe() == (KERNEL_CS, KERNEL_CS + 8, CR0_PE_ET)
    assert cpu.cpl() == 0


def test_sysenter_then_sysexitq_returns_to_64bit_ring3(make) -> None:
    """64-bit SYSEXIT (REX.W) is QEMU's: CS = SYSENTER_CS + 32, SS = + 40, RIP = RDX,
    RSP = RCX."""
    cpu = make("64")
    cpu.uc.mem_write(HIGH + SYSENTER_EIP, bytes.fromhex("480f35"))  # sysexitq
    cpu.uc.mem_write(0x3333, bytes.fromhex("8cc8 8cd2"))
    assert sysenter(cpu.regs, cpu.ctx, cpu.uc.msr_read) is None
    cpu.commit()
    cpu.uc.emu_start(HIGH + SYSENTER_EIP, 0x3333 + 4, count=3)
    assert (cpu.reg("rip"), cpu.reg("rsp")) == (0x3333 + 4, 0x1111)
    assert (cpu.reg("rax") & 0xFFFF, cpu.reg("rdx") & 0xFFFF) == (KERNEL_CS + 35, KERNEL_CS + 43)
    assert cpu.cpl() == 3


def test_sysenter_legacy_mode(make) -> None:
    cpu = make("legacy")
    assert sysenter(cpu.regs, cpu.ctx, cpu.uc.msr_read) is None
    assert cpu.regs.rip == SYSENTER_EIP and cpu.regs.rsp == 0x8000  # the MSRs' low halves
    _flat(cpu, KERNEL_CS, FLAT_CODE | DESC_B)
    assert cpu.probe() == (KERNEL_CS, KERNEL_CS + 8, CR0_PE_ET)
    assert cpu.cpl() == 0


def test_sysenter_clears_vm_and_if(make) -> None:
    cpu = make("legacy")
    cpu.regs.rflags |= 1 << 17
    assert sysenter(cpu.regs, cpu.ctx, cpu.uc.msr_read) is None
    assert cpu.regs.rflags == USER_RFLAGS & ~(IF | RF)


@pytest.mark.parametrize("mode", ["64", "compat"])
def test_sysenter_long_mode_is_ud_on_amd(make, mode: str) -> None:
    cpu = make(mode)
    before = cpu.snapshot()
    assert sysenter(cpu.regs, cpu.ctx, cpu.uc.msr_read, amd=True) == Event(UD)
    assert cpu.snapshot() == before


@pytest.mark.parametrize("mode", ["64", "compat", "legacy"])
@pytest.mark.parametrize("cs", [0, 3])  # SYSENTER_CS[15:2] = 0
def test_sysenter_without_sysenter_cs_is_gp0(make, mode: str, cs: int) -> None:
    cpu = make(mode)
    cpu.uc.msr_write(MSR_SYSENTER_CS, cs)
    before = cpu.snapshot()
    assert sysenter(cpu.regs, cpu.ctx, cpu.uc.msr_read) == Event(GP, 0)
    assert cpu.snapshot() == before


def test_sysenter_in_real_mode_is_gp0(make) -> None:
    cpu = make("real")
    before = cpu.snapshot()
    assert sysenter(cpu.regs, cpu.ctx, cpu.uc.msr_read) == Event(GP, 0)
    assert cpu.snapshot() == before


def test_probe_needs_cpl0(make) -> None:
    """The probe's `mov %cr0` really faults at CPL 3, so the probes above show CPL 0."""
    cpu = make("64")
    cpu.uc.mem_write(USER, PROBE)
    with pytest.raises(UcError):
        cpu.probe()
