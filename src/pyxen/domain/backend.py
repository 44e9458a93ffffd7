"""The vCPU backend interface: everything the hypervisor needs from a virtual CPU.

KVM (`pyxen.kvm`) and the software CPU (`pyxen.soft`) implement it; nothing above this
interface knows which one runs (DESIGN.md, principle 3). It is deliberately narrow:

- `run()` executes guest code until something needs the hypervisor and returns an `Exit`
  code; the details of that exit are in the backend's `exit_*` attributes (no per-exit
  allocation on the hot path).
- `regs` is a live, mutable view of the general registers in the layout of `Regs`; after
  changing it call `regs_changed()` so the change reaches the CPU on the next `run()`.
- `sregs()` returns segment and control state as `SpecialRegs` (fresh after each exit).
- `save_cpu()` and `load_cpu()` carry a vCPU's whole architectural state (`CpuState`) out
  of one backend and into another, for save/restore and live migration.
"""

from __future__ import annotations

import contextlib
import ctypes as C
import enum
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from pyxen.hv.pagewalk import PagingState

    from .cpu_state import CpuState


class Exit(enum.IntEnum):
    """Why `run()` returned."""

    HYPERCALL = 0  # port write to the hypercall port (arguments are in regs)
    IO_OUT = 1  # port write: exit_port, exit_size, exit_value
    IO_IN = 2  # port read: answer with complete_io_in(value)
    MSR_WRITE = 3  # exit_msr, exit_value; answer with complete_msr(ok)
    MSR_READ = 4  # exit_msr; answer with complete_msr(ok, value)
    HLT = 5  # guest executed hlt with nothing to deliver
    SHUTDOWN = 6  # triple fault
    KICKED = 7  # kick() from another thread, or a signal
    ERROR = 8  # the backend cannot go on: exit_error says why
    MMIO = 9  # access to guest-physical exit_value that is not RAM (or a write to a
    #           read-only slot); reads need complete_mmio


class Regs(C.Structure):
    """General registers, in the order KVM's struct kvm_regs uses (so KVM needs no copy)."""

    _fields_ = [
        (name, C.c_uint64)
        for name in (
            ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags"]
        )
    ]


class Segment(C.Structure):
    """A segment register, hidden part included (KVM's struct kvm_segment layout)."""

    _fields_ = [
        ("base", C.c_uint64),
        ("limit", C.c_uint32),
        ("selector", C.c_uint16),
        ("type", C.c_uint8),
        ("present", C.c_uint8),
        ("dpl", C.c_uint8),
        ("db", C.c_uint8),
        ("s", C.c_uint8),
        ("l", C.c_uint8),
        ("g", C.c_uint8),
        ("avl", C.c_uint8),
        ("unusable", C.c_uint8),
        ("padding", C.c_uint8),
    ]


class DescriptorTable(C.Structure):
    _fields_ = [("base", C.c_uint64), ("limit", C.c_uint16), ("padding", C.c_uint16 * 3)]


class SpecialRegs(C.Structure):
    """Segment, descriptor-table and control registers (KVM's struct kvm_sregs layout)."""

    _fields_ = [
        ("cs", Segment),
        ("ds", Segment),
        ("es", Segment),
        ("fs", Segment),
        ("gs", Segment),
        ("ss", Segment),
        ("tr", Segment),
        ("ldt", Segment),
        ("gdt", DescriptorTable),
        ("idt", DescriptorTable),
        ("cr0", C.c_uint64),
        ("cr2", C.c_uint64),
        ("cr3", C.c_uint64),
        ("cr4", C.c_uint64),
        ("cr8", C.c_uint64),
        ("efer", C.c_uint64),
        ("apic_base", C.c_uint64),
        ("interrupt_bitmap", C.c_uint64 * 4),
    ]


def real_mode_at(address: int) -> SpecialRegs:
    """The state a startup IPI gives an AP (SDM §8.4.4.1, Xen's hvm_vcpu_reset_state): real
    mode, CS:IP = address / 16 : 0, the other segments at 0 with 64 KiB limits."""
    s = SpecialRegs()
    for seg in (s.cs, s.ds, s.es, s.fs, s.gs, s.ss):
        seg.limit, seg.present, seg.s, seg.type = 0xFFFF, 1, 1, 0x3
    s.cs.selector, s.cs.base, s.cs.type = address >> 4, address, 0xB
    s.tr.limit, s.tr.present, s.tr.type = 0xFFFF, 1, 0xB
    s.ldt.limit, s.ldt.present, s.ldt.type = 0xFFFF, 1, 0x2
    s.gdt.limit = s.idt.limit = 0xFFFF
    s.cr0 = 0x10  # ET
    return s


Cpuid = list[tuple[int, int, int, int, int, int]]  # (leaf, subleaf, eax, ebx, ecx, edx)


def no_device_read(size: int) -> int:
    """What a port read returns where no device answers (all ones), as on Xen for a PVH
    guest without a device model. One rule for both backends: KVM asks pyxen through
    Exit.IO_IN, the software CPU answers inside its IN hook without stopping."""
    return (1 << (8 * size)) - 1


