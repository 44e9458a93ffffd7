"""A vCPU's complete state (CpuState) out of one backend and into another.

Guest code puts distinctive values into every part of the CPU (registers, segments with odd
hidden attributes, control-register bits, the x87 stack, MXCSR, XMM0-15, MSRs, debug
registers) and stops at a store to MMIO in ring 3. The state is saved, carried through JSON,
loaded into a fresh vCPU of a fresh machine (from another thread), and the guest goes on there:
it stores what it sees (its registers, its own FXSAVE64, RDTSC, its MSRs read back after a
#UD into ring 0, its control and descriptor-table registers), so the checks are on what
the guest observes, not only on what the backends report.
"""

from __future__ import annotations

import copy
import functools
import json
import random
import shutil
import struct
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from clayout import check_layout, compile_layouts
from conftest import AVAILABLE
from pyxen.domain.backend import Exit, Regs, Segment, SpecialRegs, VcpuBackend
from pyxen.domain.cpu_state import (
    CPU_MSRS,
    MSR_LSTAR,
    MSR_PAT,
    MSR_SPEC_CTRL,
    MSR_TSC_ADJUST,
    SHADOW_STI,
    XCR0_AVX,
    CpuState,
    PendingException,
)
from pyxen.domain.memory import GuestMemory
from pyxen.toolstack.accel import hardware_virtualization, machine_factory
from pyxen.x86.cpuid import HYPERCALL_MSR, guest_cpuid

RAM = 16 << 20
PML4, PDPT, PD, GDT, TSS, IDT, LDT, HANDLERS = (0x1000, 0x2000, 0x3000, 0x4000, 0x5000, 0x6000,
                                                 0x7000, 0x8000)
CODE = 0x10000
KERNEL_RSP, RSP0, USER_RSP = 0x7F000, 0x80000, 0x9FF58
K_CS, K_DS, U_SS, U_CS, TR_SEL, LDT_SEL, ODD_SEL = 0x08, 0x10, 0x1B, 0x23, 0x28, 0x38, 0x4B
ODD_BASE, ODD_LIMIT = 0x1234_5000, 0xA_BCDE  # a DPL-3 data segment: G=0, AVL=1, D/B=1
DEBUG_PORT = 0xE9
UD = 6
MMIO = RAM  # the snippet's phase 1 ends with a byte store there (ring 3 has no port I/O on
#             kvm_pvm, which does not honour IOPL for guest user mode)
HYPERCALL_PORT = 0xE8

CR0_PE, CR0_MP, CR0_ET, CR0_NE, CR0_WP, CR0_AM, CR0_PG = (1, 2, 0x10, 0x20, 1 << 16, 1 << 18,
                                                          1 << 31)
CR4_DE, CR4_PAE, CR4_PGE, CR4_PCE, CR4_OSFXSR, CR4_OSXMMEXCPT = (8, 0x20, 0x80, 0x100, 0x200,
                                                                 0x400)
CR0_GUEST = CR0_MP | CR0_NE | CR0_WP | CR0_AM  # bits the guest sets itself
CR4_OSXSAVE = 1 << 18
CR4_GUEST = CR4_DE | CR4_PGE | CR4_PCE | CR4_OSXMMEXCPT
EFER_SCE, EFER_LME, EFER_LMA, EFER_NXE = 1, 0x100, 0x400, 0x800
MSR_EFER, MSR_FS_BASE, MSR_GS_BASE = 0xC000_0080, 0xC000_0100, 0xC000_0101

# The guest's distinctive values.
FCW = 0x0E7F  # all exceptions masked, 53-bit precision, round toward zero
MXCSR = 0x3FA5  # masks, three sticky flags, round down
FP_VALUES = [(0x4000, 0xC90F_DAA2_2168_C235), (0xBFFF, 0xC000_0000_0000_0000),
             (0x3FFE, 0x8000_0000_0000_0001), (0x4123, 0xABCD_EF01_2345_6789),
             (0x0000, 0), (0x7FFF, 0xC000_0000_0000_0000)]  # loaded in this order: ST0 is last
XMM_VALUES = [random.Random(i).getrandbits(128) for i in range(16)]
GPR_NAMES = [name for name, _ in Regs._fields_][:16]
GPR_VALUES = {name: (0x1000_0000_0000_0000 * (i % 15 + 1) + 0x1111 * i + 0xE9)
              for i, name in enumerate(GPR_NAMES)} | {"rsp": USER_RSP}
RFLAGS = 0x2 | 0x1 | 0x4 | 0x10 | 0x40 | 0x80 | 0x200 | 0x400 | 0x800 | 0x20_0000  # + ID
DEBUG_VALUES = {"dr0": 0x0000_7000_0000_1000, "dr1": 0x0000_7000_0000_2000,
                "dr2": 0xFFFF_8000_0000_3000, "dr3": 0x0000_0000_00AB_C000,
                "dr6": 0xFFFF_4FF1, "dr7": 0x000D_0409}
