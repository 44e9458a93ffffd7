"""A software vCPU: one Unicorn engine driven by the vCPU's own thread.

How the VM-exit model of `pyxen.domain.backend` maps onto an emulator:

- **Port I/O** comes to the engine's IN/OUT hooks; no state is kept per address, so nothing
  can go stale when the guest changes its page tables. A stop requested in a hook takes
  effect only at the engine's next memory access or block end (register-only instructions
  after it still run), so a hook that must stop *rewinds*: it snapshots the CPU state at
  the instruction, stops, and run() restores the snapshot and completes the instruction
  itself -- exact state, as a hardware VM exit shows it. An OUT does that (a write to the
  hypercall port is Exit.HYPERCALL). An IN is answered inside its hook ("no device": all
  ones) and does not stop. Both check the I/O permission (CPL > IOPL: the TSS bitmap), which
  the engine does not; a refused one is rewound and faulted.
- **RDMSR/WRMSR** of the MSRs pyxen owns (Xen's hypercall-page MSR): the engine has no hook
  for them, so they are found by scanning the code the guest runs right after it reads a
  hypervisor CPUID leaf (how Xen guests discover that MSR) and the code a vCPU runs first;
  each site gets a code hook that stops the engine *before* the instruction when ECX names
  such an MSR, and pyxen completes it (other MSRs run in the engine). A code hook is only
  consulted when the engine translates that address, so an unmapped site costs nothing; a
  site whose code changed is dropped the next time it fires.
- **VMCALL/VMMCALL** are invalid instructions to the engine: they are Xen hypercalls
  (Linux since the XSA-466 fixes uses them instead of the hypercall page).
- **SYSCALL/SYSENTER** come to hooks (the engine skips them); `fastcall` performs them.
- **CR4 writes** are intercepted through QEMU's SVM intercept bitmap (see cpustate.py) and
  checked against the CPUID policy (x86.cr4): a bit for a feature not offered is #GP(0).
- **HLT** ends `emu_start`; **kick()** from any thread sets a flag that a machine-code block
  hook reads, which stops the engine exactly at its next block (stopper.py): Unicorn's own
  `emu_stop` from another thread can make instructions run twice.
- **Exceptions and `int n`** come to a hook; they and injected interrupts are delivered
  through the guest's IDT by `interrupts.deliver`. QEMU's record of the exception in flight
  is cleared after each delivery (else the next #PF would become a #DF), and a stop the
  engine gives no reason for, repeated at one address, ends the vCPU instead of spinning.
- **MMIO**: an access outside the mapped RAM stops the engine at the instruction; after the
  VMM answers, the instruction is replayed once against a scratch page.
- **Read-only slots** are mapped read + execute; the write-protection hook refuses a store
  to one (the engine stops at the instruction), which is reported as an MMIO write at its
  guest-physical address; the instruction is then replayed once against a copy of the slot.
- **TSC**: RDTSC/RDTSCP are hooked and return host monotonic time at `tsc_khz` (in C
  where native code is available, native.py, else in Python). RDTSC's
  hook is the first instruction hook: with a stop pending (a kick) the engine calls only
  the first one, and runs its own RDTSC (the host's TSC) if that is not RDTSC's.
- **Save/restore** (`save_cpu`/`load_cpu`, savestate.py): from any thread while run() is
  not running. The engine has no NMIs and holds no injected interrupt (inject_interrupt
  delivers at once); a loaded one waits in `_pending_interrupt` for the next run().
"""

from __future__ import annotations

import contextlib
import ctypes as C
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from unicorn import (
    UC_ARCH_X86,
    UC_ERR_FETCH_UNMAPPED,
    UC_ERR_INSN_INVALID,
    UC_ERR_READ_UNMAPPED,
    UC_ERR_WRITE_PROT,
    UC_ERR_WRITE_UNMAPPED,
    UC_HOOK_BLOCK,
    UC_HOOK_CODE,
    UC_HOOK_INSN,
    UC_HOOK_INTR,
    UC_HOOK_MEM_UNMAPPED,
    UC_HOOK_MEM_WRITE_PROT,
    UC_MEM_WRITE_UNMAPPED,
    UC_MODE_64,
    UC_PROT_ALL,
    Uc,
    UcError,
)
from unicorn import x86_const as X
from unicorn.unicorn_py3.arch.intel import HOOK_INSN_CPUID_CFUNC
from unicorn.unicorn_py3.unicorn import uclib

from pyxen.domain.backend import Cpuid, Exit, Regs, SpecialRegs, no_device_read
from pyxen.domain.cpu_state import SHADOW_STI, CpuState, PendingException
from pyxen.domain.memory import PAGE_SHIFT, PAGE_SIZE, GuestMemoryError
from pyxen.hv import atomic
from pyxen.hv.guest_access import GuestAccess
from pyxen.hv.pagewalk import PageFault, PagingState, translate
from pyxen.x86 import cr4

from . import fastcall, native, savestate
from .cpustate import (
    EFER_LMA,
    EXCP_VMEXIT_SHUTDOWN,
    EXCP_VMEXIT_WRITE_CR4,
    HF_CPL,
    HF_CS32,
    HF_CS64,
    HF_INHIBIT_IRQ,
    SEG_CS,
    SEG_DS,
    SEG_ES,
    SEG_FS,
    SEG_GDT,
    SEG_GS,
    SEG_IDT,
    SEG_LDT,
    SEG_SS,
    SEG_TR,
    Context,
    from_segment,
    to_segment,
)
from .dirty import HOOK_MEM_CFUNC, TRACKED
from .faults import refine, software_length
from .insn import (
    GPR_NAMES,
    HYPERCALL_INSNS,
    RDMSR,
    WRMSR,
    decode_mov_to_cr,
    decode_port_io,
    plain_store,
    straight_line_end,
)
from .interrupts import (
    BP,
    ERROR_CODE_VECTORS,
    GP,
    NM,
    OF,
    UD,
    Event,
    TripleFault,
    Unsupported,
    deliver,
    delivered_natively,
)
from .stopper import install_stop_hook

if TYPE_CHECKING:
    from .machine import SoftMachine

M32 = 0xFFFF_FFFF
M64 = 0xFFFF_FFFF_FFFF_FFFF
RFLAGS_TF = 1 << 8
RFLAGS_IF = 1 << 9
RFLAGS_VM = 1 << 17
IO_CHECK_REGS = (X.UC_X86_REG_CR0, X.UC_X86_REG_EFLAGS, X.UC_X86_REG_CS)
REG_IDS = [X.UC_X86_REG_RAX, X.UC_X86_REG_RBX, X.UC_X86_REG_RCX, X.UC_X86_REG_RDX,
           X.UC_X86_REG_RSI, X.UC_X86_REG_RDI, X.UC_X86_REG_RSP, X.UC_X86_REG_RBP,
           X.UC_X86_REG_R8, X.UC_X86_REG_R9, X.UC_X86_REG_R10, X.UC_X86_REG_R11,
           X.UC_X86_REG_R12, X.UC_X86_REG_R13, X.UC_X86_REG_R14, X.UC_X86_REG_R15,
           X.UC_X86_REG_RIP, X.UC_X86_REG_RFLAGS]
SEGMENTS = {"es": SEG_ES, "cs": SEG_CS, "ss": SEG_SS, "ds": SEG_DS, "fs": SEG_FS,
            "gs": SEG_GS, "tr": SEG_TR, "ldt": SEG_LDT}
