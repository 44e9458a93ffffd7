"""A KVM virtual machine: /dev/kvm, the VM fd, memory slots, CPUID and the MSR policy."""

from __future__ import annotations

import contextlib
import ctypes as C
import os
import threading

from pyxen.domain.backend import MachineBackend
from pyxen.domain.memory import current_layout_change

from . import uapi as K
from .gate import GatedVcpu, RunGate
from .ioctl import KvmError, ioctl
from .vcpu import KvmVcpu, install_kick_handler
from .xen import enable_hypercall_intercept

DEV_KVM = "/dev/kvm"
REQUIRED_CAPS = {
    K.KVM_CAP_SYNC_REGS: "KVM_CAP_SYNC_REGS",
    K.KVM_CAP_X86_USER_SPACE_MSR: "KVM_CAP_X86_USER_SPACE_MSR",
    K.KVM_CAP_X86_MSR_FILTER: "KVM_CAP_X86_MSR_FILTER",
    K.KVM_CAP_IMMEDIATE_EXIT: "KVM_CAP_IMMEDIATE_EXIT",
}


class KvmUnavailable(RuntimeError):
    """/dev/kvm is missing, not accessible, or lacks a capability pyxen needs."""


def kvm_usable() -> tuple[bool, str]:
    """Whether a VM can be created here, and if not, why (for --accel auto)."""
    try:
        fd = os.open(DEV_KVM, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        return False, f"{DEV_KVM}: {e.strerror}"
    try:
        missing = [n for cap, n in REQUIRED_CAPS.items() if ioctl(fd, K.KVM_CHECK_EXTENSION, cap) <= 0]
        if missing:
            return False, f"KVM lacks {', '.join(missing)}"
        return True, "ok"
    finally:
        os.close(fd)


class KvmMachine(MachineBackend):
    """One KVM VM. Owns the fds; vCPUs are created through it."""

    name = "kvm"

    def __init__(self, msr_exits: list[int]) -> None:
        """msr_exits: MSR indices whose reads and writes must reach pyxen (e.g. Xen's
        hypercall-page MSR), even if the kernel would otherwise handle them itself."""
        ok, why = kvm_usable()
        if not ok:
            raise KvmUnavailable(why)
        self.kvm_fd = os.open(DEV_KVM, os.O_RDWR | os.O_CLOEXEC)
        self.vm_fd = ioctl(self.kvm_fd, K.KVM_CREATE_VM, 0)
        self.run_size = ioctl(self.kvm_fd, K.KVM_GET_VCPU_MMAP_SIZE, 0)
        self.vcpus: list[KvmVcpu] = []
        self.gate = RunGate()  # closed while a layout change deletes and re-creates slots
        self._slots: dict[int, tuple[int, int, int, bool]] = {}  # slot → (gpa, size, host, ro)
        # Read-only slots: a guest write exits as KVM_EXIT_MMIO (write) and is not made.
        self.readonly_memory = ioctl(self.kvm_fd, K.KVM_CHECK_EXTENSION,
                                     K.KVM_CAP_READONLY_MEM) > 0
        self._dirty_logging = False
        self._enable_user_space_msrs(msr_exits)
        # vmcall/vmmcall as Xen hypercalls (KVM_EXIT_XEN) where the host's KVM offers it.
        self.xen_hypercalls = enable_hypercall_intercept(self.vm_fd)
        self.tsc_khz = 0
        install_kick_handler()

    def _enable_user_space_msrs(self, msr_exits: list[int]) -> None:
        cap = K.kvm_enable_cap(cap=K.KVM_CAP_X86_USER_SPACE_MSR)
        cap.args[0] = (
            K.KVM_MSR_EXIT_REASON_FILTER
            | K.KVM_MSR_EXIT_REASON_UNKNOWN
            | K.KVM_MSR_EXIT_REASON_INVAL
        )
        ioctl(self.vm_fd, K.KVM_ENABLE_CAP, cap)
        flt = K.kvm_msr_filter(flags=K.KVM_MSR_FILTER_DEFAULT_ALLOW)
        # One deny bit per MSR: a cleared bit sends the access to user space.
        self._bitmaps = [C.create_string_buffer(1) for _ in msr_exits]
        for i, (msr, bitmap) in enumerate(zip(msr_exits, self._bitmaps, strict=True)):
            flt.ranges[i].flags = K.KVM_MSR_FILTER_READ | K.KVM_MSR_FILTER_WRITE
            flt.ranges[i].nmsrs = 1
            flt.ranges[i].base = msr
            flt.ranges[i].bitmap = C.addressof(bitmap)
        ioctl(self.vm_fd, K.KVM_X86_SET_MSR_FILTER, flt)

    def exclusive(self) -> contextlib.AbstractContextManager[None]:
        """Nothing to exclude: a KVM vCPU's locked instructions are the CPU's own."""
        return contextlib.nullcontext()

    def map_memory(self, slot: int, gpa: int, size: int, host_address: int,
                   readonly: bool = False) -> None:
        if readonly and not self.readonly_memory:
            raise KvmError(22, "KVM lacks KVM_CAP_READONLY_MEM")
        self._slots[slot] = (gpa, size, host_address, readonly)
        self._set_region(slot)

    def unmap_memory(self, slot: int) -> None:
        # Inside a layout change, what this slot held may come back in other slots: no vCPU
        # runs until the change is whole (gate.py). A lone deletion is atomic for KVM.
        change = current_layout_change()
        if change is not None and change.at_end(self.gate, self.gate.open):
            self.gate.close(self._kick_others)
        self._slots.pop(slot, None)
        ioctl(self.vm_fd, K.KVM_SET_USER_MEMORY_REGION, K.kvm_userspace_memory_region(slot=slot))

    def _kick_others(self) -> None:
        me = threading.get_ident()
        for vcpu in self.vcpus:
            if vcpu.thread_id != me:
                vcpu.kick()

    def _set_region(self, slot: int) -> None:
        gpa, size, host_address, readonly = self._slots[slot]
        flags = K.KVM_MEM_LOG_DIRTY_PAGES if self._dirty_logging else 0
        if readonly:
            flags |= K.KVM_MEM_READONLY
        region = K.kvm_userspace_memory_region(
            slot=slot, flags=flags, guest_phys_addr=gpa, memory_size=size,
            userspace_addr=host_address,
        )
        ioctl(self.vm_fd, K.KVM_SET_USER_MEMORY_REGION, region)

    # --- dirty logging (live migration): KVM's per-slot dirty bitmaps -----------------------
    def set_dirty_logging(self, enabled: bool) -> None:
        if enabled == self._dirty_logging:
            if enabled:
                self.fetch_dirty()  # restarting: begin with an empty record
            return
        self._dirty_logging = enabled
        for slot in self._slots:  # a flags-only change keeps the slot's memory mapped
            self._set_region(slot)

    def fetch_dirty(self) -> set[int]:
        """KVM_GET_DIRTY_LOG per slot: the bitmap of frames written, cleared as it is read."""
        if not self._dirty_logging:
            return set()
        dirty: set[int] = set()
        for slot, (gpa, size, _, _) in list(self._slots.items()):
            frames = size >> 12
            bitmap = (C.c_uint64 * ((frames + 63) // 64))()
            ioctl(self.vm_fd, K.KVM_GET_DIRTY_LOG,
                  K.kvm_dirty_log(slot=slot, dirty_bitmap=C.addressof(bitmap)))
            base = gpa >> 12
            for word_index, word in enumerate(bitmap):
                while word:
                    bit = (word & -word).bit_length() - 1
                    dirty.add(base + word_index * 64 + bit)
                    word &= word - 1
        return dirty

    def host_cpuid(self) -> list[tuple[int, int, int, int, int, int]]:
        n = 256
        while True:
            buf = K.kvm_cpuid2(n)(nent=n)
            try:
                ioctl(self.kvm_fd, K.KVM_GET_SUPPORTED_CPUID, buf)
                break
            except KvmError as e:
                if e.errno != 7 or n > 4096:  # E2BIG: more entries than room
                    raise
                n *= 2
        return [
            (e.function, e.index, e.eax, e.ebx, e.ecx, e.edx)
            for e in buf.entries[: buf.nent]
        ]

    def create_vcpu(self, index: int, hypercall_port: int) -> KvmVcpu:
        vcpu = GatedVcpu(self, index, hypercall_port)
        vcpu.gate = self.gate
        self.vcpus.append(vcpu)
        if not self.tsc_khz:
            self.tsc_khz = vcpu.tsc_khz()
        return vcpu

    def close(self) -> None:
        for v in self.vcpus:
            v.close()
        self.vcpus.clear()
        for fd in (self.vm_fd, self.kvm_fd):
            if fd >= 0:
                os.close(fd)
        self.vm_fd = self.kvm_fd = -1