MSR_WRITES = {
    0xC000_0081: 0x0010_0008_1234_5678,  # STAR: SYSCALL to K_CS, SYSRET to U_CS
    0xC000_0083: 0xFFFF_8000_1234_5000,  # CSTAR
    0xC000_0084: 0x0004_7700,  # SFMASK: TF IF DF IOPL NT AC
    0xC000_0102: 0xFFFF_FFFF_8765_4000,  # KERNEL_GS_BASE
    0x174: 0x0ABC, 0x175: 0xFFFF_8888_0000_1000, 0x176: 0x0000_7FFF_0000_2000,  # SYSENTER
    MSR_PAT: 0x0105_0607_0405_0601,
    0xC000_0103: 0xCAFE_0042,  # TSC_AUX
    0x2FF: 0xC06, 0x250: 0x0606_0606_0606_0606, 0x268: 0x0505_0505_0505_0505,  # MTRRs
    0x200: 0x8000_0006, 0x201: 0xFF_8000_0800,
    MSR_FS_BASE: 0x0000_1111_2222_3000, MSR_GS_BASE: 0xFFFF_9999_0000_4000,
}  # and LSTAR: the guest's own kernel entry
MSR_TSC_AUX = 0xC000_0103
READ_BACK = [*CPU_MSRS, MSR_FS_BASE, MSR_GS_BASE, MSR_EFER]
SNIPPET = r"""
    .text
    .code64
    .set mmio_target, 0x1000000
    .globl phase1
phase1:                         # ring 0: what only the kernel can set
    mov $0x28, %ax
    ltr %ax
    mov $0x38, %ax
    lldt %ax
    mov $0x4b, %ax              # the odd data segment, hidden parts and all
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %fs
    mov %ax, %gs
    lea msr_writes(%rip), %rsi
    call write_msrs             # FS/GS bases among them
    mov %cr0, %rax
    or cr0_bits(%rip), %rax
    mov %rax, %cr0
    mov %cr4, %rax
    or cr4_bits(%rip), %rax
    mov %rax, %cr4
    mov $1, %eax
    xor %ecx, %ecx
    cpuid
    bt $26, %ecx                # XSAVE offered: OSXSAVE, and XCR0 = what leaf 0xd offers
    jnc 1f
    mov %cr4, %rax
    or $0x40000, %rax
    mov %rax, %cr4
    mov $0xd, %eax
    xor %ecx, %ecx
    cpuid
    and $7, %eax
    xor %edx, %edx
    xor %ecx, %ecx
    xsetbv
    movq $1, xsave_on(%rip)
1:  mov dr_values(%rip), %rax
    mov %rax, %dr0
    mov dr_values+8(%rip), %rax
    mov %rax, %dr1
    mov dr_values+16(%rip), %rax
    mov %rax, %dr2
    mov dr_values+24(%rip), %rax
    mov %rax, %dr3
    mov dr_values+32(%rip), %rax
    mov %rax, %dr6
    mov dr_values+40(%rip), %rax
    mov %rax, %dr7
    mov $0xc0000080, %ecx       # EFER |= SCE | NXE
    rdmsr
    or $0x801, %eax
    wrmsr
    lea msr_seen1(%rip), %rdi
    call read_msrs
    pushq $0x1b                 # to ring 3
    pushq $0x9ff58
    pushq $0x202
    pushq $0x23
    lea phase1_user(%rip), %rax
    push %rax
    iretq

phase1_user:                    # ring 3: x87, SSE, the general registers
    fninit
    fldcw fcw(%rip)
    fldt fp_values(%rip)
    fldt fp_values+10(%rip)
    fldt fp_values+20(%rip)
    fldt fp_values+30(%rip)
    fldt fp_values+40(%rip)
    fldt fp_values+50(%rip)
    ldmxcsr mxcsr_value(%rip)
    movdqu xmm_values+0(%rip), %xmm0
    movdqu xmm_values+16(%rip), %xmm1
    movdqu xmm_values+32(%rip), %xmm2
    movdqu xmm_values+48(%rip), %xmm3
    movdqu xmm_values+64(%rip), %xmm4
    movdqu xmm_values+80(%rip), %xmm5
    movdqu xmm_values+96(%rip), %xmm6
    movdqu xmm_values+112(%rip), %xmm7
    movdqu xmm_values+128(%rip), %xmm8
    movdqu xmm_values+144(%rip), %xmm9
    movdqu xmm_values+160(%rip), %xmm10
    movdqu xmm_values+176(%rip), %xmm11
    movdqu xmm_values+192(%rip), %xmm12
    movdqu xmm_values+208(%rip), %xmm13
    movdqu xmm_values+224(%rip), %xmm14
    movdqu xmm_values+240(%rip), %xmm15
    fxsave64 fx_seen1(%rip)     # what the guest sees before the move
    rdtsc
    shl $32, %rdx
    or %rdx, %rax
    mov %rax, tsc_seen1(%rip)
    pushq rflags_value(%rip)
    popfq
    mov gpr_values+0(%rip), %rax
    mov gpr_values+8(%rip), %rbx
    mov gpr_values+16(%rip), %rcx
    mov gpr_values+24(%rip), %rdx
    mov gpr_values+32(%rip), %rsi
    mov gpr_values+40(%rip), %rdi
    mov gpr_values+56(%rip), %rbp
    mov gpr_values+64(%rip), %r8
    mov gpr_values+72(%rip), %r9
    mov gpr_values+80(%rip), %r10
    mov gpr_values+88(%rip), %r11
    mov gpr_values+96(%rip), %r12
    mov gpr_values+104(%rip), %r13
    mov gpr_values+112(%rip), %r14
    mov gpr_values+120(%rip), %r15
    mov %al, mmio_target        # the exit the state is saved at: a store to no RAM
    .globl resume
resume:                         # phase 2, on the vCPU the state was loaded into
    mov %rax, gpr_seen+0(%rip)
    mov %rbx, gpr_seen+8(%rip)
    mov %rcx, gpr_seen+16(%rip)
    mov %rdx, gpr_seen+24(%rip)
    mov %rsi, gpr_seen+32(%rip)
    mov %rdi, gpr_seen+40(%rip)
    mov %rsp, gpr_seen+48(%rip)
    mov %rbp, gpr_seen+56(%rip)
    mov %r8, gpr_seen+64(%rip)
    mov %r9, gpr_seen+72(%rip)
    mov %r10, gpr_seen+80(%rip)
    mov %r11, gpr_seen+88(%rip)
    mov %r12, gpr_seen+96(%rip)
    mov %r13, gpr_seen+104(%rip)
    mov %r14, gpr_seen+112(%rip)
    mov %r15, gpr_seen+120(%rip)
    pushfq
    popq rflags_seen(%rip)
    fxsave64 fx_seen2(%rip)
    rdtsc
    shl $32, %rdx
    or %rdx, %rax
    mov %rax, tsc_seen2(%rip)
    cmpq $0, xsave_on(%rip)
    je 1f
    xor %ecx, %ecx              # in ring 3: kvm_pvm fails to emulate XGETBV in ring 0
    xgetbv
    mov %eax, xcr0_seen(%rip)
1:
    .globl to_kernel
to_kernel:                      # to ring 0 through #UD: under kvm_pvm, SYSCALL from ring 3
    ud2                         # stays at CPL 3 and `int $n` arrives as #UD anyway

    .globl kernel_entry
kernel_entry:                   # MSRs, control and descriptor-table registers
    mov (%rsp), %rax
    mov %rax, return_rip(%rip)
    mov 8(%rsp), %rax
    mov %ax, seg_seen(%rip)     # the CS and SS ring 3 ran with, from the exception frame
    mov 32(%rsp), %rax          # (kvm_pvm shows the host's own user selectors to ring 3)
    mov %ax, seg_seen+2(%rip)
    mov %es, seg_seen+4(%rip)
    mov %ds, seg_seen+6(%rip)
    mov %fs, seg_seen+8(%rip)
    mov %gs, seg_seen+10(%rip)
    mov %cs, kernel_cs(%rip)
    lea msr_seen2(%rip), %rdi
    call read_msrs
    mov %cr0, %rax
    mov %rax, cr_seen(%rip)
    mov %cr3, %rax
    mov %rax, cr_seen+8(%rip)
    mov %cr4, %rax
    mov %rax, cr_seen+16(%rip)
    sgdt gdtr_seen(%rip)
    sidt idtr_seen(%rip)
    str tr_seen(%rip)
    sldt ldtr_seen(%rip)
    mov %dr0, %rax
    mov %rax, dr_seen(%rip)
    mov %dr1, %rax
    mov %rax, dr_seen+8(%rip)
    mov %dr2, %rax
    mov %rax, dr_seen+16(%rip)
    mov %dr3, %rax
    mov %rax, dr_seen+24(%rip)
    mov %dr6, %rax
    mov %rax, dr_seen+32(%rip)
    mov %dr7, %rax
    mov %rax, dr_seen+40(%rip)
    mov $1, %al
    out %al, $0xe9
    hlt

write_msrs:                     # (u32 index, u32 -, u64 value)... up to index 0
    mov (%rsi), %ecx
    test %ecx, %ecx
    jz 1f
    mov 8(%rsi), %eax
    mov 12(%rsi), %edx
    wrmsr
    add $16, %rsi
    jmp write_msrs
1:  ret

read_msrs:                      # fills in the values of such a list
    mov (%rdi), %ecx
    test %ecx, %ecx
    jz 1f
    rdmsr
    mov %eax, 8(%rdi)
    mov %edx, 12(%rdi)
    add $16, %rdi
    jmp read_msrs
1:  ret

    .macro area name, size
    .balign 64
    .globl \name
\name: .fill \size, 1, 0
    .endm
    area cr0_bits, 8
    area cr4_bits, 8
    area fcw, 2
    area mxcsr_value, 4
    area rflags_value, 8
    area fp_values, 60
    area xmm_values, 256
    area gpr_values, 128
    area dr_values, 48
    area msr_writes, 640
    area msr_seen1, 1024
    area msr_seen2, 1024
    area fx_seen1, 512
    area fx_seen2, 512
    area gpr_seen, 128
    area rflags_seen, 8
    area tsc_seen1, 8
    area tsc_seen2, 8
    area seg_seen, 12
    area return_rip, 8
    area kernel_cs, 2
    area cr_seen, 24
    area gdtr_seen, 10
    area idtr_seen, 10
    area tr_seen, 2
    area ldtr_seen, 2
    area dr_seen, 48
    area xcr0_seen, 8
    area xsave_on, 8
"""