# Leaves whose sub-leaf (ECX) selects different data (Intel SDM, CPUID).
INDEXED_LEAVES = frozenset([0x4, 0x7, 0xB, 0xD, 0xF, 0x10, 0x12, 0x14, 0x17, 0x18, 0x1D,
                            0x1E, 0x1F, 0x20, 0x23, 0x24, 0x8000001D, 0x80000020, 0x80000026])
HYPERVISOR_LEAVES = range(0x4000_0000, 0x5000_0000)
YIELD_S = 0.0005  # how long a vCPU waits for one it woke to enter its engine (woke)
MSR_SCAN_BLOCKS = 20_000  # translation blocks scanned for RDMSR/WRMSR after a Xen CPUID
BOOT_SCAN_BLOCKS = 2_000  # ... and from the vCPU's first instruction (direct MSR writes)
MSR_TSC_AUX = 0xC000_0103
# Stops with no reason (late kicks) in a row at one address before the vCPU gives up: the
# engine's own triple-fault handling ends emu_start like that, and must not spin.
IDLE_STOPS_LIMIT = 10_000
STEP_ATTEMPTS = 100  # a single step a kick stopped before its instruction is retried
REFINED_VECTORS = frozenset([UD, NM, GP])  # what Unicorn reports differently (faults.py)
SCRATCH = 4096


# Translated code per vCPU. Unicorn's default buffer is 1 GiB and is only flushed when full,
# so a guest that keeps code pages changing (data sharing a page with code, self-modifying
# code, the fuzzing guest) made each vCPU's RSS creep towards 1 GiB. Linux's boot to a shell
# translates ~40 MiB; a full buffer is flushed and refilled, which costs a few milliseconds.
TCG_BUFFER_BYTES = 64 << 20