class VcpuBackend(Protocol):
    """One virtual CPU of one domain; driven by exactly one thread.

    A write to `hypercall_port` (given at creation) is reported as Exit.HYPERCALL, the
    one exit that must be cheap.
    """

    regs: Regs
    exit_port: int
    exit_size: int
    exit_value: int
    exit_msr: int
    exit_is_write: bool
    exit_data: int  # the value an MMIO write stores
    exit_error: str

    def run(self) -> Exit: ...

    def regs_changed(self) -> None: ...

    def settle(self) -> None:
        """Finish what the last exit still owes the CPU before registers change or the
        vCPU sleeps (KVM: the hypercall's port write). The exit's registers stay readable
        before it; write them only after it."""
        ...

    def sregs(self) -> SpecialRegs: ...

    def paging(self) -> PagingState:
        """CR0, CR3, CR4 and EFER: all a guest-virtual access needs (cheaper than sregs)."""
        ...

    def is_64bit(self) -> bool:
        """Whether the CPU is executing 64-bit code (CS.L): Xen's hypercall ABI choice."""
        ...

    def cpl(self) -> int:
        """Current privilege level (0 in real mode)."""
        ...

    def set_sregs(self, sregs: SpecialRegs) -> None: ...

    def set_initial_regs(self, regs: Regs) -> None:
        """General registers before the first run."""
        ...

    def set_cpuid(self, cpuid: Cpuid) -> None: ...

    def complete_msr(self, ok: bool, value: int = 0) -> None: ...

    def complete_io_in(self, value: int) -> None: ...

    def complete_mmio(self, value: int) -> None:
        """Answer an MMIO read (ignored for writes)."""
        ...

    def inject_interrupt(self, vector: int) -> bool:
        """Deliver `vector` now if the CPU can take it; False if it must wait."""
        ...

    def request_interrupt_window(self, wanted: bool, level: int | None = None) -> None:
        """Exit (KICKED) as soon as the guest can take an interrupt; `level`, if given, is
        the host address of a byte the interrupt follows (evtchn_upcall_pending for the
        callback vector): a backend may skip the exit if the byte reads 0 by then."""
        ...

    def kick(self) -> None:
        """From any thread: make `run()` return KICKED soon (or not enter at all)."""
        ...

    def kicks_seen(self) -> None:
        """The vCPU loop is about to look at everything a kick can ask for (it has just
        woken from a halt): kicks made until now need not stop the next `run()`. A backend
        may keep them (an extra KICKED costs a loop iteration, nothing else)."""
        ...

    def read_tsc(self) -> int:
        """The guest's current time-stamp counter."""
        ...

    def save_cpu(self) -> CpuState:
        """Everything the guest can observe of this vCPU. Only while it runs no guest code
        (its domain paused, or before its first run) and after its last exit was answered;
        what the exit still owed the CPU (a port or MMIO read's value) is completed first,
        as the next run() would. Which thread may call it: see each backend."""
        ...

    def load_cpu(self, state: CpuState) -> None:
        """Make the next run() continue exactly where `state`'s vCPU stopped (its TSC
        included). Same conditions as save_cpu, and after set_cpuid: ValueError (one line)
        for a state this vCPU cannot hold, which then must not run."""
        ...

    def close(self) -> None: ...


class MachineBackend(Protocol):
    """A VM: guest-physical memory wiring and vCPU creation."""

    name: str
    tsc_khz: int

    readonly_memory: bool  # whether map_memory(readonly=True) is offered

    def map_memory(self, slot: int, gpa: int, size: int, host_address: int,
                   readonly: bool = False) -> None:
        """Guest-physical [gpa, gpa+size) is the host memory at host_address. A readonly
        slot is read and executed as RAM, but a guest write to it is not made: it is
        reported as Exit.MMIO (write, exit_value = its gpa) for the hypervisor to decide."""
        ...

    def unmap_memory(self, slot: int) -> None: ...

    def exclusive(self) -> contextlib.AbstractContextManager[None]:
        """A block in which no vCPU executes guest code, for pyxen's writes to guest words
        the guest changes with locked instructions (a no-op where those are atomic)."""
        ...

    def set_dirty_logging(self, enabled: bool) -> None:
        """Start (with an empty record) or stop recording which guest frames the *guest*
        writes — what live migration copies again. pyxen's own writes to guest memory are
        recorded by the domain, not the backend."""
        ...

    def fetch_dirty(self) -> set[int]:
        """Guest frame numbers the guest wrote since logging started or since the previous
        fetch, which starts a new record. Empty when logging is off."""
        ...

    def create_vcpu(self, index: int, hypercall_port: int) -> VcpuBackend:
        """A new vCPU; its CPUID must be set (set_cpuid) before it first runs."""
        ...

    def host_cpuid(self) -> Cpuid:
        """The CPUID leaves this backend can offer a guest, before Xen's leaves are added."""
        ...

    def close(self) -> None: ...