# --- the guest -----------------------------------------------------------------------------------
class Snippet:
    """SNIPPET assembled and linked at CODE: its bytes and its symbols."""

    def __init__(self, workdir: Path) -> None:
        for tool in ("as", "ld", "objcopy"):
            assert shutil.which(tool), f"binutils' {tool} is needed (the guest kit needs it)"
        (workdir / "snippet.S").write_text(SNIPPET)
        for cmd in (["as", "--64", "-o", "snippet.o", "snippet.S"],
                    ["ld", "-m", "elf_x86_64", f"-Ttext={CODE:#x}", "-e", "phase1",
                     "-o", "snippet.elf", "snippet.o"],
                    ["objcopy", "-O", "binary", "snippet.elf", "snippet.bin"]):
            done = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)
            assert done.returncode == 0, f"{' '.join(cmd)}:\n{done.stderr}"
        self.code = (workdir / "snippet.bin").read_bytes()
        with (workdir / "snippet.elf").open("rb") as f:
            symtab = ELFFile(f).get_section_by_name(".symtab")
            self.sym = {s.name: s["st_value"] for s in symtab.iter_symbols() if s.name}


@pytest.fixture(scope="session")
def snippet(tmp_path_factory: pytest.TempPathFactory) -> Snippet:
    return Snippet(tmp_path_factory.mktemp("cpu_state"))


def gdt() -> bytes:
    odd_lo = (ODD_BASE & 0xFFFF) << 16 | ODD_LIMIT & 0xFFFF
    odd_hi = (ODD_BASE >> 16 & 0xFF | 0xF3 << 8 | (ODD_LIMIT >> 16) << 16 | 0x5 << 20
              | (ODD_BASE >> 24) << 24)
    return struct.pack("<11Q", 0, 0x00AF_9B00_0000_FFFF, 0x00CF_9300_0000_FFFF,
                       0x00CF_F300_0000_FFFF, 0x00AF_FB00_0000_FFFF,
                       *system_descriptor(TSS, 0x67, 0x9), *system_descriptor(LDT, 0xF, 0x2),
                       odd_hi << 32 | odd_lo, 0)


def system_descriptor(base: int, limit: int, type_: int) -> tuple[int, int]:
    low = (limit & 0xFFFF | (base & 0xFFFF) << 16 | (base >> 16 & 0xFF) << 32
           | (0x80 | type_) << 40 | (base >> 24 & 0xFF) << 56)
    return low, base >> 32


def msr_list(values: dict[int, int]) -> bytes:
    return b"".join(struct.pack("<IIQ", index, 0, value) for index, value in values.items()) \
        + bytes(16)


def guest_msrs(tables: list[list[tuple[int, ...]]]) -> list[int]:
    """The MSRs the guest touches: TSC_AUX only where every CPUID table offers RDTSCP or
    RDPID (KVM refuses the guest's accesses otherwise; kvm_pvm offers neither)."""
    return [i for i in READ_BACK if i != MSR_TSC_AUX or all(map(tsc_aux_offered, tables))]


