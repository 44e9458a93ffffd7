"""A KVM vCPU: the mmap'ed kvm_run page with synchronized registers, and the run loop step.

The hot path (`run` → hypercall → `run`) issues exactly one ioctl, KVM_RUN: registers travel
through kvm_run's sync-regs area (KVM_CAP_SYNC_REGS) instead of GET/SET_REGS ioctls.
"""

from __future__ import annotations

import contextlib
import ctypes as C
import mmap
import signal
import threading
from typing import TYPE_CHECKING

from pyxen.domain.backend import Cpuid, Exit, Regs, SpecialRegs

from . import uapi as K
from .ioctl import ioctl, ioctl_eintr

if TYPE_CHECKING:
    from .vm import KvmMachine

KICK_SIGNAL = signal.SIGUSR1
MSR_IA32_TSC = 0x10
KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1
# Leaves whose sub-leaf (ECX) selects different data.
INDEXED_LEAVES = {0x4, 0x7, 0xB, 0xD, 0xF, 0x10, 0x12, 0x14, 0x17, 0x18, 0x1D, 0x1E, 0x1F,
                  0x20, 0x23, 0x24, 0x8000001D, 0x80000020, 0x80000026}

_kick_handler_installed = False


def install_kick_handler() -> None:
    """A no-op handler for the kick signal: its only job is to interrupt KVM_RUN with EINTR.

    Python installs handlers without SA_RESTART, so a vCPU thread blocked in KVM_RUN returns.
    Must be called from the main thread (Python's rule) before vCPU threads are kicked.
    """
    global _kick_handler_installed
    if not _kick_handler_installed and threading.current_thread() is threading.main_thread():
        signal.signal(KICK_SIGNAL, lambda *_: None)
        _kick_handler_installed = True