class SoftVcpu:
    """One software vCPU (implements pyxen.domain.backend.VcpuBackend)."""

    def __init__(self, machine: SoftMachine, index: int, hypercall_port: int) -> None:
        self.machine = machine
        self.index = index
        self.hypercall_port = hypercall_port
        self.uc = Uc(UC_ARCH_X86, UC_MODE_64)
        self.uc.ctl_set_tcg_buffer_size(TCG_BUFFER_BYTES)  # before anything starts TCG
        self.uc.ctl_exits_enabled(True)  # and none set: `until` never stops a guest at 0
        self.ctx = Context(self.uc, machine.context_header)  # state at the last stop
        self._snapshot = Context(self.uc, machine.context_header)
        self.regs = Regs()
        n = len(REG_IDS)
        self._reg_ids = (C.c_int * n)(*REG_IDS)
        self._reg_ptrs = (C.c_void_p * n)(*(C.addressof(self.regs) + 8 * i for i in range(n)))
        self.thread_id: int | None = None
        self.exit_port = self.exit_size = self.exit_value = self.exit_msr = 0
        self.exit_is_write = False
        self.exit_data = 0
        self.exit_error = ""
        self._cpuid: dict[tuple[int, int], tuple[int, int, int, int]] = {}
        self._indexed: frozenset[int] = INDEXED_LEAVES
        self._msr_sites: dict[int, int] = {}  # address of a RDMSR/WRMSR -> its code hook
        self._msr_at: int | None = None  # the engine stopped before the MSR instruction here
        self._io: tuple[int, int, int, int] | None = None  # OUT: (port, size, value, rip)
        self._fast_call: str | None = None  # "syscall" / "sysenter" skipped by the engine
        self._cr4_at: int | None = None  # stopped before a mov to CR4 here
        self._shutdown_at: int | None = None  # the engine's stale triple fault, here
        self._last_shutdown = (-1, -1)  # (rip, guest_epoch) of the last one
        self._cr4_valid = cr4.ALWAYS
        # Set by the domain's vCPU: runs a hypercall from inside the OUT hook where the
        # hypercall's family allows it (see Vcpu.hypercall_inline); None: always exit.
        self.inline_hypercall: Callable[[], bool | None] | None = None
        self._rax_buf = C.c_uint64()
        self._idle_stops = 0
        self._last_idle_rip = -1
        self._rip_buf = C.c_uint64()
        self._io_reg_vals = [C.c_uint64() for _ in IO_CHECK_REGS]
        self._io_reg_ids = (C.c_int * len(IO_CHECK_REGS))(*IO_CHECK_REGS)
        self._io_reg_ptrs = (C.c_void_p * len(IO_CHECK_REGS))(
            *(C.addressof(v) for v in self._io_reg_vals))
        self._code_cache: dict[tuple[int, int], tuple[int, bytes]] = {}
        self._mapped: set[tuple[int, int, int, bool]] = set()  # (gpa, size, host, read-only)
        self._ram_generation = -1
        self._dirty = False  # regs changed by pyxen or by the backend: write before running
        self._fresh = False  # ctx holds the state of the current stop
        self._stopper = install_stop_hook(self.uc)  # kick() and _window: see stopper.py
        self._scan_blocks = BOOT_SCAN_BLOCKS
        self._block_hook: int | None = None
        self._stop: str | None = None  # why a hook stopped the engine
        self._exception: tuple[Event, int] | None = None
        self._rewind: tuple[str, int] | None = None  # (why, rip) to come back to
        self._unmapped: tuple[int, int, int, int] | None = None
        self._ro_write: tuple[int, int, int] | None = None  # (gpa, size, value) refused
        self._pending_event: Event | None = None
        self._pending_interrupt: int | None = None  # accepted elsewhere (load_cpu): deliver
        self._urgent = False  # an interrupt was just delivered: take the baton at once
        self._entered = threading.Event()  # set each time this vCPU enters its engine
        self._yielding: SoftVcpu | None = None  # woken by this vCPU: let it go first (woke)
        self._msr_pending: bool | None = None  # True: write, False: read
        self._mmio_replay: tuple[int, int, bool, int] | None = None
        self._scratch = C.create_string_buffer(SCRATCH)
        # Dirty logging (see dirty.py): frames stored to since this vCPU last left guest code,
        # whether its engine maps RAM read-only for that, and (under machine.log.cond)
        # whether it is running guest code and how many times it has stopped.
        self._written: set[int] = set()
        self._tracking = False
        self.in_guest = False
        self.guest_epoch = 0
        self._install_hooks()
        self.ctx.save()
        self.ctx.intercept_cr4_writes()
        self.ctx.restore()

    # --- hooks ----------------------------------------------------------------------------
    def _install_hooks(self) -> None:
        uc = self.uc
        # RDTSC's hook comes first. For RDTSC, RDTSCP, CPUID, SYSCALL and SYSENTER the engine
        # walks all instruction hooks in the order they were added and leaves the walk after
        # any of them once a stop is pending (requested by an earlier hook of the same
        # translation block; kicks from other threads stop only at a block's start, see
        # stopper.py); an instruction whose hook was not reached then gets
        # Unicorn's own behaviour, for RDTSC the host's TSC: the guest's clock jumps hours
        # ahead. Only the first hook is always called, so the clock, read most often, goes
        # there; the others keep that exposure (RDTSCP: the host's TSC; CPUID: QEMU's model;
        # SYSCALL/SYSENTER: skipped). The Python binding does not know RDTSC hooks; the
        # engine does. The clock and the null hypercall are answered in C where that is
        # possible (native.py), otherwise by Python hooks; each backend's RDTSC hook is the
        # first it adds. IN and OUT are safe anywhere in the list (their walk has no such
        # exit).
        self._cfuncs: list[object] = []
        self._native_out: native.OutHook | None = None
        self._native_tsc: native.TscHook | None = None  # kept: the engine points at it
        if (why_not := native.available()) is None:
            self._native_tsc = native.install_tsc_hooks(uc, self.machine.tsc_clock,
                                                        self._add_insn_hook)
            ipi = self.machine.ipi
            self._native_out = native.install_out_hook(
                uc, self.hypercall_port, self._on_out,
                lambda function, state: self._add_insn_hook(function, state,
                                                             X.UC_X86_INS_OUT),
                None if ipi is None else (ipi.table, ipi.call_woken))
        else:
            native.unavailable_once(why_not)
            for insn, with_aux in ((X.UC_X86_INS_RDTSC, False), (X.UC_X86_INS_RDTSCP, True)):
                self._cfuncs.append(HOOK_INSN_CPUID_CFUNC(
                    lambda _uc, _ud, aux=with_aux: self._on_rdtsc(aux)))
                self._add_insn_hook(self._cfuncs[-1], None, insn)
            uc.hook_add(UC_HOOK_INSN, self._on_out, None, 1, 0, X.UC_X86_INS_OUT)
        uc.hook_add(UC_HOOK_INSN, self._on_in, None, 1, 0, X.UC_X86_INS_IN)
        uc.hook_add(UC_HOOK_INSN, self._on_cpuid, None, 1, 0, X.UC_X86_INS_CPUID)
        uc.hook_add(UC_HOOK_INSN, self._on_syscall, None, 1, 0, X.UC_X86_INS_SYSCALL)
        uc.hook_add(UC_HOOK_INSN, self._on_sysenter, None, 1, 0, X.UC_X86_INS_SYSENTER)
        uc.hook_add(UC_HOOK_INTR, self._on_interrupt)
        uc.hook_add(UC_HOOK_MEM_UNMAPPED, self._on_unmapped)
        add = self._written.add  # the hot path while logging: one set insertion per store
        readonly = self.machine.ram.readonly_frames

        def on_write_prot(_uc: int, _type: int, address: int, size: int, value: int,
                          _ud: int) -> bool:
            if address >> 12 in readonly:  # a read-only slot: the store is refused
                self._ro_write = (address, size, value)
                return False
            add(address >> 12)
            return True

        self._cfuncs.append(HOOK_MEM_CFUNC(on_write_prot))
        handle = C.c_size_t()
        err = uclib.uc_hook_add(uc._uch, C.byref(handle), UC_HOOK_MEM_WRITE_PROT,
                                self._cfuncs[-1], None, C.c_uint64(1), C.c_uint64(0))
        if err:
            raise UcError(err)

    def _add_insn_hook(self, function: object, state: C.Structure | None, insn: int) -> None:
        """An instruction hook the binding does not wrap: a C function (with its state) or a
        ctypes callback of the engine's type (the binding knows no RDTSC hooks)."""
        handle = C.c_size_t()
        err = uclib.uc_hook_add(self.uc._uch, C.byref(handle), UC_HOOK_INSN, function,
                                None if state is None else C.byref(state),
                                C.c_uint64(1), C.c_uint64(0), C.c_int(insn))
        if err:
            raise UcError(err)

    def answer_natively(self, answers: dict[tuple[int, int], int]) -> None:
        """Hypercalls (nr, first argument) -> result that the native hook answers in the
        engine (HypercallTable.always); an empty dict: none."""
        if self._native_out is not None:
            self._native_out.set_answers((nr, subop, result)
                                         for (nr, subop), result in answers.items())

    @property
    def natively_answered(self) -> int:
        """How many hypercalls the native hook has answered (0 without it)."""
        return self._native_out.answered if self._native_out is not None else 0

    def _rewind_here(self, why: str, rip: int | None = None) -> None:
        """Stop and come back to the current instruction: the rest of its translation block
        still runs before the engine stops, so run() restores this snapshot afterwards."""
        if self._rewind is None:
            self._snapshot.save()
            self._rewind = (why, self._rip_now() if rip is None else rip)
            self.uc.emu_stop()

    def _rip_now(self) -> int:
        uclib.uc_reg_read(self.uc._uch, X.UC_X86_REG_RIP, C.byref(self._rip_buf))
        return self._rip_buf.value

    def _on_out(self, uc: Uc, port: int, size: int, value: int, _: object) -> None:
        """Rewound to the OUT; run() completes it and reports the exit."""
        if self._rewind is None:
            if port == self.hypercall_port and self.inline_hypercall is not None \
                    and self._hypercall_in_hook():
                return
            rip = self._rip_now()
            self._io = (port, size, value, rip)
            self._rewind_here("out", rip)

    def _hypercall_in_hook(self) -> bool:
        """Run the hypercall without leaving the engine, if the domain agrees. The engine's
        registers are exact here (synced for the hook) and it reads rax back afterwards."""
        assert self.inline_hypercall is not None
        self._read_regs()
        self.ctx.save()
        self._fresh = True  # cpl() and is_64bit() from the state at the OUT
        # No guest code runs while a hook does: give the baton back for the hypercall, which
        # may wait for a lock held by a thread that wants the baton (baton.exclusive).
        self.machine.baton.release()
        try:
            done = self.inline_hypercall()
        finally:
            self._fresh = False
            self.machine.baton.acquire(self)
        if done is None:
            return False
        self._rax_buf.value = self.regs.rax
        uclib.uc_reg_write(self.uc._uch, X.UC_X86_REG_RAX, C.byref(self._rax_buf))
        self._dirty = False  # the other registers in self.regs are the engine's already
        if not done:  # something to deliver: leave the engine (the hypercall is complete)
            self._stop = "inline"
            self.uc.emu_stop()
        return True

    def _on_in(self, uc: Uc, port: int, size: int, _: object) -> int:
        """Answered here; the engine goes on. A refused IN is rewound and faulted."""
        if not self._io_allowed_now(port, size):
            self._rewind_here("io-denied")
        return no_device_read(size)

    def _io_allowed_now(self, port: int, size: int) -> bool:
        """_io_allowed for an IN, from inside its hook (one batched register read)."""
        uclib.uc_reg_read_batch(self.uc._uch, self._io_reg_ids, self._io_reg_ptrs, 3)
        cr0, rflags, cs = (v.value for v in self._io_reg_vals)
        try:
            return self._io_allowed(port, size, cr0, rflags, cs & 3)
        finally:
            self._fresh = False  # a state saved in here is not the state at the stop

    def _io_allowed(self, port: int, size: int, cr0: int, rflags: int, cpl: int) -> bool:
        """Port I/O is allowed in real mode, at CPL <= IOPL outside virtual-8086 mode, and
        otherwise where the TSS I/O-permission bitmap allows it (the engine checks none)."""
        if not cr0 & 1 or (cpl <= (rflags >> 12 & 3) and not rflags & RFLAGS_VM):
            return True
        return self._io_permitted(port, size)

    def _on_syscall(self, uc: Uc, _: object) -> None:
        self._fast_call = "syscall"  # skipped by the engine: run() performs it
        uc.emu_stop()

    def _on_sysenter(self, uc: Uc, _: object) -> None:
        self._fast_call = "sysenter"
        uc.emu_stop()

    def _on_msr_site(self, uc: Uc, address: int, size: int, _: object) -> None:
        """Before a RDMSR/WRMSR found by the scan: stop if it is for an MSR pyxen owns."""
        if uc.reg_read(X.UC_X86_REG_ECX) & M32 in self.machine.msr_exits:
            self._msr_at = address
            uc.emu_stop()

    def _on_cpuid(self, uc: Uc, _: object) -> int:
        leaf = uc.reg_read(X.UC_X86_REG_RAX) & M32
        if leaf in HYPERVISOR_LEAVES and not self._scan_blocks:
            self._rewind_here("scan")  # scan the code that follows before it runs
            return 1
        sub = uc.reg_read(X.UC_X86_REG_RCX) & M32 if leaf in self._indexed else 0
        values = self._cpuid.get((leaf, sub), (0, 0, 0, 0))
        for reg, value in zip((X.UC_X86_REG_RAX, X.UC_X86_REG_RBX, X.UC_X86_REG_RCX,
                               X.UC_X86_REG_RDX), values, strict=True):
            uc.reg_write(reg, value)
        return 1

    def _on_rdtsc(self, with_aux: bool) -> int:
        tsc = self.read_tsc()
        self.uc.reg_write(X.UC_X86_REG_RAX, tsc & M32)
        self.uc.reg_write(X.UC_X86_REG_RDX, tsc >> 32)
        if with_aux:
            self.uc.reg_write(X.UC_X86_REG_RCX, self.uc.msr_read(MSR_TSC_AUX) & M32)
        return 1

    def _on_interrupt(self, uc: Uc, intno: int, _: object) -> None:
        if intno == EXCP_VMEXIT_WRITE_CR4:  # at the instruction, before it changed CR4
            self._cr4_at = self._rip_now()
            uc.emu_stop()
            return
        if intno == EXCP_VMEXIT_SHUTDOWN:
            self._shutdown_at = self._rip_now()
            uc.emu_stop()
            return
        self.ctx.save()
        error, is_int, next_eip = self.ctx.pending_exception()
        if is_int:
            self._exception = (Event(intno, software=True), next_eip)
        else:
            err = error if intno in ERROR_CODE_VECTORS else None
            self._exception = (Event(intno, err), uc.reg_read(X.UC_X86_REG_RIP))
        uc.emu_stop()

    def _on_unmapped(self, uc: Uc, access: int, address: int, size: int, value: int,
                     _: object) -> bool:
        self._unmapped = (access, address, size, value)
        return False

    def _on_block(self, uc: Uc, address: int, size: int, _: object) -> None:
        if not self._scan_blocks:
            return
        self._scan_blocks -= 1
        if not self._scan_blocks:
            self._stop = "scan"  # remove this hook
            uc.emu_stop()
        code = self._read_linear(address, size, in_hook=True)
        found = {address + i for pattern in (WRMSR, RDMSR) for i in _find_all(code, pattern)}
        if found - self._msr_sites.keys():
            for site in found - self._msr_sites.keys():
                self._msr_sites[site] = uc.hook_add(UC_HOOK_CODE, self._on_msr_site, None,
                                                    site, site)
            uc.ctl_remove_cache(address, address + size)
            self._stop = "scan"
            uc.emu_stop()  # this block has not run: it is retranslated with the new hooks

    # --- setup ----------------------------------------------------------------------------
    def set_cpuid(self, cpuid: Cpuid) -> None:
        self._cpuid = {(leaf, sub): (a, b, c, d) for leaf, sub, a, b, c, d in cpuid}
        self._indexed = INDEXED_LEAVES | {leaf for leaf, sub, *_ in cpuid if sub}
        self._cr4_valid = cr4.cr4_valid_bits(cpuid)

    def set_initial_regs(self, regs: Regs) -> None:
        C.memmove(C.addressof(self.regs), C.addressof(regs), C.sizeof(Regs))
        self._dirty = True

    def set_sregs(self, sregs: SpecialRegs) -> None:
        uc = self.uc
        self._write_regs()
        for reg, value in ((X.UC_X86_REG_CR4, sregs.cr4), (X.UC_X86_REG_CR3, sregs.cr3),
                           (X.UC_X86_REG_CR0, sregs.cr0)):
            uc.reg_write(reg, value)
        ctx = self.ctx
        ctx.save()
        for name, index in SEGMENTS.items():
            from_segment(getattr(sregs, name), ctx.seg(index))
        for table, index in ((sregs.gdt, SEG_GDT), (sregs.idt, SEG_IDT)):
            ctx.seg(index).base, ctx.seg(index).limit = table.base, table.limit
        for n in range(5):
            ctx.set_cr(n, getattr(sregs, f"cr{n}", 0))
        ctx.efer = sregs.efer
        ctx.recompute_hflags(self.regs.rflags)
        ctx.restore()
        self._fresh = False
        self._dirty = True

    # --- save/restore -----------------------------------------------------------------------
    def save_cpu(self) -> CpuState:
        """The whole state, from any thread while run() is not running. An MMIO read the VMM
        has answered is completed first (one step of the engine, on the calling thread), as
        KVM completes it when it next enters the guest."""
        if self._msr_pending is not None:
            raise RuntimeError(f"vCPU{self.index}: state saved with an MSR exit unanswered")
        if self._mmio_replay:
            self._replay_mmio()
        ctx = self._state()
        regs = Regs()
        C.memmove(C.addressof(regs), C.addressof(self.regs), C.sizeof(Regs))
        sregs = self.sregs()
        savestate.mark_tr_busy(sregs)
        fxsave, ymmh = savestate.read_vector_state(self.uc)
        event = self._pending_event
        return CpuState(
            regs=regs, sregs=sregs, fxsave=fxsave, ymmh=ymmh, xcr0=ctx.xcr0,
            msrs=savestate.read_msrs(self.uc), tsc=self.read_tsc(),
            debugregs=savestate.read_debugregs(self.uc),
            # QEMU keeps one inhibit flag for both kinds of shadow
            interrupt_shadow=SHADOW_STI if ctx.hflags & HF_INHIBIT_IRQ else 0,
            pending_exception=None if event is None else PendingException(event.vector,
                                                                          event.error),
            pending_interrupt=self._pending_interrupt)

    def load_cpu(self, state: CpuState) -> None:
        """Make the next run() continue from `state`; from any thread while run() is not
        running, after set_cpuid (the engine would run control-register values KVM refuses,
        so they are checked here). The machine's TSC moves: its vCPUs share one."""
        state.validate()
        why = savestate.misfit(state, self._cr4_valid)
        if why is not None:
            raise ValueError(f"CPU state: {why}")
        self._mmio_replay = self._msr_pending = None  # nothing of an earlier exit is owed
        self.set_initial_regs(state.regs)
        self.set_sregs(state.sregs)  # also sets the mode flags from the segments
        ctx = self._state()
        ctx.xcr0 = state.xcr0
        inhibit = HF_INHIBIT_IRQ if state.interrupt_shadow else 0
        ctx.hflags = ctx.hflags & ~HF_INHIBIT_IRQ | inhibit
        ctx.old_exception = -1
        ctx.restore()
        savestate.write_vector_state(self.uc, state.fxsave, state.ymmh)
        savestate.write_msrs(self.uc, state.msrs)
        savestate.write_debugregs(self.uc, state.debugregs)
        self._fresh = False
        exc = state.pending_exception
        self._pending_event = None if exc is None else Event(exc.vector, exc.error_code)
        self._pending_interrupt = state.pending_interrupt
        self.machine.set_tsc(state.tsc)

    # --- registers --------------------------------------------------------------------------
    def regs_changed(self) -> None:
        self._dirty = True

    def settle(self) -> None:
        """Nothing to finish: a hook's port write is done when the hook returns."""

    def _read_regs(self) -> None:
        uclib.uc_reg_read_batch(self.uc._uch, self._reg_ids, self._reg_ptrs, len(REG_IDS))

    def _write_regs(self) -> None:
        if self._dirty:
            uclib.uc_reg_write_batch(self.uc._uch, self._reg_ids, self._reg_ptrs,
                                     len(REG_IDS))
            self._dirty = False

    def _state(self) -> Context:
        if not self._fresh:
            self._write_regs()
            self.ctx.save()
            self._fresh = True
        return self.ctx

    def sregs(self) -> SpecialRegs:
        ctx, s = self._state(), SpecialRegs()
        for name, index in SEGMENTS.items():
            to_segment(ctx.seg(index), getattr(s, name))
        s.gdt.base, s.gdt.limit = ctx.seg(SEG_GDT).base, ctx.seg(SEG_GDT).limit
        s.idt.base, s.idt.limit = ctx.seg(SEG_IDT).base, ctx.seg(SEG_IDT).limit
        s.cr0, s.cr2, s.cr3, s.cr4 = ctx.cr(0), ctx.cr(2), ctx.cr(3), ctx.cr(4)
        s.efer = ctx.efer
        s.apic_base = 0xFEE0_0000 | (0x900 if self.index == 0 else 0x800)
        return s

    def is_64bit(self) -> bool:
        return bool(self._state().hflags & HF_CS64)

    def cpl(self) -> int:
        return self._state().hflags & HF_CPL

    def paging(self) -> PagingState:
        ctx = self._state()
        return PagingState(ctx.cr(0), ctx.cr(3), ctx.cr(4), ctx.efer)

    def _access(self) -> GuestAccess:
        return GuestAccess(self.machine.ram, self.paging())  # type: ignore[arg-type]

    def _read_linear(self, va: int, size: int, in_hook: bool = False) -> bytes:
        """Guest-virtual bytes, read as the CPU would fetch them (b"" if unmapped). At a
        stop the paging registers come from the saved state (a few field reads); inside a
        hook from the engine itself (a state saved there is not the state at the stop)."""
        if in_hook:
            ps = PagingState(self.uc.reg_read(X.UC_X86_REG_CR0),
                             self.uc.reg_read(X.UC_X86_REG_CR3),
                             self.uc.reg_read(X.UC_X86_REG_CR4), self.uc.msr_read(0xC000_0080))
        else:
            ps = self.paging()
        try:
            return GuestAccess(self.machine.ram, ps).read(va, size)  # type: ignore[arg-type]
        except Exception:  # noqa: BLE001 - XenError(EFAULT): not mapped, nothing to scan
            return b""

    # --- running ----------------------------------------------------------------------------
    def run(self) -> Exit:
        self._sync_ram()
        if self._mmio_replay:
            self._replay_mmio()
        if self._pending_event:
            event, self._pending_event = self._pending_event, None
            if (trouble := self._deliver(event)) is not None:
                return trouble
        if self._pending_interrupt is not None:
            vector, self._pending_interrupt = self._pending_interrupt, None
            if (trouble := self._deliver(Event(vector, external=True))) is not None:
                return trouble
        while True:
            if self._kick:
                self._kick = False
                return Exit.KICKED
            if self._window and self._window_open():
                self._window = False  # one report per request: pyxen asks again if it must
                return Exit.KICKED
            self._prepare_block_hook()
            err = self._emulate()
            exit_ = self._after_stop(err)
            if exit_ is not None:
                return exit_

    def _emulate(self) -> UcError | None:
        self._write_regs()
        self._fresh = False
        self._stop = self._exception = self._rewind = self._unmapped = self._ro_write = None
        self._io = self._msr_at = self._fast_call = self._cr4_at = self._shutdown_at = None
        baton = self.machine.baton
        # One engine at a time, and none while pyxen writes (baton.py). A vCPU with an
        # interrupt to handle (an event, an IPI, its timer) stops the running engine at
        # once instead of waiting out its slice: the interrupt's latency was the slice.
        baton.acquire(self, urgent=self._urgent)
        self._urgent = False
        if not self._entered.is_set():
            self._entered.set()
        self._enter_guest()
        try:
            if not self._kick:
                self.uc.emu_start(self.regs.rip, 0)
        except UcError as e:
            return e
        finally:
            self._leave_guest()
            baton.release()
            if self._yielding is not None:
                woken, self._yielding = self._yielding, None
                woken._entered.wait(YIELD_S)
        return None

    def _enter_guest(self) -> None:
        """Before the engine runs: note it (under the log's lock), then map RAM for the
        logging state read there. A switch made after this waits for _leave_guest."""
        log = self.machine.log
        with log.cond:
            self.in_guest = True
            track = log.enabled
        if track != self._tracking:
            self._map_ram_for_logging(track)

    def _leave_guest(self) -> None:
        """After the engine stopped: every store it recorded has landed; publish them."""
        log = self.machine.log
        with log.cond:
            if self._written:
                log.merge(self._written)
                self._written.clear()
            self.in_guest = False
            self.guest_epoch += 1
            log.cond.notify_all()

    def _map_ram_for_logging(self, track: bool) -> None:
        """Re-map every slot read-only (stores reach the hook) or read-write. mem_map_ptr,
        not mem_protect: see dirty.py for what mem_protect does to stores and page walks."""
        self._tracking = track
        for view in sorted(self._mapped):
            self.uc.mem_unmap(view[0], view[1])
            self.uc.mem_map_ptr(view[0], view[1], self._perms(view), view[2])

    def _after_stop(self, err: UcError | None) -> Exit | None:
        if self._rewind is not None:
            why, rip = self._rewind
            self._snapshot.restore()
            # The snapshot is now the engine's state: it serves as this stop's context.
            self.ctx, self._snapshot = self._snapshot, self.ctx
            self._fresh = True
            self._exception = self._unmapped = self._ro_write = err = None
            io, self._io = self._io, None
            self._msr_at = self._fast_call = None
            self._read_regs()
            if why == "out" and io is not None:
                return self._out_exit(*io)
            if why == "io-denied":
                return self._deliver(Event(GP, 0))
            self._scan_blocks = MSR_SCAN_BLOCKS
            self._stop = "scan"
            return None
        self._read_regs()
        if err is not None:
            return self._engine_error(err)
        if self._exception is not None:
            event, self.regs.rip = self._exception
            return self._deliver_engine_event(event)
        if self._cr4_at is not None:
            return self._cr4_write(self._cr4_at)
        if self._shutdown_at is not None:
            return self._stale_shutdown(self._shutdown_at)
        if self._msr_at is not None:
            return self._msr_site_exit(self._msr_at)
        if self._fast_call is not None:
            return self._perform_fast_call(self._fast_call)
        if self._stop == "inline":
            return Exit.KICKED  # a hypercall run in the hook left work for the vCPU loop
        if self._stop is not None:
            return None  # the scan hook's stop: the loop goes on
        if self._kick:
            self._kick = False
            return Exit.KICKED
        if self._read_linear(self.regs.rip - 1, 1) == b"\xf4":
            return Exit.HLT
        return self._idle_stop()

    def _stale_shutdown(self, rip: int) -> Exit | None:
        """The engine's triple-fault check fired on a stale record of an exception in
        flight (see EXCP_VMEXIT_SHUTDOWN): run the instruction again, with nothing
        recorded. The same at the same place on the very next entry is no stale record:
        the domain ends as after a triple fault."""
        if self._last_shutdown == (rip, self.guest_epoch - 1):
            return Exit.SHUTDOWN
        self._last_shutdown = (rip, self.guest_epoch)
        self._nothing_in_flight()
        self.regs.rip = rip
        self._dirty = True
        return None

    def _idle_stop(self) -> Exit | None:
        """A stop with no reason: a late kick (go on) -- unless it repeats at one address,
        which is the engine giving up (its own triple-fault path): never spin on that."""
        if self.regs.rip != self._last_idle_rip:
            self._last_idle_rip, self._idle_stops = self.regs.rip, 0
        self._idle_stops += 1
        if self._idle_stops >= IDLE_STOPS_LIMIT:
            return self._error("the emulator stops here without a reason, repeatedly")
        return None

    def _engine_error(self, err: UcError) -> Exit | None:
        if err.errno == UC_ERR_INSN_INVALID:
            if self._code_at(self.regs.rip)[:3] in HYPERCALL_INSNS:
                self.regs.rip += 3  # VMCALL/VMMCALL: a Xen hypercall, as on HVM Xen
                self._dirty = True
                return Exit.HYPERCALL
            return self._deliver_engine_event(Event(UD))
        if err.errno in (UC_ERR_READ_UNMAPPED, UC_ERR_WRITE_UNMAPPED) and self._unmapped:
            self._nothing_in_flight()
            return self._mmio_exit(*self._unmapped)
        if err.errno == UC_ERR_WRITE_PROT and self._ro_write:
            self._nothing_in_flight()
            return self._readonly_write_exit(*self._ro_write)
        if err.errno == UC_ERR_FETCH_UNMAPPED:
            return self._error(f"instruction fetch from {self.regs.rip:#x}, which is not RAM")
        return self._error(f"emulator: {err}")

    def _nothing_in_flight(self) -> None:
        """An access the engine abandoned for pyxen (MMIO, a read-only slot) is no exception
        of the guest's, but QEMU leaves it recorded as one in flight: cleared, or after two
        such accesses the guest's next exception of any kind becomes a triple fault (Linux's
        first hypercall after reading its xAPIC ID and version did)."""
        ctx = self._state()
        if ctx.old_exception != -1:
            ctx.old_exception = -1
            ctx.restore()

    def _deliver_engine_event(self, event: Event) -> Exit | None:
        """An exception the engine raised at regs.rip: corrected where Unicorn's differs from
        the CPU's (faults.refine), given its instruction length if it is an `int`."""
        if event.software:
            last = self._read_linear(self.regs.rip - 1, 1)
            if self._ran_stale_int(event.vector, last):
                return None
            length = software_length(event.vector, last[0] if last else 0)
            event = Event(event.vector, software=True, length=length)
        elif event.vector in REFINED_VECTORS:
            ctx = self._state()
            event, self.regs.rip = refine(event, self.regs.rip, self._code_at(self.regs.rip),
                                          bool(ctx.efer & EFER_LMA), bool(ctx.hflags & HF_CS64),
                                          ctx.cr(0), ctx.cr(4), self.regs)
        return self._deliver(event)

    def _ran_stale_int(self, vector: int, last: bytes) -> bool:
        """True when the `int3`/`int n` that trapped is no longer in memory: another vCPU
        rewrote it after this engine translated it (each engine keeps its own translated
        code, and another engine's stores do not invalidate it). Linux finishes a
        text_poke_bp by putting the new first byte over its int3, and a CPU that meets the
        old int3 backs up to run what is there now (kprobe_int3_handler): the engine ran its
        stale int3 again, forever. So drop that translation and run from memory, as a CPU
        that fetched the new bytes would (guests/cpu_cross_code)."""
        if not last or last[0] == vector or (vector, last[0]) in ((BP, 0xCC), (OF, 0xCE)):
            return False  # int3/into there, `int n` ends with n (or nothing to read)
        start = self.regs.rip - (1 if vector in (BP, OF) else 2)
        self._invalidating(self.uc.ctl_remove_cache, start, start + 16)
        self._nothing_in_flight()
        self.regs.rip = start
        self._dirty = True
        return True

    def _error(self, why: str) -> Exit:
        self.exit_error = f"{why} (guest rip={self.regs.rip:#x})"
        return Exit.ERROR

    def _deliver(self, event: Event) -> Exit | None:
        ctx = self._state()
        try:  # the frame it pushes is recorded by machine.ram.on_write (dirty logging)
            if not (event.external and delivered_natively(self.regs, ctx, self.machine.ram,
                                                           event.vector)):
                deliver(self.regs, ctx, self._access(), event)
        except TripleFault:
            return Exit.SHUTDOWN
        except Unsupported as e:
            return self._error(str(e))
        ctx.old_exception = -1  # delivered: nothing in flight any more (QEMU's own rule)
        ctx.restore()
        self._dirty = True
        return None

    # --- exits the backend completes ---------------------------------------------------------
    def _code_at(self, rip: int) -> bytes:
        """The instruction bytes at an exit, cached by (rip, cr3) and checked against RAM."""
        ctx = self._state()
        key = (rip, ctx.cr(3))
        cached = self._code_cache.get(key)
        ram = self.machine.ram.map
        if cached is not None and ram is not None:
            gpa, code = cached
            if ram[gpa : gpa + len(code)] == code:
                return code
        code = self._read_linear(rip, 16) or self._read_linear(rip, min(16, 4096 - (rip & 0xFFF)))
        try:
            gpa = translate(self.machine.ram, self.paging(), rip, False)  # type: ignore[arg-type]
        except (PageFault, GuestMemoryError):
            return code
        if code and len(code) == 16:
            self._code_cache[key] = (gpa, code)
        return code

    def _out_exit(self, port: int, size: int, value: int, rip: int) -> Exit | None:
        """The engine is back at an OUT at `rip` (rewound): check it, report it."""
        ctx = self._state()
        hflags = ctx.hflags
        io = decode_port_io(self._code_at(rip), bool(hflags & HF_CS64), bool(hflags & HF_CS32))
        if io is None or io.string:
            return self._error(f"string port I/O on port {port:#x}")
        if not self._io_allowed(port, size, ctx.cr(0), self.regs.rflags, hflags & HF_CPL):
            return self._deliver(Event(GP, 0))
        self.exit_port, self.exit_size = port, size
        self.regs.rip = rip + io.length
        self._dirty = True
        if port == self.hypercall_port:
            return Exit.HYPERCALL
        self.exit_value = value & ((1 << (8 * size)) - 1)
        return Exit.IO_OUT

    def _msr_site_exit(self, rip: int) -> Exit | None:
        """Stopped before a scanned RDMSR/WRMSR site for an MSR pyxen owns."""
        code = self._code_at(rip)[:2]
        if code not in (WRMSR, RDMSR):  # the code there changed: forget the site
            self._invalidating(self.uc.hook_del, self._msr_sites.pop(rip))
            self._invalidating(self.uc.ctl_remove_cache, rip, rip + 1)
            return None
        return self._msr_exit(code == WRMSR)

    def _cr4_write(self, rip: int) -> Exit | None:
        """A `mov` to CR4 (intercepted before it ran): #GP(0) for a bit whose feature CPUID
        does not offer, else the engine's own CR4 update."""
        hflags = self._state().hflags
        mov = decode_mov_to_cr(self._code_at(rip), bool(hflags & HF_CS64))
        if mov is None or mov.cr != 4:
            return self._error("an intercepted CR4 write that is not a mov to CR4")
        value = getattr(self.regs, GPR_NAMES[mov.gpr])
        value &= M64 if hflags & HF_CS64 else M32
        if value & ~self._cr4_valid:
            return self._deliver(Event(GP, 0))
        self.uc.reg_write(X.UC_X86_REG_CR4, value)
        self.regs.rip = rip + mov.length
        self._dirty = True
        self._fresh = False
        return None

    def _perform_fast_call(self, kind: str) -> Exit | None:
        """SYSCALL/SYSENTER, which the engine skips: performed by `fastcall`."""
        ctx = self._state()
        self.regs.rip -= 2  # the engine left RIP after the instruction
        perform = fastcall.syscall if kind == "syscall" else fastcall.sysenter
        fault = perform(self.regs, ctx, self.uc.msr_read)
        if fault is not None:
            return self._deliver(fault)
        ctx.restore()
        self._dirty = True
        return None

    def _io_permitted(self, port: int, size: int) -> bool:
        """The TSS I/O-permission bitmap's answer (CPL > IOPL)."""
        tr, acc = self._state().seg(SEG_TR), self._access()
        try:
            if tr.limit < 0x67:
                return False
            iomap = int.from_bytes(acc.read(tr.base + 0x66, 2), "little")
            at = iomap + port // 8
            if at + 1 > tr.limit:
                return False
            bits = int.from_bytes(acc.read(tr.base + at, 2), "little")
        except Exception:  # noqa: BLE001 - an unreadable TSS grants nothing
            return False
        return not bits & (((1 << size) - 1) << (port & 7))

    def _msr_exit(self, write: bool) -> Exit | None:
        if self._state().hflags & HF_CPL:
            return self._deliver(Event(GP, 0))
        msr = self.regs.rcx & M32
        value = (self.regs.rdx & M32) << 32 | (self.regs.rax & M32)
        if msr in self.machine.msr_exits:
            self.exit_msr, self.exit_value, self._msr_pending = msr, value, write
            return Exit.MSR_WRITE if write else Exit.MSR_READ
        if write:  # the emulated CPU's own MSR
            self.uc.msr_write(msr, value)
            self._fresh = False
        else:
            self._set_edx_eax(self.uc.msr_read(msr))
        self.regs.rip += 2
        self._dirty = True
        return None

    def _set_edx_eax(self, value: int) -> None:
        self.regs.rax, self.regs.rdx = value & M32, value >> 32 & M32

    def complete_msr(self, ok: bool, value: int = 0) -> None:
        if self._msr_pending is None:
            return
        if not ok:
            self._pending_event = Event(GP, 0)
        else:
            if not self._msr_pending:
                self._set_edx_eax(value)
            self.regs.rip += 2
            self._dirty = True
        self._msr_pending = None

    def complete_io_in(self, value: int) -> None:
        """Never needed: port reads are answered inside the IN hook (no_device_read)."""

    # --- MMIO ---------------------------------------------------------------------------------
    def _mmio_exit(self, access: int, address: int, size: int, value: int) -> Exit:
        write = access == UC_MEM_WRITE_UNMAPPED
        try:
            gpa = translate(self.machine.ram, self.paging(), address, write)  # type: ignore[arg-type]
        except (PageFault, GuestMemoryError):
            gpa = address
        self.exit_value, self.exit_size, self.exit_is_write = gpa, size, write
        self.exit_data = value & ((1 << (8 * size)) - 1) if write else 0
        self._mmio_replay = (gpa, size, write, value)
        return Exit.MMIO

    def _readonly_write_exit(self, gpa: int, size: int, value: int) -> Exit:
        """A store refused by a read-only slot (the write hook has its guest-physical
        address): reported as an MMIO write, replayed by run() on a copy of the slot."""
        self.exit_value, self.exit_size, self.exit_is_write = gpa, size, True
        self.exit_data = value & ((1 << (8 * size)) - 1)
        self._mmio_replay = (gpa, size, True, value)
        return Exit.MMIO

    def complete_mmio(self, value: int) -> None:
        if self._mmio_replay and not self._mmio_replay[2]:
            gpa, size, _, _ = self._mmio_replay
            self._mmio_replay = (gpa, size, False, value)

    def _replay_mmio(self) -> None:
        """Run the instruction once against a scratch page holding the VMM's answer (in
        the memory layout of now: a change may have landed since the exit)."""
        assert self._mmio_replay is not None
        self._sync_ram()
        gpa, size, write, value = self._mmio_replay
        self._mmio_replay = None
        slot = next((m for m in self._mapped if m[0] <= gpa < m[0] + m[1]), None)
        if slot is not None:
            self._replay_on_copy(slot)
            return
        if write and self._retire_plain_store(gpa, size):
            return
        page, offset = gpa & ~(SCRATCH - 1), gpa & (SCRATCH - 1)
        C.memset(self._scratch, 0xFF, SCRATCH)
        if not write:
            data = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
            C.memmove(C.addressof(self._scratch) + offset, data, min(size, SCRATCH - offset))
        self.uc.mem_map_ptr(page, SCRATCH, UC_PROT_ALL, C.addressof(self._scratch))
        try:
            self._step()
        finally:
            self.uc.mem_unmap(page, SCRATCH)

    def _retire_plain_store(self, gpa: int, size: int) -> bool:
        """A plain `mov` store to a device or to no RAM has had its whole effect once the
        VMM took the write: it only has to retire (rip moves on). That spares the replay's
        two memory-map changes, ~2 ms on Unicorn: every local APIC write (an EOI per
        interrupt) and every store to a hole. Not under TF or an interrupt shadow, where
        retiring an instruction has more effects; not for a store the exit saw only part of."""
        if self.regs.rflags & RFLAGS_TF or size > PAGE_SIZE - (gpa & (PAGE_SIZE - 1)):
            return False
        hflags = self._state().hflags
        if not hflags & HF_CS64 or hflags & HF_INHIBIT_IRQ:
            return False
        rip = self.regs.rip
        store = plain_store(self._read_linear(rip, 15), rip, 64)
        if store is None or store[1] != size:
            return False
        self.regs.rip = rip + store[0]
        self._dirty = True
        return True

    def _replay_on_copy(self, slot: tuple[int, int, int, bool]) -> None:
        """Run the instruction once with a private copy of the read-only slot in its place
        (it reads what the slot holds; what it writes there is dropped)."""
        gpa, size, host, _ = slot
        copy = C.create_string_buffer(size)
        C.memmove(copy, host, size)
        self._mapped.discard(slot)  # a logging switch during the step must not re-map it
        self.uc.mem_unmap(gpa, size)
        self.uc.mem_map_ptr(gpa, size, UC_PROT_ALL, C.addressof(copy))
        try:
            self._step()
        finally:
            self.uc.mem_unmap(gpa, size)
            self.uc.mem_map_ptr(gpa, size, self._perms(slot), host)
            self._mapped.add(slot)

    def _perms(self, view: tuple[int, int, int, bool]) -> int:
        return TRACKED if self._tracking or view[3] else UC_PROT_ALL

    def _step(self) -> None:
        """Execute exactly one instruction, in freshly translated code (where Unicorn counts
        instructions and sees exits). A kick must not stop it: the stop hook would end the step before the instruction,
        and the engine would later run it from the start (an MMIO write made twice). Kicks
        pending or arriving meanwhile are set aside (atomically: other threads set the flag)
        and stand again afterwards."""
        self._write_regs()
        rip = self.regs.rip
        self._invalidating(self.uc.ctl_remove_cache, rip, rip + 16)
        until = self._straight_line_end(rip)
        flag = C.addressof(self._stopper)
        kicked = atomic.exchange32(flag, 0)
        window, self._window = self._window, False  # IF may be 1 here: it must not stop
        try:
            for _ in range(STEP_ATTEMPTS):
                self._step_once(rip, until)
                arrived = atomic.exchange32(flag, 0)
                kicked |= arrived
                if not arrived or self.regs.rip != rip:
                    break  # it ran (or faulted: its exception is reported as usual)
        finally:
            self._window = window
            if kicked:
                self._kick = True
        self._invalidating(self.uc.ctl_remove_cache, rip, rip + 16)

    def _step_once(self, rip: int, until: int | None) -> None:
        """One instruction: run to `until`, its end, where it is a straight-line instruction
        (an exit there; its block was just dropped, so the fresh translation stops there).
        emu_start's `count` would do for any instruction, but Unicorn flushes every translated block when
        a counted run is followed by an uncounted one (a 2000-block loop: 0.05 ms a run, 12 ms
        after a counted step); it serves only for branches and page-crossing ends."""
        baton = self.machine.baton
        held = baton.held_here()
        if not held:
            baton.acquire(self)
        self._enter_guest()
        try:
            with contextlib.suppress(UcError):
                if until is None:
                    self.uc.emu_start(rip, 0, count=1)
                else:  # exits are on (see __init__): the end is one for this run only
                    self.uc.ctl_set_exits([until])
                    try:
                        self.uc.emu_start(rip, 0)
                    finally:
                        self.uc.ctl_set_exits([])
        finally:
            self._fresh = False
            self._leave_guest()
            if not held:
                baton.release()
        self._read_regs()

    def _straight_line_end(self, rip: int) -> int | None:
        """Where the instruction at rip ends, if execution goes on there within its page
        (Unicorn looks up the block at the end address: on an unmapped next page that would
        be a page fault inside the engine). 64-bit code only, where rip is linear."""
        if not self._state().hflags & HF_CS64:
            return None
        end = straight_line_end(self._read_linear(rip, 15), rip, 64)
        if end is None or end >> PAGE_SHIFT != rip >> PAGE_SHIFT:
            return None
        return end

    def _invalidating(self, call: Callable[..., object], *args: object) -> None:
        """Unicorn re-translates what a hook removal or cache invalidation covers, with the
        guest's current page tables; a page fault there is swallowed but leaves QEMU's
        old_exception (the guest's next #PF would become #DF) and CR2 changed. So keep the
        architectural state across such a call (guests/cpu_stale_code checks it)."""
        ctx = self._state()
        call(*args)
        ctx.restore()

    # --- interrupts -----------------------------------------------------------------------------
    def inject_interrupt(self, vector: int) -> bool:
        """An instruction left half done at the last exit completes first, as on hardware
        (an interrupt is recognised between instructions): an MMIO access is replayed now,
        an exception it raised is delivered by run() before any interrupt. Delivered
        before the replay, the interrupt's frame pointed back at the access, which ran
        again after iret (a second IPI from one ICR write), and the replay ran at the
        handler's first instruction instead."""
        if self._pending_event or self._pending_interrupt is not None:
            return False  # run() delivers it; pyxen asks again at the next window
        if self._mmio_replay:
            self._replay_mmio()
        if not self.regs.rflags & RFLAGS_IF or self._state().hflags & HF_INHIBIT_IRQ:
            return False
        self._urgent = self._deliver(Event(vector, external=True)) is None
        return self._urgent

    def request_interrupt_window(self, wanted: bool, level: int | None = None) -> None:
        """The stop hook watches IF, and `level` (stopper.py) while it is given."""
        self._stopper.level = level if wanted else None
        self._window = wanted

    def _window_open(self) -> bool:
        """IF=1 and no interrupt shadow: run() reports KICKED so pyxen can inject."""
        if not self.regs.rflags & RFLAGS_IF:
            return False
        if self._state().hflags & HF_INHIBIT_IRQ:  # sti/mov ss shadow: one more instruction
            self._sync_ram()  # a layout change may have landed since run() synced
            self._step()
        return True

    def _prepare_block_hook(self) -> None:
        """The Python block hook scans code for RDMSR/WRMSR after a Xen CPUID (rare: adding
        or removing it flushes every translated block). Interrupt windows need none: the
        stop hook watches IF (stopper.py)."""
        wanted = bool(self._scan_blocks)
        if wanted == (self._block_hook is not None):
            return
        if wanted:
            self._block_hook = self.uc.hook_add(UC_HOOK_BLOCK, self._on_block)
        else:
            assert self._block_hook is not None
            self._invalidating(self.uc.hook_del, self._block_hook)
            self._block_hook = None
        self.uc.ctl_flush_tb()  # translated blocks carry (or lack) the hook call

    @property
    def _window(self) -> bool:
        """An interrupt window wanted: the stop hook stops at the first block with IF set."""
        return bool(self._stopper.window)

    @_window.setter
    def _window(self, wanted: bool) -> None:
        self._stopper.window = int(wanted)

    @property
    def _kick(self) -> bool:
        """A kick not yet reported: the flag the engine's stop hook reads."""
        return bool(self._stopper.requested)

    @_kick.setter
    def _kick(self, wanted: bool) -> None:
        self._stopper.requested = int(wanted)

    def kick(self) -> None:
        """Make run() return KICKED soon, from any thread: the engine stops exactly at the
        start of its next block (stopper.py; never Unicorn's emu_stop from another thread,
        which can make instructions run twice)."""
        self._kick = True
        if threading.get_ident() == self.thread_id:
            self.uc.emu_stop()  # in a hook: exact as well

    def woke(self, other: SoftVcpu) -> None:
        """This vCPU's thread woke `other` from a halt (an event, an IPI): once this engine
        stops, wait until `other` is in its own, at most YIELD_S. Its Python work (the
        wake-up, the delivery) would otherwise contend with ours for the GIL, and the guest
        waits for it: as Xen's credit scheduler boosts a vCPU it wakes, the woken one goes
        first."""
        other._entered.clear()
        self._yielding = other

    def kicks_seen(self) -> None:
        self._kick = False

    # --- time, memory, teardown ---------------------------------------------------------------
    def read_tsc(self) -> int:
        return (time.monotonic_ns() - self.machine.tsc_epoch_ns) * self.machine.tsc_khz \
            // 1_000_000 & M64  # a 64-bit counter: it wraps

    def _sync_ram(self) -> None:
        ram = self.machine.ram
        if self._ram_generation == ram.generation:
            return
        with ram.lock:  # a layout being published: wait until every engine has left the old
            layout = ram.layout
        self._ram_generation = layout.generation
        wanted = layout.views
        for view in sorted(self._mapped - wanted):
            self.uc.mem_unmap(view[0], view[1])
            self._mapped.discard(view)
        for view in sorted(wanted - self._mapped):
            self.uc.mem_map_ptr(view[0], view[1], self._perms(view), view[2])
            self._mapped.add(view)
        if self._native_out is not None:  # native sends read their argument in this view
            self._native_out.set_ram(ram.native_window(layout))

    def close(self) -> None:
        self.ctx.close()
        self._snapshot.close()


def _find_all(data: bytes, pattern: bytes) -> list[int]:
    found, at = [], data.find(pattern)
    while at >= 0:
        found.append(at)
        at = data.find(pattern, at + 1)
    return found