def tsc_aux_offered(cpuid: list[tuple[int, ...]]) -> bool:
    table = {(leaf, sub): regs for leaf, sub, *regs in cpuid}
    rdtscp = table.get((0x8000_0001, 0), [0] * 4)[3] >> 27 & 1
    rdpid = table.get((7, 0), [0] * 4)[2] >> 22 & 1
    return bool(rdtscp or rdpid)


def msr_writes(tables: list[list[tuple[int, ...]]], sym: dict[str, int]) -> dict[int, int]:
    """The MSRs the guest writes, LSTAR being its own kernel entry."""
    allowed = guest_msrs(tables)
    return {i: v for i, v in MSR_WRITES.items() if i in allowed} | {MSR_LSTAR: sym["kernel_entry"]}


def write_guest(mem: GuestMemory, snippet: Snippet, written: dict[int, int],
                read_back: list[int]) -> None:
    """Page tables (16 MiB identity-mapped, user-accessible), GDT, TSS, LDT, an IDT whose
    vector v handler reports v on the debug port (#UD: the snippet's way into its kernel),
    and the snippet with its inputs."""
    mem.write(PML4, struct.pack("<Q", PDPT | 7))
    mem.write(PDPT, struct.pack("<Q", PD | 7))
    mem.write(PD, struct.pack("<9Q", *((i << 21) | 0x87 for i in range(9))))  # + MMIO
    mem.write(GDT, gdt())
    mem.write(TSS + 4, struct.pack("<Q", RSP0))
    mem.write(TSS + 0x66, struct.pack("<H", 0x68))
    mem.write(LDT, struct.pack("<2Q", 0, 0x00CF_F300_0000_FFFF))
    for v in range(256):
        handler = HANDLERS + 16 * v
        mem.write(handler, bytes([0xB0, v, 0xE6, DEBUG_PORT, 0xF4]))  # mov $v,%al; out; hlt
        if v == UD:
            handler = snippet.sym["kernel_entry"]
        gate = (handler & 0xFFFF | K_CS << 16 | 0x8E << 40 | (handler >> 16 & 0xFFFF) << 48)
        mem.write(IDT + 16 * v, struct.pack("<2Q", gate, handler >> 32))
    mem.write(CODE, snippet.code)
    s = snippet.sym
    mem.write(s["cr0_bits"], struct.pack("<Q", CR0_GUEST))
    mem.write(s["cr4_bits"], struct.pack("<Q", CR4_GUEST))
    mem.write(s["fcw"], struct.pack("<H", FCW))
    mem.write(s["mxcsr_value"], struct.pack("<I", MXCSR))
    mem.write(s["rflags_value"], struct.pack("<Q", RFLAGS))
    mem.write(s["fp_values"], b"".join(struct.pack("<QH", m, e) for e, m in FP_VALUES))
    mem.write(s["xmm_values"], b"".join(x.to_bytes(16, "little") for x in XMM_VALUES))
    mem.write(s["gpr_values"], struct.pack("<16Q", *(GPR_VALUES[n] for n in GPR_NAMES)))
    mem.write(s["dr_values"], struct.pack("<6Q", *DEBUG_VALUES.values()))
    mem.write(s["msr_writes"], msr_list(written))
    for area in ("msr_seen1", "msr_seen2"):
        mem.write(s[area], msr_list(dict.fromkeys(read_back, 0)))


def seg(selector: int, type_: int, code: bool = False, **kw: int) -> Segment:
    fields = dict(base=0, limit=0xFFFF_FFFF, selector=selector, type=type_, present=1, dpl=0,
                  db=0 if code else 1, s=1, l=1 if code else 0, g=1) | kw
    return Segment(**fields)


def long_mode() -> SpecialRegs:
    """64-bit ring 0 with paging, as a kernel runs: what phase1 starts from."""
    s = SpecialRegs()
    s.cs = seg(K_CS, 0xB, code=True)
    for name in ("ds", "es", "fs", "gs", "ss"):
        setattr(s, name, seg(K_DS, 0x3))
    s.tr = Segment(limit=0xFFFF, type=0xB, present=1)  # phase1 loads its own TSS
    s.ldt = Segment(unusable=1)
    s.gdt.base, s.gdt.limit = GDT, len(gdt()) - 1
    s.idt.base, s.idt.limit = IDT, 256 * 16 - 1
    s.cr0, s.cr3, s.cr4 = CR0_PE | CR0_ET | CR0_PG, PML4, CR4_PAE | CR4_OSFXSR
    s.efer, s.apic_base = EFER_LME | EFER_LMA, 0xFEE0_0900
    return s


class Vm:
    """A fresh machine of one backend with one vCPU and RAM."""

    def __init__(self, accel: str, cpuid_from: str | None = None) -> None:
        self.accel = accel
        self.mem = GuestMemory(RAM, RAM)
        self.machine = machine_factory(accel)[0]([HYPERCALL_MSR])
        self.machine.map_memory(0, 0, RAM, self.mem.host_address)
        self.vcpu: VcpuBackend = self.machine.create_vcpu(0, HYPERCALL_PORT)
        self.cpuid = cpuid_table(cpuid_from or accel)
        self.vcpu.set_cpuid(self.cpuid)
        self.written: dict[int, int] = {}
        self.read_back: list[int] = []

    def start(self, snippet: Snippet, also: str | None = None) -> None:
        """Phase 1 set up; `also`: a backend the guest must suit too (where it moves)."""
        tables = [self.cpuid, cpuid_table(self.accel)] + ([cpuid_table(also)] if also else [])
        self.written = msr_writes(tables, snippet.sym)
        self.read_back = guest_msrs(tables)
        write_guest(self.mem, snippet, self.written, self.read_back)
        self.vcpu.set_sregs(long_mode())
        self.vcpu.set_initial_regs(Regs(rip=snippet.sym["phase1"], rsp=KERNEL_RSP, rflags=2))

    def run_to(self, wanted: Exit) -> None:
        for _ in range(1000):
            exit_ = self.vcpu.run()
            if exit_ is not Exit.KICKED:
                v = self.vcpu
                assert exit_ is wanted, f"{self.accel}: {exit_!r} at rip {v.regs.rip:#x} " \
                    f"(port {v.exit_port:#x}, msr {v.exit_msr:#x}) {v.exit_error}"
                return
        raise AssertionError(f"{self.accel}: no {wanted!r} exit")

    def run_to_port(self) -> int:
        """Run to the next debug-port write; its value."""
        self.run_to(Exit.IO_OUT)
        assert self.vcpu.exit_port == DEBUG_PORT
        return self.vcpu.exit_value

    def run_to_mmio(self) -> int:
        """Run to phase 1's store to MMIO; the byte stored."""
        self.run_to(Exit.MMIO)
        v = self.vcpu
        assert (v.exit_value, v.exit_size, v.exit_is_write) == (MMIO, 1, True)
        v.complete_mmio(0)
        return v.exit_data

    def read(self, address: int, size: int) -> bytes:
        return self.mem.read(address, size)

    def q(self, address: int) -> int:
        return struct.unpack("<Q", self.read(address, 8))[0]

    def close(self) -> None:
        self.machine.close()
        self.mem.close()


