"""A KVM vCPU: the mmap'ed kvm_run page with synchronized registers, and the run loop step.

The hot path (`run` → hypercall → `run`) issues exactly one ioctl, KVM_RUN: registers travel
through kvm_run's sync-regs area (KVM_CAP_SYNC_REGS) instead of GET/SET_REGS ioctls.
Save/restore (`save_cpu`/`load_cpu`) uses the GET/SET ioctls of every part (cpustate.py).
"""

from __future__ import annotations

import contextlib
import ctypes as C
import fcntl
import logging
import mmap
import os
import signal
import threading
from typing import TYPE_CHECKING

from pyxen.domain.backend import Cpuid, Exit, Regs, Segment, SpecialRegs
from pyxen.domain.cpu_state import CpuState
from pyxen.hv.pagewalk import PagingState

from . import cpustate
from . import uapi as K
from .ioctl import ioctl

if TYPE_CHECKING:
    from .vm import KvmMachine

KICK_SIGNAL = signal.SIGUSR1
UNKNOWN_EXIT_RETRIES = 3  # KVM_EXIT_UNKNOWN in a row entered again before it is an error
log = logging.getLogger(__name__)
MSR_IA32_TSC = 0x10
TSC_SLACK_S = 60  # a loaded TSC read back later than this after the load did not take
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

    def __init__(self, machine: KvmMachine, index: int, hypercall_port: int) -> None:
        self.index = index
        self.hypercall_port = hypercall_port
        self.fd = ioctl(machine.vm_fd, K.KVM_CREATE_VCPU, index)
        self._mm = mmap.mmap(self.fd, machine.run_size, mmap.MAP_SHARED,
                             mmap.PROT_READ | mmap.PROT_WRITE)
        self.run_page = K.kvm_run.from_buffer(self._mm)
        base = self._base = C.addressof(self.run_page)
        self.regs = Regs.from_address(base + K.kvm_run.s.offset)
        sregs_at = base + K.kvm_run.s.offset + K.kvm_sync_regs.sregs.offset
        self._sregs = SpecialRegs.from_address(sregs_at)
        # Fixed-address views of the fields every exit reads: no struct objects per exit.
        io_at = base + K.kvm_run.exit.offset
        self._exit_reason = C.c_uint32.from_address(base + K.kvm_run.exit_reason.offset)
        self._immediate_exit = C.c_uint8.from_address(base + K.kvm_run.immediate_exit.offset)
        self._io_direction = C.c_uint8.from_address(io_at + K.kvm_run_io.direction.offset)
        self._io_size = C.c_uint8.from_address(io_at + K.kvm_run_io.size.offset)
        self._io_port = C.c_uint16.from_address(io_at + K.kvm_run_io.port.offset)
        self._io_count = C.c_uint32.from_address(io_at + K.kvm_run_io.count.offset)
        self._io_data_offset = C.c_uint64.from_address(io_at + K.kvm_run_io.data_offset.offset)
        self._io_data: dict[int, C.c_uint32] = {}
        self._cs_l = C.c_uint8.from_address(sregs_at + SpecialRegs.cs.offset + Segment.l.offset)
        self._ss_dpl = C.c_uint8.from_address(sregs_at + SpecialRegs.ss.offset
                                              + Segment.dpl.offset)
        self._cr0 = C.c_uint64.from_address(sregs_at + SpecialRegs.cr0.offset)
        self._dirty_regs = C.c_uint64.from_address(base + K.kvm_run.kvm_dirty_regs.offset)
        self.run_page.kvm_valid_regs = K.KVM_SYNC_X86_REGS | K.KVM_SYNC_X86_SREGS
        self.thread_id: int | None = None
        self.exit_port = self.exit_size = self.exit_value = self.exit_msr = 0
        self.exit_error = ""
        self.exit_is_write = False
        self.exit_data = 0
        self._pending_in: tuple[int, int] | None = None
        # A vmcall/vmmcall KVM handed over (KVM_EXIT_XEN): its result travels in hcall.result.
        self._xen_hcall = self.run_page.exit.xen.u.hcall
        self._xen_result_due = False
        self._fresh = False  # sync regs hold valid state only after the first exit
        self._kicks = 0  # kick() counts, so that finishing a port write cannot lose one
        self._port_write_owed = False  # a hypercall's OUT that KVM has not retired yet
        self._kicks_at_exit = 0
        self._unknown_exits = 0  # KVM_EXIT_UNKNOWN in a row (no other exit between)
        self._kept_msrs: tuple[int, ...] | None = None  # of CPU_MSRS, those KVM keeps here

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
        self._dirty_regs.value |= K.KVM_SYNC_X86_REGS

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

    # --- save/restore --------------------------------------------------------------------
    def save_cpu(self) -> CpuState:
        """The whole state. From any thread of the process while run() is not running (KVM
        serialises vCPU ioctls itself; the vCPU's own thread is not needed): what the last
        exit still owes is completed first, without entering the guest."""
        self._complete_exit()
        return cpustate.save(self.fd, self._msrs_kept())

    def load_cpu(self, state: CpuState) -> None:
        """Make the next run() continue from `state` (same threads as save_cpu, after
        set_cpuid). The TSC is written as IA32_TSC; a KVM that ignores that (kvm_pvm: the
        guest reads the host's TSC) is logged, since the guest's TSC then jumps."""
        state.validate()
        self._complete_exit()  # nothing of the old state may complete on top of the new
        cpustate.load(self.fd, state, self._msrs_kept())
        C.memmove(C.addressof(self.regs), C.addressof(state.regs), C.sizeof(Regs))
        C.memmove(C.addressof(self._sregs), C.addressof(state.sregs), C.sizeof(SpecialRegs))
        self._dirty_regs.value = 0  # the sync area matches what KVM now holds
        self.run_page.cr8 = state.sregs.cr8  # KVM_RUN loads CR8 from here (no in-kernel APIC)
        self._fresh = True
        self._check_tsc(state.tsc)

    def _msrs_kept(self) -> tuple[int, ...]:
        if self._kept_msrs is None:
            self._kept_msrs = cpustate.kept_msrs(self.fd)
        return self._kept_msrs

    def _complete_exit(self) -> None:
        """Let KVM finish what the last exit still owes (a port or MMIO read's value, an MSR
        access, the hypercall's port write or Xen result) with one KVM_RUN that enters no
        guest code: KVM's documented way to make the state whole before it is read. A kick
        pending before it stays pending."""
        self._port_write_owed = False
        if self._xen_result_due:
            self._xen_hcall.result = self.regs.rax
            self._xen_result_due = False
        owed, kicks = self._immediate_exit.value, self._kicks
        self._immediate_exit.value = 1
        with contextlib.suppress(InterruptedError):
            fcntl.ioctl(self.fd, K.KVM_RUN, 0)
        self._immediate_exit.value = 1 if owed or self._kicks != kicks else 0
        self._fresh = True  # KVM stored the registers into the sync area on the way out
        self._pending_in = None

    def _check_tsc(self, tsc: int) -> None:
        now = self.read_tsc()
        khz = self.tsc_khz()
        if not tsc <= now <= tsc + TSC_SLACK_S * 1000 * khz:
            log.warning("vCPU%d: this KVM did not take the loaded TSC (%#x; it reads %#x): "
                        "the guest's TSC jumps", self.index, tsc, now)

    # --- running -------------------------------------------------------------------------
    def run(self) -> Exit:
        self.settle()
        if self._xen_result_due:  # KVM completes the call from hcall.result, not from rax
            self._xen_hcall.result = self.regs.rax
            self._xen_result_due = False
        try:
            fcntl.ioctl(self.fd, K.KVM_RUN, 0)  # releases the GIL; EINTR raises
        except InterruptedError:
            self._immediate_exit.value = 0
            return Exit.KICKED
        self._fresh = True
        if self._exit_reason.value == K.KVM_EXIT_IO:
            self._unknown_exits = 0
            port = self.exit_port = self._io_port.value
            if port == self.hypercall_port and self._io_direction.value == K.KVM_EXIT_IO_OUT:
                self._port_write_owed = True  # settle() finishes it, off the call's path
                self._kicks_at_exit = self._kicks
                return Exit.HYPERCALL
            size = self.exit_size = self._io_size.value
            if self._io_count.value != 1:
                self.exit_error = f"string port I/O on port {self.exit_port:#x}"
                return Exit.ERROR
            data = self._io_data.get(self._io_data_offset.value)
            if data is None:
                data = self._io_data_accessor(self._io_data_offset.value)
            if self._io_direction.value == K.KVM_EXIT_IO_OUT:
                self.exit_value = data.value & ((1 << (8 * size)) - 1)
                return Exit.IO_OUT
            self._pending_in = (C.addressof(data), size)
            return Exit.IO_IN
        return self._slow_exit(self._exit_reason.value)

    def settle(self) -> None:
        if self._port_write_owed:
            self._port_write_owed = False
            self._finish_port_write()

    def _finish_port_write(self) -> None:
        """Let KVM retire the hypercall's port write now, before rax takes the result.

        KVM finishes an exit's port I/O at the start of the next KVM_RUN. On this host's KVM
        (kvm_pvm, which emulates guest ring-0 code) a result written through the sync regs
        while that completion is still pending was, rarely and only when the run was
        interrupted, lost: the guest saw the hypercall number come back in rax. One
        KVM_RUN with immediate_exit set completes the write and enters no guest code; the
        registers it stores are the ones after the OUT, and the result then goes in with
        nothing pending. A kick that arrives meanwhile keeps its immediate_exit.

        It runs from settle(): after the hypercall's handler (which reads the arguments
        from the exit's registers), so that an EVTCHNOP_send wakes its peer one ioctl
        sooner, and before a vCPU sleeps, so that a woken SCHEDOP_poll pays nothing."""
        kicks = self._kicks_at_exit  # a kick since the exit is still owed too
        self._immediate_exit.value = 1
        with contextlib.suppress(InterruptedError):
            fcntl.ioctl(self.fd, K.KVM_RUN, 0)
        self._immediate_exit.value = 0
        if self._kicks != kicks:  # kicked after we set it: that kick is still owed
            self._immediate_exit.value = 1

    def _io_data_accessor(self, offset: int) -> C.c_uint32:
        data = C.c_uint32.from_address(self._base + offset)
        self._io_data[offset] = data
        return data

    def _slow_exit(self, reason: int) -> Exit:
        run = self.run_page
        if reason != K.KVM_EXIT_UNKNOWN:
            self._unknown_exits = 0
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
            self.exit_data = int.from_bytes(bytes(m.data)[: m.len], "little")
            return Exit.MMIO
        if reason == K.KVM_EXIT_XEN and run.exit.xen.type == K.KVM_EXIT_XEN_HCALL:
            # vmcall/vmmcall with Xen's registers (sync regs hold them): the same dispatch as
            # the hypercall page's port write; the result goes back through run() above.
            self._xen_result_due = True
            return Exit.HYPERCALL
        if reason == K.KVM_EXIT_HLT:
            return Exit.HLT
        if reason == K.KVM_EXIT_SHUTDOWN:
            return Exit.SHUTDOWN
        if reason in (K.KVM_EXIT_INTR, K.KVM_EXIT_IRQ_WINDOW_OPEN):
            return Exit.KICKED
        if reason == K.KVM_EXIT_UNKNOWN and self._unknown_exits < UNKNOWN_EXIT_RETRIES:
            # kvm_pvm rarely ends a run of a vCPU idle in hlt with an exit reason it does
            # not know (0x800000001); entering again carries on. Repeated ones are errors.
            self._unknown_exits += 1
            log.debug("vCPU%d: %s, entering again", self.index, self._describe_exit(reason))
            return Exit.KICKED
        self.exit_error = self._describe_exit(reason)
        return Exit.ERROR

    # --- the hypercall path's questions, answered without building structs ----------------
    def paging(self) -> PagingState:
        s = self.sregs()
        return PagingState(s.cr0, s.cr3, s.cr4, s.efer)

    def is_64bit(self) -> bool:
        """Whether the CPU is executing 64-bit code (CS.L)."""
        return bool(self._cs_l.value) if self._fresh else bool(self.sregs().cs.l)

    def cpl(self) -> int:
        """Current privilege level (0 in real mode)."""
        if not self._fresh:
            s = self.sregs()
            return s.ss.dpl if s.cr0 & 1 else 0
        return self._ss_dpl.value if self._cr0.value & 1 else 0

    def _describe_exit(self, reason: int) -> str:
        run = self.run_page
        if reason == K.KVM_EXIT_INTERNAL_ERROR:
            ie = run.exit.internal
            data = " ".join(f"{ie.data[i]:#x}" for i in range(min(ie.ndata, 16)))
            return f"KVM internal error (suberror {ie.suberror}) {data}".rstrip()
        if reason == K.KVM_EXIT_FAIL_ENTRY:
            return f"KVM entry failure (reason {run.exit.fail_entry.hardware_entry_failure_reason:#x})"
        if reason == K.KVM_EXIT_UNKNOWN:  # its hw.hardware_exit_reason shares fail_entry's place
            return (f"unknown KVM exit (hardware exit reason "
                    f"{run.exit.fail_entry.hardware_entry_failure_reason:#x})")
        return f"unexpected KVM exit reason {reason}"

    def complete_msr(self, ok: bool, value: int = 0) -> None:
        self.run_page.exit.msr.error = 0 if ok else 1
        self.run_page.exit.msr.data = value

    def complete_io_in(self, value: int) -> None:
        if self._pending_in:
            addr, size = self._pending_in
            C.memmove(addr, (value & ((1 << (8 * size)) - 1)).to_bytes(8, "little"), size)
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

    def request_interrupt_window(self, wanted: bool, level: int | None = None) -> None:
        """KVM exits at every window it was asked for (`level` is not looked at)."""
        self.run_page.request_interrupt_window = 1 if wanted else 0

    def kick(self) -> None:
        if self.fd < 0:
            return  # closed: nothing to kick (and no signal after shutdown)
        self._kicks += 1  # before immediate_exit: see _finish_port_write
        self._immediate_exit.value = 1
        tid = self.thread_id
        if tid is not None and _kick_handler_installed:
            with contextlib.suppress(ProcessLookupError, OSError):
                signal.pthread_kill(tid, KICK_SIGNAL)

    def kicks_seen(self) -> None:
        """Kept: immediate_exit also pairs with _kicks (see _finish_port_write)."""

    def close(self) -> None:
        fd, self.fd, self.thread_id = self.fd, -1, None  # closed first: kick() sees it
        if fd < 0:
            return
        # Drop every ctypes view into the kvm_run mapping, or the mmap cannot close.
        for name in [n for n in vars(self) if n.startswith("_") and n != "_mm"]:
            if isinstance(getattr(self, name), C._SimpleCData | C.Structure):
                delattr(self, name)
        self._io_data.clear()
        del self.regs, self.run_page
        self._mm.close()
        os.close(fd)
