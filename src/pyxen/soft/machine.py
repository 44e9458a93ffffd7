"""The software-CPU machine: guest RAM wiring and vCPU creation for Unicorn engines.

Used where KVM is absent, or slow because it emulates guest kernel code itself (kvm_pvm:
~2 M instructions/s, against ~300 M for Unicorn's TCG). Importing this module never touches
/dev/kvm or pyxen.kvm.
"""

from __future__ import annotations

import contextlib
import ctypes as C
import functools
import threading
import time

from unicorn import UC_ARCH_X86, UC_MODE_64, UC_PROT_ALL, Uc, UcError
from unicorn import x86_const as X

from pyxen.domain.backend import Cpuid, MachineBackend
from pyxen.domain.memory import current_layout_change

from . import native
from .baton import Baton
from .cpustate import LayoutError, probe_layout
from .dirty import QUIESCE_RETRY_S, DirtyLog
from .memory import PhysicalRam
from .native import TscClock
from .vcpu import INDEXED_LEAVES, SoftVcpu

SOFT_TSC_KHZ = 1_000_000  # 1 GHz: the guest's TSC counts nanoseconds of host monotonic time
MAX_SUBLEAVES = 16


class SoftUnavailable(RuntimeError):
    """The Unicorn engine is missing or not the build pyxen can drive."""


@functools.cache
def context_header() -> int:
    """Where QEMU's CPU state starts in a Unicorn context (checked once per process)."""
    try:
        return probe_layout()
    except LayoutError as e:
        raise SoftUnavailable(str(e)) from e


def soft_usable() -> tuple[bool, str]:
    """Whether the soft backend can run here, and if not, why."""
    try:
        context_header()
    except SoftUnavailable as e:
        return False, str(e)
    return True, "ok"