@functools.cache
def cpuid_table(accel: str) -> list[tuple[int, int, int, int, int, int]]:
    """The CPUID a guest of `accel` gets (both vCPUs of a cross-backend move get one table,
    as a migrated guest keeps its CPUID). Not to be changed: it is shared."""
    machine = machine_factory(accel)[0]([HYPERCALL_MSR])
    try:
        return guest_cpuid(machine.host_cpuid(), 1, 0, 1_000_000)
    finally:
        machine.close()


@pytest.fixture
def vms() -> Iterator[Callable[..., Vm]]:
    made: list[Vm] = []

    def make(accel: str, cpuid_from: str | None = None) -> Vm:
        made.append(Vm(accel, cpuid_from))
        return made[-1]

    yield make
    for vm in made:
        vm.close()


def on_another_thread(fn: Callable[[], object]) -> object:
    """Call fn on a new thread (save/restore need not come from the vCPU's own); its result."""
    out: list[object] = []
    failed: list[BaseException] = []

    def call() -> None:
        try:
            out.append(fn())
        except BaseException as e:  # noqa: BLE001 - re-raised on the caller's thread
            failed.append(e)

    t = threading.Thread(target=call)
    t.start()
    t.join()
    if failed:
        raise failed[0]
    return out[0]


def through_json(state: CpuState) -> CpuState:
    return CpuState.from_dict(json.loads(json.dumps(state.to_dict())))


def on_kvm_pvm(vm: Vm) -> bool:
    """KVM without vmx/svm: kvm_pvm, whose guest ring 3 runs natively on the host's state."""
    return vm.accel == "kvm" and not hardware_virtualization()


def backends(*wanted: str) -> None:
    missing = [name for name in wanted if name not in AVAILABLE]
    if missing:
        pytest.skip(f"the {', '.join(missing)} backend is not usable on this machine")


# --- what the guest must see -------------------------------------------------------------------
def fp80(exponent: int, mantissa: int) -> bytes:
    return struct.pack("<QH", mantissa, exponent)


def check_vector_state(image: bytes) -> None:
    """An FXSAVE64 image holds the snippet's x87 and SSE values."""
    fcw, fsw, ftw = struct.unpack_from("<HHB", image)
    assert fcw == FCW
    assert fsw >> 11 & 7 == 8 - len(FP_VALUES), "TOP after six loads"
    assert ftw == 0xFC, "abridged tag: R2-R7 in use, R0 and R1 empty"
    assert struct.unpack_from("<I", image, 24)[0] == MXCSR
    for i, (exponent, mantissa) in enumerate(reversed(FP_VALUES)):
        assert image[32 + 16 * i : 42 + 16 * i] == fp80(exponent, mantissa), f"ST{i}"
    for i, value in enumerate(XMM_VALUES):
        assert image[160 + 16 * i : 176 + 16 * i] == value.to_bytes(16, "little"), f"XMM{i}"


def check_saved(state: CpuState, sym: dict[str, int], written: dict[int, int]) -> None:
    """The backend's report has the guest's values in it."""
    r, s = state.regs, state.sregs
    assert {n: getattr(r, n) for n in GPR_VALUES} == GPR_VALUES
    assert (r.rip, r.rflags) == (sym["resume"], RFLAGS)
    assert (s.cs.selector, s.cs.dpl, s.cs.l, s.ss.selector, s.ss.dpl) == (U_CS, 3, 1, U_SS, 3)
    es = s.es
    assert (es.selector, es.base, es.limit, es.type, es.dpl, es.db, es.g, es.avl) == \
        (ODD_SEL, ODD_BASE, ODD_LIMIT, 3, 3, 1, 0, 1)
    assert (s.fs.base, s.gs.base) == (MSR_WRITES[MSR_FS_BASE], MSR_WRITES[MSR_GS_BASE])
    assert (s.fs.limit, s.gs.avl) == (ODD_LIMIT, 1)
    assert (s.tr.selector, s.tr.base, s.tr.type) == (TR_SEL, TSS, 0xB)
    assert (s.ldt.selector, s.ldt.base, s.ldt.limit) == (LDT_SEL, LDT, 0xF)
    assert s.cr0 & CR0_GUEST == CR0_GUEST and s.cr4 & CR4_GUEST == CR4_GUEST
    assert s.efer & (EFER_SCE | EFER_NXE) == EFER_SCE | EFER_NXE
    check_vector_state(state.fxsave)
    for index, value in written.items():
        if index in CPU_MSRS:
            assert state.msrs[index] == value, CPU_MSRS[index]
    assert state.debugregs == DEBUG_VALUES
    assert state.pending_exception is None and state.pending_interrupt is None


def msrs_seen(vm: Vm, area: str, sym: dict[str, int], count: int) -> dict[int, int]:
    raw = vm.read(sym[area], 16 * count)
    return {index: value for index, _, value in struct.iter_unpack("<IIQ", raw)}