class KvmVcpu:
    """One KVM vCPU (implements pyxen.domain.backend.VcpuBackend)."""

    def __init__(self, machine: KvmMachine, index: int) -> None:
        self.index = index
        self.fd = ioctl(machine.vm_fd, K.KVM_CREATE_VCPU, index)
        self._mm = mmap.mmap(self.fd, machine.run_size, mmap.MAP_SHARED,
                             mmap.PROT_READ | mmap.PROT_WRITE)
        self.run_page = K.kvm_run.from_buffer(self._mm)
        base = C.addressof(self.run_page)
        self._io_data_base = base
        self.regs = Regs.from_address(base + K.kvm_run.s.offset)
        self._sregs = SpecialRegs.from_address(
            base + K.kvm_run.s.offset + K.kvm_sync_regs.sregs.offset)
        self.run_page.kvm_valid_regs = K.KVM_SYNC_X86_REGS | K.KVM_SYNC_X86_SREGS
        self.thread_id: int | None = None
        self.exit_port = self.exit_size = self.exit_value = self.exit_msr = 0
        self.exit_error = ""
        self.exit_is_write = False
        self._pending_in: tuple[int, int] | None = None
        self._fresh = False  # sync regs hold valid state only after the first exit

    # --- setup ---------------------------------------------------------------------------
    def set_cpuid(self, cpuid: Cpuid) -> None:
        buf = K.kvm_cpuid2(len(cpuid))(nent=len(cpuid))
        for e, (leaf, sub, a, b, c, d) in zip(buf.entries, cpuid, strict=True):
            e.function, e.index, e.eax, e.ebx, e.ecx, e.edx = leaf, sub, a, b, c, d
            e.flags = KVM_CPUID_FLAG_SIGNIFCANT_INDEX if leaf in INDEXED_LEAVES else 0
        ioctl(self.fd, K.KVM_SET_CPUID2, buf)

    def tsc_khz(self) -> int:
        return ioctl(self.fd, K.KVM_GET_TSC_KHZ, 0)

    # --- registers -----------------------------------------------------------------------
    def regs_changed(self) -> None:
        self.run_page.kvm_dirty_regs |= K.KVM_SYNC_X86_REGS

    def sregs(self) -> SpecialRegs:
        if self._fresh:
            return self._sregs
        s = SpecialRegs()
        ioctl(self.fd, K.KVM_GET_SREGS, s)
        return s

    def set_sregs(self, sregs: SpecialRegs) -> None:
        ioctl(self.fd, K.KVM_SET_SREGS, sregs)
        if self._fresh:
            C.memmove(C.addressof(self._sregs), C.addressof(sregs), C.sizeof(sregs))

    def set_initial_regs(self, regs: Regs) -> None:
        """Registers before the first run (sync regs are not valid until the first exit)."""
        r = K.kvm_regs()
        C.memmove(C.addressof(r), C.addressof(regs), C.sizeof(r))
        ioctl(self.fd, K.KVM_SET_REGS, r)

    def read_msr(self, index: int) -> int:
        msrs = K.kvm_msrs(1)(nmsrs=1)
        msrs.entries[0].index = index
        ioctl(self.fd, K.KVM_GET_MSRS, msrs)
        return msrs.entries[0].data

    def read_tsc(self) -> int:
        return self.read_msr(MSR_IA32_TSC)

    # --- running -------------------------------------------------------------------------
    def run(self) -> Exit:
        run = self.run_page
        rc = ioctl_eintr(self.fd, K.KVM_RUN)
        self._fresh = True
        if rc < 0:
            run.immediate_exit = 0
            return Exit.KICKED
        reason = run.exit_reason
        if reason == K.KVM_EXIT_IO:
            io = run.exit.io
            self.exit_port = io.port
            self.exit_size = io.size
            if io.count != 1:
                self.exit_error = f"string port I/O (count {io.count}) on port {io.port:#x}"
                return Exit.ERROR
            if io.direction == K.KVM_EXIT_IO_OUT:
                addr = self._io_data_base + io.data_offset
                size = io.size
                self.exit_value = (
                    C.c_uint32.from_address(addr).value if size == 4
                    else C.c_uint16.from_address(addr).value if size == 2
                    else C.c_uint8.from_address(addr).value
                )
                return Exit.IO_OUT
            self._pending_in = (self._io_data_base + io.data_offset, io.size)
            return Exit.IO_IN
        if reason == K.KVM_EXIT_X86_WRMSR:
            self.exit_msr = run.exit.msr.index
            self.exit_value = run.exit.msr.data
            return Exit.MSR_WRITE
        if reason == K.KVM_EXIT_X86_RDMSR:
            self.exit_msr = run.exit.msr.index
            return Exit.MSR_READ
        if reason == K.KVM_EXIT_MMIO:
            m = run.exit.mmio
            self.exit_value = m.phys_addr
            self.exit_size = m.len
            self.exit_is_write = bool(m.is_write)
            return Exit.MMIO
        if reason == K.KVM_EXIT_HLT:
            return Exit.HLT
        if reason == K.KVM_EXIT_SHUTDOWN:
            return Exit.SHUTDOWN
        if reason == K.KVM_EXIT_INTR:
            return Exit.KICKED
        if reason == K.KVM_EXIT_IRQ_WINDOW_OPEN:
            return Exit.KICKED
        self.exit_error = self._describe_exit(reason)
        return Exit.ERROR

    def _describe_exit(self, reason: int) -> str:
        run = self.run_page
        if reason == K.KVM_EXIT_INTERNAL_ERROR:
            ie = run.exit.internal
            data = " ".join(f"{ie.data[i]:#x}" for i in range(min(ie.ndata, 16)))
            return f"KVM internal error (suberror {ie.suberror}) {data}".rstrip()
        if reason == K.KVM_EXIT_FAIL_ENTRY:
            return f"KVM entry failure (reason {run.exit.fail_entry.hardware_entry_failure_reason:#x})"
        return f"unexpected KVM exit reason {reason}"

    def complete_msr(self, ok: bool, value: int = 0) -> None:
        self.run_page.exit.msr.error = 0 if ok else 1
        self.run_page.exit.msr.data = value

    def complete_io_in(self, value: int) -> None:
        if self._pending_in:
            addr, size = self._pending_in
            C.memmove(addr, value.to_bytes(8, "little"), size)
            self._pending_in = None

    def complete_mmio(self, value: int) -> None:
        m = self.run_page.exit.mmio
        if not m.is_write:
            C.memmove(C.addressof(m.data), value.to_bytes(8, "little"), min(m.len, 8))

    def inject_interrupt(self, vector: int) -> bool:
        run = self.run_page
        if not (run.ready_for_interrupt_injection and run.if_flag):
            return False
        ioctl(self.fd, K.KVM_INTERRUPT, K.kvm_interrupt(irq=vector))
        return True

    def request_interrupt_window(self, wanted: bool) -> None:
        self.run_page.request_interrupt_window = 1 if wanted else 0

    def kick(self) -> None:
        self.run_page.immediate_exit = 1
        tid = self.thread_id
        if tid is not None and _kick_handler_installed:
            with contextlib.suppress(ProcessLookupError, OSError):
                signal.pthread_kill(tid, KICK_SIGNAL)

    def close(self) -> None:
        import os

        if self.fd >= 0:
            del self.regs, self._sregs, self.run_page
            self._mm.close()
            os.close(self.fd)
            self.fd = -1