class SoftMachine(MachineBackend):
    """A VM whose vCPUs are Unicorn engines sharing the domain's memfd-backed RAM."""

    name = "soft"

    def __init__(self, msr_exits: list[int]) -> None:
        """msr_exits: MSRs whose RDMSR/WRMSR must reach pyxen (Xen's hypercall-page MSR)."""
        self.context_header = context_header()
        self.msr_exits = frozenset(msr_exits)
        self.ram = PhysicalRam()
        self.vcpus: list[SoftVcpu] = []
        self.baton = Baton()  # engines take turns (locked instructions): see baton.py
        # Read by the vCPUs' native RDTSC hooks too (native.py).
        self.tsc_clock = TscClock(time.monotonic_ns(), SOFT_TSC_KHZ)
        self.log = DirtyLog()
        self.ram.on_write = self.log.note_write  # guest writes pyxen makes for the CPU
        self.ram.native = native.available() is None  # interrupt delivery in C (native.py)
        # EVTCHNOP_send on IPI ports in the OUT hook (native_send.c), kept by the domain's
        # event channels (FastSends)
        self.ipi = native.IpiSends() if self.ram.native else None

    def ipi_sends(self) -> native.IpiSends | None:
        return self.ipi

    @property
    def tsc_khz(self) -> int:
        return self.tsc_clock.khz

    @property
    def tsc_epoch_ns(self) -> int:
        return self.tsc_clock.epoch_ns

    @tsc_epoch_ns.setter
    def tsc_epoch_ns(self, value: int) -> None:
        self.tsc_clock.epoch_ns = value

    def set_tsc(self, tsc: int) -> None:
        """Every vCPU's TSC reads `tsc` now and counts on from there: one counter per
        machine, as on a host whose TSCs are synchronized (the last vCPU loaded sets it)."""
        self.tsc_epoch_ns = time.monotonic_ns() + (-tsc * 1_000_000 // self.tsc_khz)

    readonly_memory = True  # read-only slots: mapped read+exec, writes stop at the write hook

    def map_memory(self, slot: int, gpa: int, size: int, host_address: int,
                   readonly: bool = False) -> None:
        self.ram.add(slot, gpa, size, host_address, readonly)
        self._layout_changed()

    def unmap_memory(self, slot: int) -> None:
        self.ram.remove(slot)
        self._layout_changed()

    def _layout_changed(self) -> None:
        """Within a layout change (GuestMemory.commit) the slot calls are published together
        when it ends: an engine never maps the state between an unmap and the maps that
        follow it (a run split in two, a hole filled)."""
        change = current_layout_change()
        if change is None:
            self._publish()
        else:
            change.at_end(self, self._publish)

    def _publish(self) -> None:
        """Every engine maps the new layout before it runs guest code again, as Xen's p2m
        change and TLB flush are done when the hypercall returns: the others are kicked
        (each re-syncs at its next entry, under ram.lock, which waits for the end of this)
        and this waits until each one running guest code has left it."""
        with self.ram.lock:
            self.ram.publish()
            me = threading.get_ident()
            others = [v for v in self.vcpus if v.thread_id not in (None, me)]
            for vcpu in others:  # out of run() too: the loop in it re-enters unsynced
                vcpu.kick()
            self._quiesce(others)
            self.ram.settle()

    # --- dirty logging (design and measurements: dirty.py) ----------------------------------
    def set_dirty_logging(self, enabled: bool) -> None:
        log = self.log
        with log.cond:
            log.enabled = enabled
            log.record = set()
        # vCPUs in guest code leave it once; they enter again mapped for the new state.
        self._quiesce(self.vcpus)
        with log.cond:
            log.record = set()  # writes made before this returned are not wanted

    def fetch_dirty(self) -> set[int]:
        log = self.log
        with log.cond:
            if not log.enabled:
                return set()
        self._quiesce(self.vcpus)  # running vCPUs publish what they wrote, every store complete
        with log.cond:
            frames, log.record = log.record, set()
        return frames

    def _quiesce(self, vcpus: list[SoftVcpu]) -> None:
        """Kick those of `vcpus` running guest code and wait until each has left it once."""
        log = self.log
        with log.cond:
            running = [(v, v.guest_epoch) for v in vcpus if v.in_guest]
        while running:
            for vcpu, _ in running:
                vcpu.kick()
            with log.cond:
                log.cond.wait_for(functools.partial(_all_left, running), QUIESCE_RETRY_S)
                running = [(v, e) for v, e in running if v.guest_epoch == e]

    def exclusive(self) -> contextlib.AbstractContextManager[None]:
        """No engine runs meanwhile: pyxen's writes to words the guest changes with locked
        instructions (see baton.py)."""
        return self.baton.exclusive()

    def create_vcpu(self, index: int, hypercall_port: int) -> SoftVcpu:
        vcpu = SoftVcpu(self, index, hypercall_port)
        self.vcpus.append(vcpu)
        return vcpu

    def host_cpuid(self) -> Cpuid:
        return list(emulated_cpuid())

    def close(self) -> None:
        for vcpu in self.vcpus:
            vcpu.close()
        self.vcpus.clear()


def _all_left(running: list[tuple[SoftVcpu, int]]) -> bool:
    return all(vcpu.guest_epoch != epoch for vcpu, epoch in running)


@functools.cache
def emulated_cpuid() -> tuple[tuple[int, int, int, int, int, int], ...]:
    """The CPUID leaves of the CPU model Unicorn emulates, read by running CPUID in it."""
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    page = C.create_string_buffer(b"\x0f\xa2\xf4", 4096)  # cpuid; hlt
    uc.mem_map_ptr(0x1000, 4096, UC_PROT_ALL, C.addressof(page))

    def cpuid(leaf: int, sub: int) -> tuple[int, int, int, int]:
        uc.reg_write(X.UC_X86_REG_RAX, leaf)
        uc.reg_write(X.UC_X86_REG_RCX, sub)
        try:
            uc.emu_start(0x1000, 0x1003)
        except UcError:
            return (0, 0, 0, 0)
        return tuple(uc.reg_read(r) & 0xFFFF_FFFF for r in  # type: ignore[return-value]
                     (X.UC_X86_REG_RAX, X.UC_X86_REG_RBX, X.UC_X86_REG_RCX, X.UC_X86_REG_RDX))

    leaves = []
    for base in (0, 0x8000_0000):
        top = cpuid(base, 0)[0]
        for leaf in range(base, min(top, base + 0x40) + 1):
            subs = range(MAX_SUBLEAVES) if leaf in INDEXED_LEAVES else range(1)
            for sub in subs:
                regs = cpuid(leaf, sub)
                if sub == 0 or any(regs):
                    leaves.append((leaf, sub, *regs))
    return tuple(leaves)