def unfixed(image: bytes, soft: bool) -> bytes:
    """An FXSAVE64 image the guest stored, without what its CPU fixes: MXCSR_MASK (a
    constant of the CPU) and, on the software CPU, FDP: QEMU keeps it (FNSTENV shows it)
    but its FXSAVE stores 0 there."""
    image = image[:28] + bytes(4) + image[32:]
    return image[:16] + bytes(8) + image[24:] if soft else image


def check_guest_view(before: Vm, after: Vm, sym: dict[str, int], saved: CpuState,
                     tsc_carried: bool) -> None:
    """What the guest stored on the destination equals what it had on the source."""
    gprs = struct.unpack("<16Q", after.read(sym["gpr_seen"], 128))
    assert dict(zip(GPR_NAMES, gprs, strict=True)) == GPR_VALUES
    assert after.q(sym["rflags_seen"]) == RFLAGS
    seen1, seen2 = before.read(sym["fx_seen1"], 512), after.read(sym["fx_seen2"], 512)
    check_vector_state(seen1)
    soft = "soft" in (before.accel, after.accel)
    assert unfixed(seen2, soft) == unfixed(seen1, soft), \
        "the guest's own FXSAVE64, FIP and FOP included"
    assert struct.unpack("<6H", after.read(sym["seg_seen"], 12)) == \
        (U_CS, U_SS, ODD_SEL, ODD_SEL, ODD_SEL, ODD_SEL)
    assert after.q(sym["return_rip"]) == sym["to_kernel"]
    assert after.read(sym["kernel_cs"], 2) == struct.pack("<H", K_CS)
    count = len(before.read_back)
    assert msrs_seen(after, "msr_seen2", sym, count) == msrs_seen(before, "msr_seen1", sym, count), \
        "every MSR, read back by the guest"
    for index, value in before.written.items():
        assert msrs_seen(after, "msr_seen2", sym, count)[index] == value, f"MSR {index:#x}"
    cr0, cr3, cr4 = struct.unpack("<3Q", after.read(sym["cr_seen"], 24))
    assert cr0 & CR0_GUEST == CR0_GUEST and cr3 == PML4 and cr4 & CR4_GUEST == CR4_GUEST
    assert after.read(sym["gdtr_seen"], 10) == struct.pack("<HQ", len(gdt()) - 1, GDT)
    assert after.read(sym["idtr_seen"], 10) == struct.pack("<HQ", 256 * 16 - 1, IDT)
    assert struct.unpack("<2H", after.read(sym["tr_seen"], 2) + after.read(sym["ldtr_seen"], 2)) \
        == (TR_SEL, LDT_SEL)
    assert struct.unpack("<6Q", after.read(sym["dr_seen"], 48)) == tuple(DEBUG_VALUES.values())
    if before.q(sym["xsave_on"]):  # CPUID offered XSAVE: XCR0 is all that leaf 0xd offers
        assert cr4 & CR4_OSXSAVE and saved.xcr0 != 1
        if not on_kvm_pvm(after):  # which runs guest ring 3 with the host's XCR0
            assert after.q(sym["xcr0_seen"]) == saved.xcr0
    if tsc_carried:
        assert before.q(sym["tsc_seen1"]) <= after.q(sym["tsc_seen2"]), "the TSC went back"


def comparable(state: CpuState) -> dict[str, object]:
    """A state's encoding without what legitimately differs between saves of one state on two
    backends: the time, MXCSR_MASK (a constant of the CPU) and the MSRs only one of them
    keeps (TSC_ADJUST, SPEC_CTRL) while they hold their reset value 0."""
    d = state.to_dict()
    del d["tsc"]
    fx = bytes.fromhex(d["fxsave"])  # type: ignore[arg-type]
    d["fxsave"] = (fx[:28] + bytes(4) + fx[32:]).hex()
    msrs = d["msrs"]
    assert isinstance(msrs, dict)
    for index in (MSR_TSC_ADJUST, MSR_SPEC_CTRL):
        if not msrs.get(f"{index:#x}"):
            msrs.pop(f"{index:#x}", None)
    return d


# --- the move ------------------------------------------------------------------------------------
def kvm_takes_tsc(vms: Callable[..., Vm]) -> bool:
    """Whether this host's KVM sets a vCPU's TSC when told to (kvm_pvm keeps the host's)."""
    vm = vms("kvm")
    state = vm.vcpu.save_cpu()
    state.tsc += 1 << 40  # minutes ahead
    vm.vcpu.load_cpu(state)
    return vm.vcpu.read_tsc() >= state.tsc


def move(snippet: Snippet, vms: Callable[..., Vm], source: str, destination: str) -> None:
    # A moved guest keeps its CPUID: the software CPU's table, which kvm_pvm's own (it
    # offers the host's XSAVE and AVX whatever it is told) does not contradict.
    cpuid_from = source if source == destination else "soft"
    a = vms(source, cpuid_from)
    a.start(snippet, also=destination)
    assert a.run_to_mmio() == GPR_VALUES["rax"] & 0xFF
    saved = on_another_thread(a.vcpu.save_cpu)
    assert isinstance(saved, CpuState)
    check_saved(saved, snippet.sym, a.written)
    carried = through_json(saved)
    assert carried == saved

    b = vms(destination, cpuid_from)
    b.mem.write(0, a.mem.read(0, RAM))  # the memory moves too, as migration copies it
    on_another_thread(lambda: b.vcpu.load_cpu(carried))
    again = b.vcpu.save_cpu()
    if source == destination:
        assert again.to_dict() | {"tsc": 0} == saved.to_dict() | {"tsc": 0}
    else:
        assert comparable(again) == comparable(saved)
    tsc_carried = destination == "soft" or kvm_takes_tsc(vms)
    assert again.tsc >= saved.tsc or not tsc_carried

    assert b.run_to_port() == 1, "the guest went on where it stopped, into ring 0"
    check_guest_view(a, b, snippet.sym, saved, tsc_carried)


@pytest.mark.parametrize("accel", ["soft", "kvm"])
def test_a_state_moves_into_a_fresh_vcpu_of_the_same_backend(snippet, vms, accel) -> None:
    backends(accel)
    move(snippet, vms, accel, accel)


@pytest.mark.parametrize(("source", "destination"), [("soft", "kvm"), ("kvm", "soft")])
def test_a_state_moves_between_backends(snippet, vms, source, destination) -> None:
    backends(source, destination)
    move(snippet, vms, source, destination)


# --- events in flight ----------------------------------------------------------------------------
def stopped_in_ring3(snippet: Snippet, vms: Callable[..., Vm], accel: str) -> tuple[Vm, CpuState]:
    vm = vms(accel)
    vm.start(snippet)
    vm.run_to_mmio()
    return vm, vm.vcpu.save_cpu()


def fresh_with(vms: Callable[..., Vm], source: Vm, state: CpuState) -> Vm:
    vm = vms(source.accel)
    vm.mem.write(0, source.mem.read(0, RAM))
    vm.vcpu.load_cpu(state)
    return vm


def test_a_pending_exception_is_delivered_first_with_its_error_code(snippet, vms, accel) -> None:
    source, state = stopped_in_ring3(snippet, vms, accel)
    state.pending_exception = PendingException(13, 0x1234)
    vm = fresh_with(vms, source, state)
    assert vm.vcpu.save_cpu().pending_exception == PendingException(13, 0x1234)
    assert vm.run_to_port() == 13
    error, rip, cs = struct.unpack("<3Q", vm.read(RSP0 - 48, 24))
    assert (error, rip, cs) == (0x1234, snippet.sym["resume"], U_CS)


def test_an_accepted_interrupt_is_delivered_before_the_next_instruction(snippet, vms,
                                                                         accel) -> None:
    source, state = stopped_in_ring3(snippet, vms, accel)
    state.pending_interrupt = 0x40
    vm = fresh_with(vms, source, state)
    assert vm.vcpu.save_cpu().pending_interrupt == 0x40
    assert not vm.vcpu.inject_interrupt(0x41), "a second vector must wait for the first"
    assert vm.run_to_port() == 0x40
    rip, cs = struct.unpack("<2Q", vm.read(RSP0 - 40, 16))
    assert (rip, cs) == (snippet.sym["resume"], U_CS)


def test_the_interrupt_shadow_is_carried(snippet, vms, accel) -> None:
    source, state = stopped_in_ring3(snippet, vms, accel)
    state.interrupt_shadow = SHADOW_STI
    vm = fresh_with(vms, source, state)
    assert vm.vcpu.save_cpu().interrupt_shadow == SHADOW_STI


def test_nmi_state_is_refused_by_the_software_cpu_which_has_no_nmis(snippet, vms) -> None:
    backends("soft")
    source, state = stopped_in_ring3(snippet, vms, "soft")
    assert not state.nmi_pending and not state.nmi_masked
    state.nmi_pending = True
    with pytest.raises(ValueError, match="NMI"):
        vms("soft").vcpu.load_cpu(state)


def test_a_pending_nmi_is_delivered_on_kvm(snippet, vms) -> None:
    backends("kvm")
    source, state = stopped_in_ring3(snippet, vms, "kvm")
    state.nmi_pending = True
    vm = fresh_with(vms, source, state)
    assert vm.vcpu.save_cpu().nmi_pending
    assert vm.run_to_port() == 2
    after = vm.vcpu.save_cpu()
    assert after.nmi_masked and not after.nmi_pending, "NMIs stay blocked until IRET"


# --- parts only the API reaches --------------------------------------------------------------------
def test_ymm_upper_halves_round_trip(snippet, vms, accel) -> None:
    """No guest code here: the software CPU keeps YMM state but has no AVX instructions."""
    source, state = stopped_in_ring3(snippet, vms, accel)
    assert state.xcr0 & XCR0_AVX, "the guest enabled AVX state with XSETBV"
    state.ymmh = bytes(random.Random(7).getrandbits(8) for _ in range(256))
    vm = fresh_with(vms, source, state)
    assert vm.vcpu.save_cpu().ymmh == state.ymmh


def test_loading_a_tsc_makes_the_guest_tsc_continue_from_it(snippet, vms, accel) -> None:
    if accel == "kvm" and not kvm_takes_tsc(vms):
        pytest.skip("this host's KVM ignores TSC writes (kvm_pvm: the guest reads the host's)")
    source, state = stopped_in_ring3(snippet, vms, accel)
    state.tsc = 1 << 50
    vm = fresh_with(vms, source, state)
    first = vm.vcpu.read_tsc()
    assert state.tsc <= first
    assert vm.run_to_port() == 1
    seen = vm.q(snippet.sym["tsc_seen2"])
    assert first <= seen < state.tsc + 3600 * vm.machine.tsc_khz * 1000, "an hour is plenty"


def test_the_software_cpus_share_one_tsc_and_a_load_moves_it(vms) -> None:
    backends("soft")
    vm = vms("soft")
    other = vm.machine.create_vcpu(1, HYPERCALL_PORT)
    state = vm.vcpu.save_cpu()
    state.tsc = (1 << 62) + 12345
    vm.vcpu.load_cpu(state)
    assert state.tsc <= other.read_tsc() < state.tsc + 3600 * 10**9


def test_the_software_cpu_refuses_what_it_cannot_hold(vms) -> None:
    backends("soft")
    vm = vms("soft")
    base = vm.vcpu.save_cpu()
    cases: list[tuple[Callable[[CpuState], None], str]] = [
        (lambda s: setattr(s.sregs, "cr4", s.sregs.cr4 | (1 << 12)), "CR4"),  # LA57
        (lambda s: s.msrs.__setitem__(MSR_TSC_ADJUST, 5), "TSC_ADJUST"),
        (lambda s: setattr(s.sregs, "cr0", CR0_PG), "CR0"),  # paging without protection
        (lambda s: setattr(s.sregs, "efer", s.sregs.efer | 1 << 12), "EFER"),  # SVME
    ]
    for change, words in cases:
        state = copy.deepcopy(base)
        change(state)
        with pytest.raises(ValueError, match=words):
            vm.vcpu.load_cpu(state)


# --- hostile input -----------------------------------------------------------------------------------
def valid_dict() -> dict:
    state = CpuState(regs=Regs(rip=0x1000, rflags=2), sregs=long_mode(),
                     fxsave=bytes(24) + struct.pack("<II", 0x1F80, 0xFFFF) + bytes(480),
                     ymmh=bytes(256), xcr0=1, msrs={MSR_PAT: 0x0007_0406_0007_0406}, tsc=5)
    return state.to_dict()


def _set(path: str, value: object) -> Callable[[dict], None]:
    def change(d: dict) -> None:
        *parents, last = path.split(".")
        for key in parents:
            d = d[key]
        d[last] = value
    return change


def _drop(path: str) -> Callable[[dict], None]:
    def change(d: dict) -> None:
        *parents, last = path.split(".")
        for key in parents:
            d = d[key]
        del d[last]
    return change


MALFORMED = {
    "fxsave too short": _set("fxsave", "00" * 511),
    "fxsave not hex": _set("fxsave", "zz" * 512),
    "fxsave bytes": _set("fxsave", [0] * 512),
    "ymmh too long": _set("ymmh", "00" * 257),
    "rax a string": _set("regs.rax", "1"),
    "rax a bool": _set("regs.rax", True),
    "rax past 64 bits": _set("regs.rax", 1 << 64),
    "rip negative": _set("regs.rip", -1),
    "selector past 16 bits": _set("sregs.cs.selector", 0x10000),
    "dpl 4": _set("sregs.ss.dpl", 4),
    "segment type 16": _set("sregs.cs.type", 16),
    "gdt limit a float": _set("sregs.gdt.limit", 1.5),
    "regs missing rip": _drop("regs.rip"),
    "cs missing dpl": _drop("sregs.cs.dpl"),
    "no tsc": _drop("tsc"),
    "unknown top-level key": _set("extra", 1),
    "padding smuggled in": _set("sregs.gdt.padding", [0, 0, 0]),
    "interrupt bitmap smuggled in": _set("sregs.interrupt_bitmap", [1, 0, 0, 0]),
    "regs a list": _set("regs", [0] * 18),
    "msrs a list": _set("msrs", []),
    "unknown MSR": _set("msrs", {"0x10": 0}),
    "MSR key not canonical": _set("msrs", {"0x0277": 0}),
    "MSR key decimal": _set("msrs", {"631": 0}),
    "LSTAR not canonical": _set("msrs", {f"{MSR_LSTAR:#x}": 0x0000_8000_0000_0000}),
    "PAT type 2": _set("msrs", {f"{MSR_PAT:#x}": 0x0007_0406_0007_0402}),
    "TSC_AUX past 32 bits": _set("msrs", {"0xc0000103": 1 << 32}),
    "xcr0 without x87": _set("xcr0", 2),
    "xcr0 with AVX-512": _set("xcr0", 0xE7),
    "xcr0 AVX without SSE": _set("xcr0", 5),
    "MXCSR reserved bit": _set("fxsave", ("00" * 24) + "00000100" + "00" * 484),
    "DR7 past 32 bits": _set("debugregs.dr7", 1 << 32),
    "debugregs missing dr6": _drop("debugregs.dr6"),
    "exception vector 40": _set("pending_exception", {"vector": 40, "error_code": None}),
    "NMI as an exception": _set("pending_exception", {"vector": 2, "error_code": None}),
    "exception missing error_code": _set("pending_exception", {"vector": 13}),
    "error code past 32 bits": _set("pending_exception", {"vector": 13, "error_code": 1 << 32}),
    "interrupt vector 256": _set("pending_interrupt", 256),
    "shadow 4": _set("interrupt_shadow", 4),
    "nmi_pending 1": _set("nmi_pending", 1),
    "tsc a string": _set("tsc", "5"),
}


def test_a_valid_encoding_reads_back() -> None:
    data = valid_dict()
    assert CpuState.from_dict(json.loads(json.dumps(data))).to_dict() == data


@pytest.mark.parametrize("change", MALFORMED.values(), ids=MALFORMED.keys())
def test_from_dict_rejects_malformed_input_with_one_line(change: Callable[[dict], None]) -> None:
    data = valid_dict()
    change(data)
    with pytest.raises(ValueError) as caught:
        CpuState.from_dict(data)
    message = str(caught.value)
    assert message.startswith("CPU state: ") and "\n" not in message


@pytest.mark.parametrize("data", [None, [], "state", 5])
def test_from_dict_rejects_what_is_not_an_object(data: object) -> None:
    with pytest.raises(ValueError, match="^CPU state: state: not an object$"):
        CpuState.from_dict(data)


def test_a_hostile_key_is_shown_short_and_on_one_line() -> None:
    data = valid_dict()
    data["x\n" * 1000] = 1
    with pytest.raises(ValueError) as caught:
        CpuState.from_dict(data)
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 120


# --- KVM's structs against <linux/kvm.h> ---------------------------------------------------------------
def test_kvm_save_restore_structs_match_the_linux_headers(tmp_path: Path) -> None:
    from pyxen.kvm import uapi as K

    layouts = [("struct kvm_vcpu_events", K.kvm_vcpu_events, {}),
               ("struct kvm_xsave", K.kvm_xsave, {}),
               ("struct kvm_xcr", K.kvm_xcr, {}),
               ("struct kvm_xcrs", K.kvm_xcrs, {}),
               ("struct kvm_debugregs", K.kvm_debugregs, {})]
    ioctls = ["KVM_GET_VCPU_EVENTS", "KVM_SET_VCPU_EVENTS", "KVM_GET_DEBUGREGS",
              "KVM_SET_DEBUGREGS", "KVM_GET_XSAVE", "KVM_SET_XSAVE", "KVM_GET_XCRS",
              "KVM_SET_XCRS", "KVM_GET_REGS"]
    prints = " ".join(f'printf("{n} %lu\\n", (unsigned long){n});' for n in ioctls)
    c = compile_layouts(tmp_path, "#include <linux/kvm.h>\n__attribute__((constructor)) "
                        f"static void c(void) {{ {prints} }}", layouts)
    for ctype, cls, renames in layouts:
        check_layout(c, ctype, cls, renames)
    for name in ioctls:
        assert getattr(K, name) == c[name], name
